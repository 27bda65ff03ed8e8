"""FlashVSR's Wan2.1 DiT, streaming one-step denoiser (state dict = ``diffusion_pytorch_model_streaming_dmd``).

One call of :meth:`WanDiT.stream_step` denoises one chunk of latent frames (6 at step 0, then 2) in a
single flow-matching step at timestep 1000: ``latents = noise - model(noise)``. Tokens are permuted
into LCSA window order once after patchify and back once after the head (every other op is per
token, so this is exact); RoPE tables and LQ features are permuted the same way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.attention import CrossAttention, LCSAStep, SelfAttention
from upscaler.models.config import DiTConfig, SparsityParams
from upscaler.models.fp8 import FP8Linear, QuantisedRows, feed_forward_fp8, quantise
from upscaler.models.fusion import fusable
from upscaler.models.kv_cache import DiTStreamCache
from upscaler.models.rope import Rope3D
from upscaler.models.windows import (
    channels_first_to_windows,
    check_grid,
    raster_to_windows,
    unpatchify_windows,
    window_positions,
)

log = logging.getLogger(__name__)

TIMESTEP = 1000.0
FIRST_STEP_LATENTS = 6
NEXT_STEP_LATENTS = 2
FIRST_STEP_TIME_OFFSET = 4
# LCSA top-k budget: sparse_ratio is defined for a 768x1280 output and scaled by pixel count
TOPK_REFERENCE_PIXELS = 768 * 1280


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's 1D sinusoidal embedding ``[cos, sin]``, evaluated in float64, returned in ``position.dtype``."""
    exponent = -torch.arange(dim // 2, dtype=torch.float64, device=position.device).div(dim // 2)
    sinusoid = torch.outer(position.to(torch.float64), torch.pow(10000, exponent))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1).to(position.dtype)


def rope_time_offset(step: int) -> int:
    """RoPE time position of a step's first latent frame (0, then 4 + 2*step)."""
    return 0 if step == 0 else FIRST_STEP_TIME_OFFSET + NEXT_STEP_LATENTS * step


def lcsa_topk(sparsity: SparsityParams, windows_per_slice: int, model_pixels: int) -> int:
    """The reference's top-k budget: ``int(windows^2 * sparse_ratio * 768*1280 / (H*W)) - 1``."""
    topk_ratio = sparsity.sparse_ratio * TOPK_REFERENCE_PIXELS / model_pixels
    return int(windows_per_slice * windows_per_slice * topk_ratio) - 1


class DiTBlock(nn.Module):
    """One Wan block: modulated self-attention, cross-attention, modulated FFN (keys as the checkpoint)."""

    fp8_inputs: frozenset[str] = frozenset()
    """The layer groups whose linears run in FP8 (:func:`upscaler.models.fp8.convert_dit_linears`): the
    norms feeding them emit e4m3 rows."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        dim = cfg.dim
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(dim, eps=cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        mod: "BlockModulation",
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        index: int,
        step: LCSAStep,
        pending: "GatedUpdate | None" = None,
    ) -> tuple[torch.Tensor, "GatedUpdate"]:
        """``(x, update)``: the block's output is ``update.applied(x)``, left to the caller so that the next
        block's first layer norm can add it in its own pass; ``pending`` is the previous block's update,
        added here that way."""
        eps = self.norm1.eps
        fp8 = self.fp8_inputs
        previous = {} if pending is None else {"update": pending.update, "gate": pending.gate}
        x, attn_in = _add_norm(x, mod.scale_msa, mod.shift_msa, eps, fp8="self_qkv" in fp8, **previous)
        attn = self.self_attn(attn_in, index, step)
        norm3 = self.norm3
        x, cross_in = _add_norm(x, norm3.weight, norm3.bias, norm3.eps, update=attn, gate=mod.gate_msa, affine=True,
                                fp8="cross_q" in fp8)
        x, ffn_in = _add_norm(x, mod.scale_mlp, mod.shift_mlp, eps, update=self.cross_attn(cross_in, cross_kv),
                              fp8="ffn_up" in fp8)
        return x, GatedUpdate(feed_forward(self.ffn, ffn_in), mod.gate_mlp)


def feed_forward(ffn: nn.Sequential, x: torch.Tensor | QuantisedRows) -> torch.Tensor:
    """``ffn(x)`` for ``Sequential(Linear, GELU(tanh), Linear)``. On CUDA the GELU runs in the first
    GEMM's epilogue (cuBLASLt's GELU is the tanh form): one pass less over the 8960-wide hidden
    activations (on an H200 at 4K, 3.11 -> 2.86 ms per block for that GEMM and its GELU). With FP8
    linears: :func:`upscaler.models.fp8.feed_forward_fp8`."""
    if isinstance(ffn[0], FP8Linear) or isinstance(ffn[2], FP8Linear):
        return feed_forward_fp8(ffn[0], ffn[2], x)
    if not x.is_cuda:
        return ffn(x)
    up, _, down = ffn
    hidden = torch._addmm_activation(up.bias, x.flatten(0, -2), up.weight.t(), use_gelu=True)
    return down(hidden.unflatten(0, x.shape[:-1]))


def _add_norm(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float, *,
              update: torch.Tensor | None = None, gate: torch.Tensor | None = None,
              affine: bool = False, fp8: bool = False) -> tuple[torch.Tensor, torch.Tensor | QuantisedRows]:
    """``x + gate * update`` (or ``x + update``, or ``x``) and its layer norm times ``scale`` plus
    ``shift`` (``affine``: an ``nn.LayerNorm``'s own weight and bias; else the timestep modulation): one
    Triton pass on CUDA (:mod:`kernels.layer_norm`), PyTorch elsewhere. ``fp8``: the norm's output
    quantised per row for FP8 linears (in the same Triton pass on CUDA)."""
    if x.is_cuda and x.is_contiguous() and (update is None or update.is_contiguous()):
        from kernels.layer_norm import add_layer_norm

        if fp8:
            x, (data, row_scale) = add_layer_norm(x, scale, shift, eps, update=update, gate=gate, affine=affine,
                                                  fp8=True)
            return x, QuantisedRows(data, row_scale)
        return add_layer_norm(x, scale, shift, eps, update=update, gate=gate, affine=affine)
    if update is not None:
        x = _gated_add(x, gate, update) if gate is not None else x + update
    if affine:
        y = F.layer_norm(x, (x.shape[-1],), scale, shift, eps)
    else:
        y = _norm_modulate(x, scale, shift, eps)
    return x, quantise(y) if fp8 else y


@fusable
def _norm_modulate(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm without affine, then the timestep modulation."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps) * scale + shift


@fusable
def _gated_add(x: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    return x + gate * update


@dataclass(frozen=True)
class GatedUpdate:
    """A residual update ``x + gate * update`` not added yet (a block's FFN output and its gate)."""

    update: torch.Tensor
    gate: torch.Tensor

    def applied(self, x: torch.Tensor) -> torch.Tensor:
        return _gated_add(x, self.gate, self.update)


@dataclass(frozen=True)
class BlockModulation:
    """A block's timestep modulation; ``scale_*`` already hold ``1 + scale`` (as the reference rounds it)."""

    shift_msa: torch.Tensor
    scale_msa: torch.Tensor
    gate_msa: torch.Tensor
    shift_mlp: torch.Tensor
    scale_mlp: torch.Tensor
    gate_mlp: torch.Tensor


@dataclass(frozen=True)
class PreparedContext:
    """Per-run constants computed once by :meth:`WanDiT.prepare`."""

    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]
    modulation: list[BlockModulation]
    head_shift: torch.Tensor
    head_scale: torch.Tensor


class Head(nn.Module):
    """Output head (keys ``head.head``, ``head.modulation``)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x) * scale + shift)


class WanDiT(nn.Module):
    """The FlashVSR DiT. Call :meth:`prepare` once with the prompt context, then :meth:`stream_step`."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)
        self.rope = Rope3D(cfg.head_dim)
        self._prepared: PreparedContext | None = None
        self._positions: dict[tuple[tuple[int, int, int], torch.device], torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @torch.no_grad()
    def prepare(self, context: torch.Tensor) -> None:
        """Cache the cross-attention K/V of the prompt ``context`` ``(1, S, text_dim)`` and the
        timestep-1000 modulation. Call again after moving the module to another device or dtype."""
        if context.dim() == 2:
            context = context.unsqueeze(0)
        context = context.to(device=self.device, dtype=self.dtype)
        embedded = self.text_embedding(context)
        timestep = torch.tensor([TIMESTEP], device=self.device, dtype=self.dtype)
        t = self.time_embedding(sinusoidal_embedding(self.cfg.freq_dim, timestep))
        t_mod = self.time_projection(t).unflatten(1, (6, self.cfg.dim))
        modulation = []
        for block in self.blocks:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (block.modulation + t_mod).chunk(6, dim=1)
            modulation.append(BlockModulation(shift_msa, 1 + scale_msa, gate_msa, shift_mlp, 1 + scale_mlp, gate_mlp))
        head_shift, head_scale = (self.head.modulation + t.unsqueeze(1)).chunk(2, dim=1)
        self._prepared = PreparedContext(
            cross_kv=[block.cross_attn.project_context(embedded) for block in self.blocks],
            modulation=modulation,
            head_shift=head_shift,
            head_scale=1 + head_scale,
        )
        log.info("dit prepared context_tokens=%d dtype=%s device=%s", context.shape[1], self.dtype, self.device)

    def new_cache(self, dtype: torch.dtype | None = None, *, fp8_keys: bool = False,
                  fp8_attention: bool = False) -> DiTStreamCache:
        """An empty streaming K/V cache (allocated on step 0); ``dtype`` None stores K/V in the model dtype;
        ``fp8_keys`` (FP8 storage) gives attention the keys as stored, for an FP8 Q.K^T product;
        ``fp8_attention`` (FP8 storage) keys and transposed values as stored, for FP8 Q.K^T and P.V."""
        return DiTStreamCache(dtype=dtype, fp8_keys=fp8_keys, fp8_attention=fp8_attention)

    def _window_positions(self, grid: tuple[int, int, int]) -> torch.Tensor:
        key = (grid, self.device)
        if key not in self._positions:
            self._positions[key] = window_positions(grid, self.cfg.window, self.device)
        return self._positions[key]

    @torch.no_grad()
    def stream_step(
        self,
        noise: torch.Tensor,
        lq_features: Sequence[torch.Tensor] | None,
        cache: DiTStreamCache,
        *,
        step: int,
        sparsity: SparsityParams,
    ) -> torch.Tensor:
        """Denoise one chunk: ``noise`` ``(B, 16, f, h, w)`` (f = 6 at step 0, 2 after) -> latents
        ``noise - model(noise)`` in ``noise.dtype``. ``lq_features[i]`` ``(B, f*h*w/4, dim)`` (raster
        token order, as the LQ projection returns them) is added to the input of block ``i``."""
        if self._prepared is None:
            raise RuntimeError("WanDiT.prepare(context) must be called before stream_step")
        if step != cache.steps:
            raise ValueError(f"stream_step called with step={step} but the cache has seen {cache.steps} steps")
        cfg = self.cfg
        x = self.patch_embedding(noise.to(self.dtype))
        batch, _, f, h, w = x.shape
        grid = (f, h, w)
        check_grid(grid, cfg.window)
        x = channels_first_to_windows(x, cfg.window)
        slices = f // cfg.window[0]
        if step == 0:
            cache.allocate(cfg, batch, x.shape[1] // slices, sparsity.kv_ratio, x.device, self.dtype)
        cache.begin_step(slices)
        cos, sin = self.rope.tables(self._window_positions(grid), rope_time_offset(step))
        windows_hw = (h // cfg.window[1], w // cfg.window[2])
        model_pixels = noise.shape[-2] * noise.shape[-1] * 64  # latent stride 8 in both axes
        lcsa = LCSAStep(
            cos=cos,
            sin=sin,
            cache=cache,
            topk=lcsa_topk(sparsity, windows_hw[0] * windows_hw[1], model_pixels),
            local_range=sparsity.local_range,
            grid=windows_hw,
        )
        features = list(lq_features or ())
        prepared = self._prepared
        pending = None  # the previous block's FFN update, added by the next block's first layer norm
        for index, block in enumerate(self.blocks):
            if index < len(features):
                if pending is not None:
                    x, pending = pending.applied(x), None
                x = x + raster_to_windows(features[index].to(x.dtype), grid, cfg.window)
            x, pending = block(x, prepared.modulation[index], prepared.cross_kv[index], index, lcsa, pending)
        x = pending.applied(x)
        cache.end_step()
        x = self.head(x, prepared.head_shift, prepared.head_scale)
        pred = unpatchify_windows(x, grid, cfg.window, cfg.patch_size, cfg.out_dim)
        return noise - pred.to(noise.dtype)
