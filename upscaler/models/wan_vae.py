"""The Wan2.1 VAE decoder (FlashVSR's "Full" decoder) as a causal streaming module.

Key names are those of ``Wan2.1_VAE.pth`` restricted to the decoder: ``conv2.*`` (the 1x1x1 conv
applied to the latents) and ``decoder.*`` (``Decoder3d``: ``conv1``, ``middle.{0,1,2}``,
``upsamples.N``, ``head.{0,2}``). The file also holds ``encoder.*`` and ``conv1.*``, which decoding
never uses: :func:`classify_vae_key` tells a loader which keys are which.

Streaming follows the reference's per-latent ``feat_cache`` decode: every temporal causal conv
carries its last two input frames, and each time-upsampling ``Resample`` passes the very first
frame of the stream through without time doubling, so the first latent gives 1 frame and every
later latent gives 4. Here a whole chunk (in bounded frame groups) goes through each layer at once,
which gives the same frames as the reference's one-latent-at-a-time loop.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from upscaler.models.causal_conv import CausalConv3d
from upscaler.models.config import VAEDecoderConfig
from upscaler.models.frame_groups import StageShape, group_sizes, preferred_format, run_in_frame_groups, zeros_as
from upscaler.models.upsampled_conv import UpsampledConv

logger = logging.getLogger(__name__)

DECODER_PREFIXES = ("decoder.", "conv2.")
"""Key prefixes of ``Wan2.1_VAE.pth`` that :class:`WanVAEDecoder` loads."""
UNUSED_PREFIXES = ("encoder.", "conv1.")
"""Key prefixes of ``Wan2.1_VAE.pth`` that are expected in the file but not used for decoding."""

# Per-channel statistics of the Wan2.1 VAE latent space (part of the model, not of the file).
LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
DEFAULT_FRAMES_PER_PASS = 4


def classify_vae_key(key: str) -> str:
    """``"decoder"`` for keys :class:`WanVAEDecoder` loads, ``"unused"`` for the encoder part of
    ``Wan2.1_VAE.pth``, ``"unknown"`` for anything else (a strict loader rejects those)."""
    if key.startswith(DECODER_PREFIXES):
        return "decoder"
    if key.startswith(UNUSED_PREFIXES):
        return "unused"
    return "unknown"


class RMSNorm(nn.Module):
    """L2 normalisation over channels times ``sqrt(dim) * gamma`` (Wan ``RMS_norm``, no bias)."""

    def __init__(self, dim: int, images: bool) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """Two (RMSNorm, SiLU, causal 3x3x3 conv) layers plus a shortcut."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False),
            nn.SiLU(),
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False),
            nn.SiLU(),
            nn.Dropout(0.0),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, caches: dict[int, torch.Tensor]) -> torch.Tensor:
        shortcut = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, caches) if isinstance(layer, CausalConv3d) else layer(x)
        return x.add_(shortcut)


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention within each frame."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, caches: dict[int, torch.Tensor]) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        qkv = self.to_qkv(self.norm(frames)).reshape(b * t, 1, c * 3, h * w).transpose(2, 3)
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(attended.squeeze(1).transpose(1, 2).reshape(b * t, c, h, w))
        return out.reshape(b, t, c, h, w).transpose(1, 2).add_(x)


class Resample(nn.Module):
    """2x spatial upsampling (nearest, then a 3x3 conv halving the channels), preceded in
    ``upsample3d`` mode by a causal time conv that doubles every frame but the stream's first.

    The reference's ``resample.0`` is ``nn.Upsample(mode="nearest-exact")``, which at an integer scale
    of 2 is plain nearest; so ``resample.1`` is an :class:`UpsampledConv` that computes the conv of the
    upsampled frames from the frames themselves, and ``resample.0`` is a parameter-free placeholder
    (the checkpoint keys stay ``resample.1.weight`` / ``.bias``).
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d"):
            raise ValueError(f"decoder Resample mode must be upsample2d or upsample3d, got {mode!r}")
        self.mode = mode
        self.resample = nn.Sequential(nn.Identity(), UpsampledConv(dim, dim // 2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, caches: dict[int, torch.Tensor]) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._double_time(x, caches)
        b, c, t, h, w = x.shape
        # The (B*T, C, H, W) frames, copied once into channels-last with canonical strides (a reshaped view of
        # one frame can carry a batch stride that makes PyTorch pick NCHW): the layout of the phase conv on
        # CUDA, where UpsampledConv keeps its weight channels-last, and of the Triton interleave's input.
        frames = torch.empty((b * t, c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        frames.view(b, t, c, h, w).copy_(x.transpose(1, 2))
        conv = self.resample[1]
        # Written straight into the contiguous (B, C, T, H, W) layout the 3D convs run in (a channels-last
        # result would turn the following causal convs channels_last_3d, which runs slower).
        out = torch.empty((b, conv.out_channels, t, 2 * h, 2 * w), dtype=x.dtype, device=x.device)
        for i in range(b):
            conv(frames[i * t:(i + 1) * t], out=out[i].transpose(0, 1))
        return out

    def _double_time(self, x: torch.Tensor, caches: dict[int, torch.Tensor]) -> torch.Tensor:
        # The stream's first frame bypasses the time conv, whose history then starts as zeros.
        first = None
        if self.time_conv.cache_slot not in caches:
            first, x = x[:, :, :1], x[:, :, 1:]
            b, c, _, h, w = first.shape
            caches[self.time_conv.cache_slot] = zeros_as(x, (b, c, self.time_conv.history, h, w))
            if x.shape[2] == 0:
                return first
        b, c, t, h, w = x.shape
        doubled = self.time_conv(x, caches).reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return doubled if first is None else torch.cat([first, doubled], dim=2)


class Decoder3d(nn.Module):
    """Wan2.1 VAE ``Decoder3d`` layout (``attn_scales`` empty, as in Wan2.1)."""

    def __init__(self, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        # ``cfg.temperal_upsample`` lists the VAE's temporal scaling in encoder order, as the
        # reference's ``VideoVAE_(temperal_downsample=[False, True, True])``; the decoder walks it
        # backwards, so its first two upsampling stages double the frames (time_conv keys at
        # ``upsamples.3`` and ``upsamples.7`` in Wan2.1_VAE.pth).
        temporal = cfg.temperal_upsample[::-1]
        mult = cfg.dim_mult
        dims = [cfg.dim * u for u in (mult[-1], *mult[::-1])]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]), ResidualBlock(dims[0], dims[0]))
        upsamples: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2
            for _ in range(cfg.num_res_blocks + 1):
                upsamples.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(mult) - 1:
                upsamples.append(Resample(out_dim, "upsample3d" if temporal[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*upsamples)
        self.head = nn.Sequential(RMSNorm(dims[-1], images=False), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))


@dataclass
class WanVAEState:
    """Everything one stream carries between ``decode`` calls: the causal conv caches by slot."""

    frames_per_pass: int = DEFAULT_FRAMES_PER_PASS
    caches: dict[int, torch.Tensor] = field(default_factory=dict)


class WanVAEDecoder(nn.Module):
    """Decoder half of the Wan2.1 VAE with the key names of ``Wan2.1_VAE.pth``; streaming ``decode``."""

    def __init__(self, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)
        self.register_buffer("latent_mean", torch.tensor(LATENT_MEAN).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("latent_inv_std", 1.0 / torch.tensor(LATENT_STD).view(1, -1, 1, 1, 1), persistent=False)
        if cfg.z_dim != len(LATENT_MEAN):
            raise ValueError(f"the Wan2.1 latent statistics have {len(LATENT_MEAN)} channels, config z_dim={cfg.z_dim}")
        cached = [m for m in self.modules() if isinstance(m, CausalConv3d) and m.history]
        for slot, conv in enumerate(cached):
            conv.cache_slot = slot
        self._stages, self._stage_shapes = self._plan_stages()

    def _plan_stages(self) -> tuple[list[list[nn.Module]], list[StageShape]]:
        """Split the layer chain after every ``Resample`` (where frame count or resolution grows)."""
        dec = self.decoder
        stages: list[list[nn.Module]] = [[dec.conv1, *dec.middle]]
        time_mults: list[int] = []
        for layer in dec.upsamples:
            stages[-1].append(layer)
            if isinstance(layer, Resample):
                time_mults.append(2 if layer.mode == "upsample3d" else 1)
                stages.append([])
        stages[-1].extend(dec.head)
        time_mults.append(1)
        shapes = []
        for i, (layers, time_mult) in enumerate(zip(stages, time_mults)):
            widest = max(m.out_channels for layer in layers for m in layer.modules() if isinstance(m, nn.Conv2d | nn.Conv3d))
            shapes.append(StageShape(time_mult, 4 ** min(i + 1, len(stages) - 1), widest))
        return stages, shapes

    def new_state(self, *, frames_per_pass: int = DEFAULT_FRAMES_PER_PASS) -> WanVAEState:
        """A fresh stream; ``frames_per_pass`` bounds the output frames one full-resolution pass holds."""
        if frames_per_pass < 1:
            raise ValueError(f"frames_per_pass must be >= 1, got {frames_per_pass}")
        return WanVAEState(frames_per_pass=frames_per_pass)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, state: WanVAEState) -> torch.Tensor:
        """Decode ``latents (B, 16, t, h, w)`` into ``(B, 3, n, 8h, 8w)`` frames clamped to [-1, 1]:
        ``n = 4t - 3`` on a stream's first call, ``4t`` after."""
        param = self.conv2.weight
        z = latents.to(device=param.device, dtype=param.dtype)
        z = z / self.latent_inv_std.to(z.dtype) + self.latent_mean.to(z.dtype)
        x = self.conv2(z)
        x = x.contiguous(memory_format=preferred_format(x))
        stages = [partial(self._run_stage, layers=layers, caches=state.caches) for layers in self._stages]
        sizes = group_sizes(self._stage_shapes, state.frames_per_pass)
        if not state.caches:
            logger.debug("wan vae stream started: %d latent frames, frame groups per stage %s", z.shape[2], sizes)
        frames = run_in_frame_groups(x, stages, sizes, dim=2)
        return frames.clamp_(-1, 1).contiguous()

    @staticmethod
    def _run_stage(x: torch.Tensor, layers: list[nn.Module], caches: dict[int, torch.Tensor]) -> torch.Tensor:
        for layer in layers:
            if isinstance(layer, (ResidualBlock, AttentionBlock, Resample, CausalConv3d)):
                x = layer(x, caches)
            else:
                x = layer(x)
        return x
