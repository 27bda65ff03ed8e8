"""Compile our Triton kernels for real GPU targets without a GPU (run as a module, never interpreted).

    python -m tests.kernels.gpu_compile

Triton's front end, its GPU passes and ptxas run on the CPU, so a kernel that the interpreter accepts
but the compiler rejects (e.g. an early ``return`` inside a ``constexpr`` branch) fails here, in CI.
Every Triton kernel compiles for sm_90 (H100/H200), sm_89 (RTX 4090, L40) and sm_80 (A100) within the block's
shared memory there, the attention kernel on the load paths each one takes (FP8 keys from sm_89, refused on
sm_80), the FP8 linears' quantising kernels, the FFN up projection's FP8 product and the LQ projection's FP8
conv from sm_89; the warp-specialised Gluon kernel for sm_90 without register spills, where this Triton can
express it (:data:`kernels.triton_compat.GLUON`). Prints one line per kernel variant; exits non-zero if any
fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels import triton_compat
from kernels.channel_norm import _bias_norm_silu_kernel
from kernels.frame_pairs import _stack_with_previous_kernel
from kernels.layer_norm import LAUNCH_OPTIONS as LAYER_NORM_LAUNCH
from kernels.fp8_conv import DEFAULT_TILE as CONV_TILE
from kernels.fp8_conv import _conv3x3_fp8_kernel
from kernels.fp8_ffn_up import DEFAULT_TILE as FFN_UP_TILE
from kernels.fp8_ffn_up import _up_gelu_quantise_kernel
from kernels.fp8_quant import BLOCK as FP8_BLOCK
from kernels.fp8_quant import _quantise_rows_kernel, launch_config
from kernels.layer_norm import _add_layer_norm_fp8_kernel, _add_layer_norm_kernel
from kernels.norm_rope import _norm_rope_kernel
from kernels.output_conv import DEFAULT_TILE as OUTPUT_CONV_TILE
from kernels.output_conv import GROUP as OUTPUT_GROUP
from kernels.output_conv import _output_conv_kernel
from kernels.pixels import LAUNCH_OPTIONS as PIXELS_LAUNCH
from kernels.pixels import _pixels_kernel
from kernels.subpixel import _interleave_kernel
from kernels.subpixel_conv import DEFAULT_TILE as SUBPIXEL_TILE
from kernels.subpixel_conv import _subpixel_conv_kernel
from kernels.time_taps import _time_taps_kernel
from kernels.triton_sparse import _compact_rows_kernel, _sparse_attn_fwd


def _signature(fn, pointers: dict[str, str], floats: tuple[str, ...], consts: dict) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        sig[name] = pointers.get(name) or ("fp32" if name in floats else "constexpr" if name in consts else "i32")
    return sig


# Shared memory one block may use (opt-in maximum, CUDA C++ Programming Guide): A100 163 KB, Ada 99 KB, Hopper 227 KB.
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def _contracted_bf16_fmas(ptx: str) -> int:
    """Count the ``fma.rn.bf16`` in ``ptx`` that contract a multiply and an add. Before sm_90 PTX has no
    bf16 ``mul``/``add``: Triton emits ``fma x, y, -0.0`` and ``fma x, 1.0, y``, each one exact rounding,
    so those are not contractions."""
    constants: dict[str, str] = {}
    for reg, value in re.findall(r"mov\.b16\s+(%\w+),\s*(0x[0-9A-Fa-f]+);", ptx):
        constants[reg] = value.upper()
    contracted = 0
    for a, b, c in re.findall(r"fma\.rn\.bf16\s+%\w+,\s*(%\w+),\s*(%\w+),\s*(%\w+);", ptx):
        if constants.get(c) != "0X8000" and "0X3F80" not in (constants.get(a), constants.get(b)):
            contracted += 1
    return contracted


def _compile(label: str, fn, arch: int, pointers: dict[str, str], floats: tuple[str, ...], consts: dict,
             num_warps: int = 4, num_stages: int = 2, *, fp_fusion: bool = True,
             no_bf16_fma: bool = False, divisible: tuple[str, ...] = ()) -> bool:
    """Compile one variant with the kernel's launch options; with ``no_bf16_fma`` its PTX must hold no
    bf16 fused multiply-add contracting a product and a sum, which would skip a rounding the kernel
    keeps on purpose. Pointers and the integer arguments named in ``divisible`` are marked divisible by
    16, as a launch specialises them at the shapes the kernel serves (its loads pipeline only then, so the
    shared-memory check sees the real footprint)."""
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if name in divisible or (divisible and name in pointers)}
    src = ASTSource(fn=fn, signature=_signature(fn, pointers, floats, consts), constexprs=consts, attrs=attrs)
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                options={"num_warps": num_warps, "num_stages": num_stages,
                                         "enable_fp_fusion": fp_fusion})
    except Exception as exc:  # noqa: BLE001 - report every failing variant, then exit non-zero
        print(f"FAIL {label} sm_{arch}: {type(exc).__name__}: {str(exc)[:2000]}")
        return False
    if no_bf16_fma and _contracted_bf16_fmas(kernel.asm.get("ptx", "")):
        print(f"FAIL {label} sm_{arch}: bf16 multiply and add contracted into fma.rn.bf16")
        return False
    if kernel.metadata.shared > SHARED_MEMORY_LIMIT[arch]:
        print(f"FAIL {label} sm_{arch}: {kernel.metadata.shared} B shared memory, over the "
              f"{SHARED_MEMORY_LIMIT[arch]} B a block may use there")
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


def _compile_gluon(label: str, fn, sig: dict[str, str], consts: dict, opts: dict) -> bool:
    """Compile one Gluon kernel for sm_90 with its launch options (``num_warps``, ``maxnreg``); it must not
    spill and must fit the block's shared memory."""
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {name: sig.get(name) or ("constexpr" if name in consts else "i32") for name in fn.arg_names}
    try:
        kernel = triton.compile(GluonASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": opts["num_warps"], "maxnreg": opts["maxnreg"]})
        spills = _local_memory_bytes(kernel.asm["cubin"])
    except Exception as exc:  # noqa: BLE001 - report every failing variant, then exit non-zero
        print(f"FAIL {label} sm_90: {type(exc).__name__}: {str(exc)[:2000]}")
        return False
    if spills:
        print(f"FAIL {label} sm_90: {spills} B of local memory per thread (register spills)")
        return False
    if kernel.metadata.shared > SHARED_MEMORY_LIMIT[90]:
        print(f"FAIL {label} sm_90: {kernel.metadata.shared} B shared memory, over {SHARED_MEMORY_LIMIT[90]} B")
        return False
    print(f"ok {label} sm_90: {len(kernel.asm['cubin'])} B cubin, {kernel.metadata.shared} B shared memory, no spills")
    return True


def _descriptor_type(dtype: str, box: list[int]) -> str:
    """The signature type of a TMA descriptor of ``box`` elements of ``dtype`` ("bf16", "fp8e4nv")."""
    from triton.experimental.gluon import language as gl

    layout = gl.NVMMASharedLayout.get_default_for(box, {"bf16": gl.bfloat16, "fp8e4nv": gl.float8e4nv}[dtype])
    return f"tensordesc<{dtype}[{box[0]}, {box[1]}],{layout!r}>"


def _compile_gluon_attention(variant: dict, head_dim: int) -> bool:
    """The warp-specialised Gluon kernel for sm_90 with its launch options; it must not spill."""
    from kernels import gluon_sparse

    opts = {**gluon_sparse.LAUNCH_OPTIONS, **variant}
    split, pairs = opts["split"], opts["pairs"]
    q_desc, k_desc = _descriptor_type("bf16", [128 // split, head_dim]), _descriptor_type("bf16", [64, head_dim])
    consts = {"SPLIT": split, "PAIRS": pairs, "STAGES": opts["stages"], "ATTEND_REGISTERS": opts["attend_registers"],
              "LOAD_REGISTERS": opts["load_registers"], "num_warps": opts["num_warps"]}
    sig = {"q_desc": q_desc, "k_desc": k_desc, "v_desc": k_desc, "o_desc": q_desc, "IDX": "*i32", "CNT": "*i32",
           "ORDER": "*i32", "qk_scale": "fp32"}
    label = f"warp-specialised attention (Gluon, split {split}, {pairs} block(s) per tile, D {head_dim})"
    return _compile_gluon(label, gluon_sparse._sparse_attn_ws_kernel, sig, consts, opts)


def _compile_gluon_fp8_attention(head_dim: int) -> bool:
    """The FP8 warp-specialised kernel (both products in e4m3) for sm_90 with its launch options."""
    from kernels import gluon_sparse_fp8

    opts = gluon_sparse_fp8.LAUNCH_OPTIONS
    q_desc = _descriptor_type("bf16", [64, head_dim])
    sig = {"q_desc": q_desc, "o_desc": q_desc, "k_desc": _descriptor_type("fp8e4nv", [64, head_dim]),
           "vt_desc": _descriptor_type("fp8e4nv", [head_dim, 64]), "IDX": "*i32", "CNT": "*i32", "ORDER": "*i32",
           "KS": "*fp32", "VS": "*fp32", "qk_scale": "fp32"}
    consts = {"STAGES": opts["stages"], "ATTEND_REGISTERS": opts["attend_registers"],
              "LOAD_REGISTERS": opts["load_registers"], "num_warps": opts["num_warps"]}
    label = f"FP8 warp-specialised attention (Gluon, e4m3 Q.K^T and P.V, D {head_dim})"
    return _compile_gluon(label, gluon_sparse_fp8._sparse_attn_fp8_kernel, sig, consts, opts)


ARCHS = (90, 89, 80)  # Hopper (H100/H200), Ada (RTX 4090, L40), Ampere (A100)
ATTENTION_POINTERS = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "IDX": "*i32", "CNT": "*i32",
                      "ORDER": "*i32", "KS": "*fp32"}
# (arch, TMA loads, FP8 keys, BLOCK_N): the load paths each architecture takes (TMA from sm_90, FP8 Q.K^T
# from sm_89: kernels.triton_sparse.TMA_MIN_ARCH / FP8_MIN_ARCH).
ATTENTION_VARIANTS = ((90, True, False, 64), (90, True, True, 64), (90, False, False, 128),
                      (89, False, False, 128), (89, False, True, 64), (80, False, False, 128))


def _attention_label(tma: bool, fp8: bool) -> str:
    return f"sparse attention ({'TMA' if tma else 'pointers'}, {'FP8' if fp8 else 'bf16'} keys)"


def _attention_consts(arch: int, tma: bool, fp8: bool, block_n: int) -> dict:
    return {"ARCH": arch, "HEAD_DIM": 128, "BLOCK_M": 128, "BLOCK_N": block_n, "USE_TMA": tma, "K_FP8": fp8}


def _fp8_refused_below_sm89() -> bool:
    """Triton has no e4m3 (fp8e4nv) before sm_89: the FP8 key path must not compile for sm_80, which is why
    the dispatcher refuses FP8 keys there (kernels.triton_sparse.FP8_MIN_ARCH)."""
    label = f"{_attention_label(False, True)} sm_80"
    src = ASTSource(fn=_sparse_attn_fwd, signature=_signature(_sparse_attn_fwd, dict(ATTENTION_POINTERS, K="*fp8e4nv"),
                                                              ("qk_scale",), _attention_consts(80, False, True, 64)),
                    constexprs=_attention_consts(80, False, True, 64))
    try:
        triton.compile(src, target=GPUTarget("cuda", 80, 32), options={"num_warps": 4, "num_stages": 2})
    except Exception as exc:  # noqa: BLE001 - the refusal is the expected outcome
        if "fp8e4nv" in str(exc):
            print(f"ok {label}: refused as expected (no e4m3 before sm_89)")
            return True
        print(f"FAIL {label}: refused for another reason: {type(exc).__name__}: {str(exc)[:2000]}")
        return False
    print(f"FAIL {label}: compiled, but sm_80 has no e4m3: update FP8_MIN_ARCH and this check")
    return False


def _other_kernels(arch: int) -> list[bool]:
    """Every Triton kernel of ours besides attention, for one architecture."""
    results = [
        _compile("compact rows", _compact_rows_kernel, arch, {"MASK": "*u8", "IDX": "*i32", "CNT": "*i32"}, (),
                 {"CHUNK": 1024}, num_stages=1),
        _compile("sub-pixel interleave", _interleave_kernel, arch, {"Y": "*bf16", "OUT": "*bf16"}, (),
                 {"RELU": True, "BLOCK_X": 32, "BLOCK_C": 128}, num_stages=1),
        _compile("sub-pixel conv (3x3 of the 2x upsampled image)", _subpixel_conv_kernel, arch,
                 {"X": "*bf16", "W": "*bf16", "BIAS": "*bf16", "OUT": "*bf16"}, (),
                 {"HAS_BIAS": False, "RELU": True, "ROWS": SUBPIXEL_TILE.rows, "BLOCK_J": SUBPIXEL_TILE.block_j,
                  "BLOCK_N": SUBPIXEL_TILE.block_n, "BLOCK_K": SUBPIXEL_TILE.block_k},
                 num_warps=SUBPIXEL_TILE.num_warps, num_stages=SUBPIXEL_TILE.num_stages,
                 divisible=("C", "N", "stride_xn", "stride_xh", "stride_xw", "stride_on", "stride_oh", "stride_ow")),
        _compile("decoder output conv (3x3 to the image channels)", _output_conv_kernel, arch,
                 {"X": "*bf16", "W": "*bf16", "BIAS": "*bf16", "OUT": "*bf16"}, (),
                 {"C": 128, "GROUP": OUTPUT_GROUP, "HAS_BIAS": True, "ROWS": OUTPUT_CONV_TILE.rows,
                  "BLOCK_W": OUTPUT_CONV_TILE.block_w},
                 num_warps=OUTPUT_CONV_TILE.num_warps, num_stages=OUTPUT_CONV_TILE.num_stages,
                 divisible=("stride_xn", "stride_xh", "stride_xw", "stride_on", "stride_oh")),
        _compile("MemBlock frame pairs", _stack_with_previous_kernel, arch,
                 {"X": "*bf16", "PAST": "*bf16", "OUT": "*bf16"}, (), {"BLOCK_P": 32, "BLOCK_C": 128}, num_stages=1),
        _compile("LQ time taps", _time_taps_kernel, arch, {"X": "*bf16", "CTX": "*bf16", "OUT": "*bf16",
                                                           "INV_SCALE": "*fp32"}, (),
                 {"HAS_CONTEXT": True, "QUANTISE": False, "BLOCK_X": 32, "BLOCK_C": 64}, num_stages=1),
        _compile("LQ conv epilogue (bias + channel norm + SiLU)", _bias_norm_silu_kernel, arch,
                 {"X": "*bf16", "BIAS": "*bf16", "GAMMA": "*bf16"}, ("gain", "eps"),
                 {"HAS_BIAS": True, "BLOCK_C": 4096}, num_warps=8, num_stages=1),
        _compile("frames to uint8 pixels", _pixels_kernel, arch, {"X": "*bf16", "OUT": "*u8"}, (),
                 {"BLOCK_W": 256}, num_warps=PIXELS_LAUNCH["num_warps"], num_stages=1,
                 fp_fusion=PIXELS_LAUNCH["enable_fp_fusion"]),
        _compile("q/k RMSNorm + RoPE", _norm_rope_kernel, arch,
                 {"X": "*bf16", "WEIGHT": "*bf16", "COS": "*fp32", "SIN": "*fp32", "OUT": "*bf16"}, ("eps",),
                 {"HEADS": 12, "HEAD_DIM": 128, "HEADS_P2": 16, "BLOCK_R": 2}, num_stages=1),
    ]
    for affine in (False, True):
        results.append(_compile(f"residual add + layer norm ({'affine' if affine else 'modulated'})",
                                _add_layer_norm_kernel, arch,
                                {"X": "*bf16", "UPDATE": "*bf16", "GATE": "*bf16", "SCALE": "*bf16", "SHIFT": "*bf16",
                                 "X_OUT": "*bf16", "Y": "*bf16"}, ("eps",),
                                {"HAS_UPDATE": True, "HAS_GATE": True, "AFFINE": affine, "BLOCK_R": 2,
                                 "BLOCK_D": 2048}, num_warps=LAYER_NORM_LAUNCH["num_warps"], num_stages=1,
                                fp_fusion=LAYER_NORM_LAUNCH["enable_fp_fusion"], no_bf16_fma=True))
    if arch >= FP8_MIN_ARCH:
        results += _fp8_kernels(arch)
    return results


FP8_MIN_ARCH = 89  # e4m3 (fp8e4nv) exists from sm_89: the FP8 linears' kernels run there and above


def _fp8_kernels(arch: int) -> list[bool]:
    """The FP8 linears' quantising kernels (precision = "fp8"), at the DiT's widths (1536, FFN 8960), the FFN up
    projection's FP8 product with its quantising epilogue, and the LQ projection's e4m3 tap stacking and FP8
    conv (their default tiles: TMA boxes and wgmma on sm_90)."""
    tile = CONV_TILE
    results = [
        _compile("LQ time taps to e4m3", _time_taps_kernel, arch,
                 {"X": "*bf16", "CTX": "*bf16", "OUT": "*fp8e4nv", "INV_SCALE": "*fp32"}, (),
                 {"HAS_CONTEXT": True, "QUANTISE": True, "BLOCK_X": 32, "BLOCK_C": 64}, num_stages=1),
        _compile("LQ FP8 conv (implicit GEMM)", _conv3x3_fp8_kernel, arch,
                 {"x_desc": f"tensordesc<fp8e4nv[{tile.block_m}, {tile.block_k}]>",
                  "w_desc": f"tensordesc<fp8e4nv[{tile.block_n}, {tile.block_k}]>", "OUT": "*bf16", "SCALE": "*fp32",
                  "BIAS": "*bf16"}, (),
                 {"HAS_BIAS": True, "BLOCK_M": tile.block_m, "BLOCK_N": tile.block_n, "BLOCK_K": tile.block_k,
                  "GROUP_M": tile.group_m}, num_warps=tile.warps, num_stages=tile.stages),
    ]
    for persistent in (False, True):
        tile = FFN_UP_TILE
        results.append(_compile(f"FFN up FP8 product + GELU + 1x128 e4m3{' (persistent)' if persistent else ''}",
                                _up_gelu_quantise_kernel, arch,
                                {"a_desc": f"tensordesc<fp8e4nv[{tile.block_m}, {tile.block_k}]>",
                                 "w_desc": f"tensordesc<fp8e4nv[{FP8_BLOCK}, {tile.block_k}]>", "A_SCALE": "*fp32",
                                 "W_SCALE": "*fp32", "BIAS": "*bf16", "Q": "*fp8e4nv", "Q_SCALE": "*fp32"}, (),
                                {"BLOCK_M": tile.block_m, "BLOCK_N": FP8_BLOCK, "BLOCK_K": tile.block_k,
                                 "GROUP_M": tile.group_m, "PERSISTENT": persistent},
                                num_warps=tile.warps, num_stages=tile.stages))
    for gelu, dim in ((False, 1536), (True, 8960)):
        config = launch_config(dim)
        warps = config.pop("num_warps")
        results.append(_compile(f"row quantise to e4m3{' + GELU' if gelu else ''}", _quantise_rows_kernel, arch,
                                {"X": "*bf16", "Q": "*fp8e4nv", "SCALE": "*fp32"}, (), {"GELU": gelu, **config},
                                num_warps=warps, num_stages=1))
    for affine in (False, True):
        results.append(_compile(f"residual add + layer norm to e4m3 ({'affine' if affine else 'modulated'})",
                                _add_layer_norm_fp8_kernel, arch,
                                {"X": "*bf16", "UPDATE": "*bf16", "GATE": "*bf16", "SCALE": "*bf16", "SHIFT": "*bf16",
                                 "X_OUT": "*bf16", "Y": "*fp8e4nv", "Y_SCALE": "*fp32"}, ("eps",),
                                {"HAS_UPDATE": True, "HAS_GATE": True, "AFFINE": affine, "BLOCK_R": 2,
                                 "BLOCK_D": 2048}, num_warps=LAYER_NORM_LAUNCH["num_warps"], num_stages=1,
                                fp_fusion=LAYER_NORM_LAUNCH["enable_fp_fusion"], no_bf16_fma=True))
    return results


def _gluon_variants() -> list[bool]:
    """Every Gluon variant, or one ``skip`` line where this Triton cannot express the kernel (the
    dispatcher then serves sm_90 with the Triton kernel, compiled for sm_90 above)."""
    if not triton_compat.GLUON.available:
        print(f"skip warp-specialised attention (Gluon) sm_90: not expressible: {triton_compat.GLUON.reason}")
        return []
    return ([_compile_gluon_attention(variant, d) for variant in GLUON_VARIANTS for d in (128, 64)]
            + [_compile_gluon_fp8_attention(d) for d in (128, 64)])


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("run without TRITON_INTERPRET")
        return 2
    results = []
    for arch, tma, fp8, block_n in ATTENTION_VARIANTS:
        pointers = dict(ATTENTION_POINTERS, K="*fp8e4nv") if fp8 else ATTENTION_POINTERS
        results.append(_compile(_attention_label(tma, fp8), _sparse_attn_fwd, arch, pointers, ("qk_scale",),
                                _attention_consts(arch, tma, fp8, block_n)))
    results.append(_fp8_refused_below_sm89())
    results += _gluon_variants()
    for arch in ARCHS:
        results += _other_kernels(arch)
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
