"""Compare our DiT / LQ projection (and optionally the Tiny pipeline) with FlashVSR_plus.

Both sides load the SAME checkpoint files (written once by ``write_random_checkpoints``), see the
same noise and LQ frames and run the same streaming steps; the script prints the max abs difference
per step. The reference must be exported (never committed) to ``third_party/FlashVSR_plus``::

    mkdir -p third_party/FlashVSR_plus
    git -C <mirror of lihaoyun6/FlashVSR_plus> archive HEAD src run.py | tar -x -C third_party/FlashVSR_plus

``--attention exact`` (default) swaps the reference's sparse attention for an exact masked attention
(its block mask expanded, fp32 SDPA) so that fp32 runs agree to float tolerance;
``--attention native`` keeps each side's own attention (for bf16 runs on a GPU: report PSNR).

    python scripts/compare_reference.py                      # small preset, CPU, fp32
    python scripts/compare_reference.py --preset wan2.1-1.3b --device cuda --dtype bf16 --attention native --decode
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from upscaler import schedule  # noqa: E402
from upscaler.models.config import SparsityParams, load_preset  # noqa: E402
from upscaler.weights import load_models, lq_layer_count, read_state, resolve_weights, write_random_checkpoints  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# imported by the reference modules but not used by the parts we run
OPTIONAL_REFERENCE_IMPORTS = ("PIL", "PIL.Image", "torchvision", "torchvision.transforms", "imageio")


def import_reference(path: Path) -> types.SimpleNamespace:
    """The reference's model modules and ``model_fn_wan_video``, imported from ``path``."""
    if not (path / "src" / "models" / "wan_video_dit.py").is_file():
        sys.exit(f"reference checkout not found at {path} (see this script's docstring)")
    for name in OPTIONAL_REFERENCE_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.Image = stub.GaussianBlur = object  # type: ignore[attr-defined]
            sys.modules[name] = stub
    sys.path.insert(0, str(path))
    return types.SimpleNamespace(
        dit=importlib.import_module("src.models.wan_video_dit"),
        utils=importlib.import_module("src.models.utils"),
        tcdecoder=importlib.import_module("src.models.TCDecoder"),
        tiny=importlib.import_module("src.pipelines.flashvsr_tiny"),
    )


def exact_masked_attention(q, k, v, num_heads, compatibility_mode=False, attention_mask=None, return_KV=False):
    """Drop-in for the reference ``flash_attention``: dense fp32 SDPA, block mask expanded to tokens."""
    dtype = q.dtype
    q, k, v = (t.unflatten(-1, (num_heads, -1)).transpose(1, 2).float() for t in (q, k, v))
    mask = None
    if attention_mask is not None:
        mask = attention_mask.bool().repeat_interleave(128, dim=2).repeat_interleave(64, dim=3)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = torch.nan_to_num(out, nan=0.0)  # query blocks with no kept key block give zeros
    return out.transpose(1, 2).flatten(2).to(dtype)


def build_reference(ref, files, preset, device, dtype, version):
    cfg = preset.dit
    dit = ref.dit.WanModel(
        dim=cfg.dim, in_dim=cfg.in_dim, ffn_dim=cfg.ffn_dim, out_dim=cfg.out_dim, text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim, eps=cfg.eps, patch_size=cfg.patch_size, num_heads=cfg.num_heads, num_layers=cfg.num_layers,
    )
    dit.load_state_dict(read_state(files.dit), strict=True)
    dit.to(device=device, dtype=dtype).eval()
    lq_state = read_state(files.lq_proj)
    lq_cls = ref.utils.Buffer_LQ4x_Proj if version == "v1" else ref.utils.Causal_LQ4x_Proj
    lq = lq_cls(in_dim=3, out_dim=cfg.dim, layer_num=lq_layer_count(lq_state))
    resize_reference_lq(ref, lq, preset.lq_proj)
    lq.load_state_dict(lq_state, strict=True)
    lq.to(device=device, dtype=dtype).eval()
    context = torch.load(files.prompt, map_location=device, weights_only=True).to(dtype)
    dit.reinit_cross_kv(context)
    timestep = torch.tensor([1000.0], device=device, dtype=dtype)
    t = dit.time_embedding(ref.dit.sinusoidal_embedding_1d(dit.freq_dim, timestep))
    t_mod = dit.time_projection(t).unflatten(1, (6, dit.dim))
    return dit, lq, t, t_mod


def resize_reference_lq(ref, lq, cfg) -> None:
    """The reference hard-codes hidden sizes 2048/3072: rebuild its layers (with its own classes)
    at the preset's sizes."""
    if (lq.hidden_dim1, lq.hidden_dim2) == (cfg.hidden_dim1, cfg.hidden_dim2):
        return
    conv = dict(kernel_size=(4, 3, 3), stride=(2, 1, 1), padding=(1, 1, 1))
    lq.hidden_dim1, lq.hidden_dim2 = cfg.hidden_dim1, cfg.hidden_dim2
    lq.conv1 = ref.utils.CausalConv3d(cfg.in_dim * cfg.unshuffle**2, cfg.hidden_dim1, **conv)
    lq.norm1 = ref.utils.RMS_norm(cfg.hidden_dim1, images=False)
    lq.conv2 = ref.utils.CausalConv3d(cfg.hidden_dim1, cfg.hidden_dim2, **conv)
    lq.norm2 = ref.utils.RMS_norm(cfg.hidden_dim2, images=False)
    lq.linear_layers = torch.nn.ModuleList(
        [torch.nn.Linear(cfg.hidden_dim2, layer.out_features) for layer in lq.linear_layers]
    )


def build_reference_tcdecoder(ref, files, preset, device, dtype):
    tc = preset.tcdecoder
    model = ref.tcdecoder.TAEHV(checkpoint_path=None, channels=list(tc.channels),
                                latent_channels=tc.latent_channels + tc.cond_channels)
    model.load_state_dict(torch.load(files.tcdecoder, map_location="cpu", weights_only=True), strict=True)
    model.to(device=device, dtype=dtype).eval()
    model.clean_mem()
    return model


def concat_features(acc, new):
    if new is None:
        return acc
    return list(new) if acc is None else [torch.cat([a, b], dim=1) for a, b in zip(acc, new)]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two [-1, 1] tensors (peak-to-peak 2)."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, default=ROOT / "third_party" / "FlashVSR_plus")
    p.add_argument("--preset", default="small")
    p.add_argument("--version", default="v1.1", choices=("v1", "v1.1"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES))
    p.add_argument("--attention", default="exact", choices=("exact", "native"))
    p.add_argument("--height", type=int, default=256, help="model height in pixels (multiple of 128)")
    p.add_argument("--width", type=int, default=384, help="model width in pixels (multiple of 128)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--sparse-ratio", type=float, default=SparsityParams.sparse_ratio,
                   help="LCSA budget; at small sizes the default keeps every block, lower it to exercise the mask")
    p.add_argument("--local-range", type=int, default=SparsityParams.local_range)
    p.add_argument("--kv-ratio", type=int, default=SparsityParams.kv_ratio)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dir", type=Path, default=None, help="default: scratch/compare-<preset>-<version>")
    p.add_argument("--decode", action="store_true", help="also compare the Tiny pipeline output (TCDecoder)")
    args = p.parse_args()

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    preset = load_preset(args.preset)
    ref = import_reference(args.reference)
    if args.attention == "exact":
        ref.dit.flash_attention = exact_masked_attention

    weights_dir = args.weights_dir or ROOT / "scratch" / f"compare-{args.preset}-{args.version}"
    if not (weights_dir / "diffusion_pytorch_model_streaming_dmd.safetensors").is_file():
        write_random_checkpoints(weights_dir, preset, args.version, seed=args.seed)
    files = resolve_weights(weights_dir, args.version, "all", preset=preset.name)

    ours = load_models(files, preset, device, dtype, variant="tiny")
    ref_dit, ref_lq, ref_t, ref_t_mod = build_reference(ref, files, preset, device, dtype, args.version)
    sparsity = SparsityParams(sparse_ratio=args.sparse_ratio, kv_ratio=args.kv_ratio, local_range=args.local_range)
    height, width = args.height, args.width
    topk_ratio = sparsity.sparse_ratio * 768 * 1280 / (height * width)

    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    n_lq = schedule.lq_frames_needed(args.steps)
    lq_video = (torch.rand(1, 3, n_lq, height, width, generator=gen) * 2 - 1).to(device=device, dtype=dtype)

    cache = ours.dit.new_cache()
    ours.lq_proj.reset()
    ref_lq.clear_cache()
    pre_k = [None] * len(ref_dit.blocks)
    pre_v = [None] * len(ref_dit.blocks)
    our_latents, ref_latents = [], []
    print(f"preset={preset.name} version={args.version} device={device} dtype={args.dtype} attention={args.attention} "
          f"size={width}x{height} steps={args.steps} {sparsity}")
    for index in range(args.steps):
        step = schedule.step(index)
        ours_feat = ref_feat = None
        for start, end in step.lq_calls:
            clip = lq_video[:, :, start:end]
            ours_feat = concat_features(ours_feat, ours.lq_proj.stream(clip))
            ref_feat = concat_features(ref_feat, ref_lq.stream_forward(clip))
        noise = torch.randn(1, 16, step.latent_frames, height // 8, width // 8, generator=gen).to(device=device, dtype=dtype)
        mine = ours.dit.stream_step(noise, ours_feat, cache, step=index, sparsity=sparsity)
        pred, pre_k, pre_v = ref.tiny.model_fn_wan_video(
            ref_dit, x=noise, timestep=None, context=None, LQ_latents=ref_feat, is_stream=True,
            pre_cache_k=pre_k, pre_cache_v=pre_v, topk_ratio=topk_ratio, kv_ratio=sparsity.kv_ratio,
            cur_process_idx=index, t_mod=ref_t_mod, t=ref_t, local_range=sparsity.local_range,
        )
        theirs = noise - pred
        our_latents.append(mine)
        ref_latents.append(theirs)
        lq_diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(ours_feat, ref_feat))
        diff = (mine.float() - theirs.float()).abs().max().item()
        print(f"step {index}: latents {tuple(mine.shape)} max_abs_diff={diff:.3e} (|ref| max {theirs.abs().max().item():.3f}) "
              f"psnr={psnr(mine, theirs):.1f} dB; lq_features max_abs_diff={lq_diff:.3e}")

    if args.decode:
        decoder = ours.decoder
        state = decoder.new_state()
        frames = []
        for index, latents in enumerate(our_latents):
            out_start, out_end = schedule.step(index).output
            frames.append(decoder.decode(latents, lq_video[:, :, out_start:out_end], state))
        mine = torch.cat(frames, dim=2)
        ref_tc = build_reference_tcdecoder(ref, files, preset, device, dtype)
        cond_end = schedule.step(args.steps - 1).output[1]
        theirs = ref_tc.decode_video(torch.cat(ref_latents, dim=2).transpose(1, 2), parallel=False,
                                     cond=lq_video[:, :, :cond_end]).transpose(1, 2).mul(2).sub(1)
        n = min(mine.shape[2], theirs.shape[2])
        diff = (mine[:, :, :n].float() - theirs[:, :, :n].float()).abs().max().item()
        print(f"tiny pipeline: frames ours={mine.shape[2]} reference={theirs.shape[2]} compared={n} "
              f"max_abs_diff={diff:.3e} psnr={psnr(mine[:, :, :n], theirs[:, :, :n]):.1f} dB")


if __name__ == "__main__":
    main()
