"""Compile our Triton kernels for real GPU targets without a GPU (run as a module, never interpreted).

    python -m tests.kernels.gpu_compile

Triton's front end, its GPU passes and ptxas run on the CPU, so a kernel that the interpreter accepts
but the compiler rejects (e.g. an early ``return`` inside a ``constexpr`` branch) fails here, in CI.
Prints one line per kernel variant; exits non-zero if any fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource

from kernels import gluon_sparse
from kernels.channel_norm import _bias_norm_silu_kernel
from kernels.frame_pairs import _stack_with_previous_kernel
from kernels.layer_norm import LAUNCH_OPTIONS as LAYER_NORM_LAUNCH
from kernels.layer_norm import _add_layer_norm_kernel
from kernels.norm_rope import _norm_rope_kernel
from kernels.subpixel import _interleave_kernel
from kernels.time_taps import _time_taps_kernel
from kernels.triton_sparse import _compact_rows_kernel, _sparse_attn_fwd


def _signature(fn, pointers: dict[str, str], floats: tuple[str, ...], consts: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        sig[name] = pointers.get(name) or ("fp32" if name in floats else "constexpr" if name in consts else "i32")
    return sig


def _compile(label: str, fn, arch: int, pointers: dict[str, str], floats: tuple[str, ...], consts: dict,
             num_warps: int = 4, num_stages: int = 2, *, fp_fusion: bool = True,
             no_bf16_fma: bool = False) -> bool:
    """Compile one variant with the kernel's launch options; with ``no_bf16_fma`` its PTX must hold no
    bf16 fused multiply-add, which would skip a rounding the kernel keeps on purpose."""
    src = ASTSource(fn=fn, signature=_signature(fn, pointers, floats, consts), constexprs=consts)
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages,
                                         "enable_fp_fusion": fp_fusion})
    except Exception as exc:  # noqa: BLE001 - report every failing variant, then exit non-zero
        print(f"FAIL {label} sm_{arch}: {type(exc).__name__}: {str(exc)[:2000]}")
        return False
    if no_bf16_fma and "fma.rn.bf16" in kernel.asm.get("ptx", ""):
        print(f"FAIL {label} sm_{arch}: bf16 multiply and add contracted into fma.rn.bf16")
        return False
    ok = bool(kernel.asm.get("cubin"))
    print(f"{'ok' if ok else 'FAIL (no cubin)'} {label} sm_{arch}: {len(kernel.asm.get('cubin', b''))} B cubin, "
          f"{kernel.metadata.shared} B shared memory")
    return ok


def _local_memory_bytes(cubin: bytes) -> int:
    """Bytes of local memory (register spills) per thread in ``cubin``, from Triton's cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_compile_{os.getpid()}.cubin"
    path.write_bytes(cubin)
    try:
        usage = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                               check=True).stdout
    finally:
        path.unlink()
    return max(int(field.split(":")[1]) for field in usage.split() if field.startswith("LOCAL:"))


# The default launch options, single-block tiles and one two-warpgroup partition (benchmark sweeps).
GLUON_VARIANTS = ({}, {"pairs": 1, "stages": 4}, {"split": 1, "num_warps": 8, "pairs": 1, "stages": 4})


def _compile_gluon_attention(variant: dict, head_dim: int) -> bool:
    """The warp-specialised Gluon kernel for sm_90 with its launch options; it must not spill."""
    opts = {**gluon_sparse.LAUNCH_OPTIONS, **variant}
    split, pairs = opts["split"], opts["pairs"]
    fn = gluon_sparse._sparse_attn_ws_kernel
    q_rows = 128 // split
    q_layout = gl.NVMMASharedLayout.get_default_for([q_rows, head_dim], gl.bfloat16)
    k_layout = gl.NVMMASharedLayout.get_default_for([64, head_dim], gl.bfloat16)
    q_desc, k_desc = f"tensordesc<bf16[{q_rows}, {head_dim}],{q_layout!r}>", f"tensordesc<bf16[64, {head_dim}],{k_layout!r}>"
    consts = {"SPLIT": split, "PAIRS": pairs, "STAGES": opts["stages"], "ATTEND_REGISTERS": opts["attend_registers"],
              "LOAD_REGISTERS": opts["load_registers"], "num_warps": opts["num_warps"]}
    sig = {"q_desc": q_desc, "k_desc": k_desc, "v_desc": k_desc, "o_desc": q_desc, "IDX": "*i32", "CNT": "*i32",
           "ORDER": "*i32", "qk_scale": "fp32"}
    sig = {name: sig.get(name) or ("constexpr" if name in consts else "i32") for name in fn.arg_names}
    label = f"warp-specialised attention (Gluon, split {split}, {pairs} block(s) per tile, D {head_dim})"
    try:
        kernel = triton.compile(GluonASTSource(fn=fn, signature=sig, constexprs=consts),
                                target=GPUTarget("cuda", gluon_sparse.ARCH, 32),
                                options={"num_warps": opts["num_warps"], "maxnreg": opts["maxnreg"]})
        spills = _local_memory_bytes(kernel.asm["cubin"])
    except Exception as exc:  # noqa: BLE001 - report every failing variant, then exit non-zero
        print(f"FAIL {label} sm_90: {type(exc).__name__}: {str(exc)[:2000]}")
        return False
    if spills:
        print(f"FAIL {label} sm_90: {spills} B of local memory per thread (register spills)")
        return False
    print(f"ok {label} sm_90: {len(kernel.asm['cubin'])} B cubin, {kernel.metadata.shared} B shared memory, no spills")
    return True


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("run without TRITON_INTERPRET")
        return 2
    results = []
    attention = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "IDX": "*i32", "CNT": "*i32",
                 "ORDER": "*i32", "KS": "*fp32"}
    for arch, tma, fp8, block_n in ((90, True, False, 64), (90, True, True, 64), (90, False, False, 128),
                                    (89, False, True, 64), (80, False, False, 128)):
        consts = {"ARCH": arch, "HEAD_DIM": 128, "BLOCK_M": 128, "BLOCK_N": block_n, "USE_TMA": tma, "K_FP8": fp8}
        pointers = dict(attention, K="*fp8e4nv") if fp8 else attention
        label = f"sparse attention ({'TMA' if tma else 'pointers'}, {'FP8' if fp8 else 'bf16'} keys)"
        results.append(_compile(label, _sparse_attn_fwd, arch, pointers, ("qk_scale",), consts))
    results += [_compile_gluon_attention(variant, d) for variant in GLUON_VARIANTS for d in (128, 64)]
    results.append(_compile("compact rows", _compact_rows_kernel, 90, {"MASK": "*u8", "IDX": "*i32", "CNT": "*i32"},
                            (), {"CHUNK": 1024}, num_stages=1))
    results.append(_compile("sub-pixel interleave", _interleave_kernel, 90, {"Y": "*bf16", "OUT": "*bf16"}, (),
                            {"RELU": True, "BLOCK_X": 32, "BLOCK_C": 128}, num_stages=1))
    results.append(_compile("MemBlock frame pairs", _stack_with_previous_kernel, 90,
                            {"X": "*bf16", "PAST": "*bf16", "OUT": "*bf16"}, (), {"BLOCK_P": 32, "BLOCK_C": 128},
                            num_stages=1))
    results.append(_compile("LQ time taps", _time_taps_kernel, 90, {"X": "*bf16", "CTX": "*bf16", "OUT": "*bf16"}, (),
                            {"HAS_CONTEXT": True, "BLOCK_X": 32, "BLOCK_C": 64}, num_stages=1))
    results.append(_compile("LQ conv epilogue (bias + channel norm + SiLU)", _bias_norm_silu_kernel, 90,
                            {"X": "*bf16", "BIAS": "*bf16", "GAMMA": "*bf16"}, ("gain", "eps"),
                            {"HAS_BIAS": True, "BLOCK_C": 4096}, num_warps=8, num_stages=1))
    results.append(_compile("q/k RMSNorm + RoPE", _norm_rope_kernel, 90,
                            {"X": "*bf16", "WEIGHT": "*bf16", "COS": "*fp32", "SIN": "*fp32", "OUT": "*bf16"}, ("eps",),
                            {"HEADS": 12, "HEAD_DIM": 128, "HEADS_P2": 16, "BLOCK_R": 2}, num_stages=1))
    for affine in (False, True):
        results.append(_compile(f"residual add + layer norm ({'affine' if affine else 'modulated'})",
                                _add_layer_norm_kernel, 90,
                                {"X": "*bf16", "UPDATE": "*bf16", "GATE": "*bf16", "SCALE": "*bf16", "SHIFT": "*bf16",
                                 "X_OUT": "*bf16", "Y": "*bf16"}, ("eps",),
                                {"HAS_UPDATE": True, "HAS_GATE": True, "AFFINE": affine, "BLOCK_R": 2,
                                 "BLOCK_D": 2048}, num_warps=LAYER_NORM_LAUNCH["num_warps"], num_stages=1,
                                fp_fusion=LAYER_NORM_LAUNCH["enable_fp_fusion"], no_bf16_fma=True))
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
