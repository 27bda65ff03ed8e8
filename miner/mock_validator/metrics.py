"""Full-reference quality metrics on luma (PSNR, SSIM, VMAF) and ffmpeg-signalstats-style plane statistics."""

from __future__ import annotations

import logging
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SSIM_SIGMA, SSIM_SIZE = 1.5, 11
SSIM_C1, SSIM_C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
PSNR_CAP = 100.0  # identical frames


def pick_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def psnr(ref: torch.Tensor, dist: torch.Tensor) -> float:
    """Mean per-frame PSNR (dB) of ``(N, 1, H, W)`` luma in [0, 255]; identical frames count as 100 dB."""
    mse = ((ref - dist) ** 2).flatten(1).mean(1)
    values = torch.where(mse > 0, 10 * torch.log10(255.0 ** 2 / mse.clamp_min(1e-12)), torch.full_like(mse, PSNR_CAP))
    return float(values.clamp(max=PSNR_CAP).mean())


def _gauss_window(device: torch.device) -> torch.Tensor:
    x = torch.arange(SSIM_SIZE, dtype=torch.float32, device=device) - SSIM_SIZE // 2
    g = torch.exp(-(x ** 2) / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()


def ssim(ref: torch.Tensor, dist: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, valid region) of ``(N, 1, H, W)`` luma."""
    g = _gauss_window(ref.device)
    gh, gv = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, gh), gv)

    mu_x, mu_y = blur(ref), blur(dist)
    sxx = blur(ref * ref) - mu_x ** 2
    syy = blur(dist * dist) - mu_y ** 2
    sxy = blur(ref * dist) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * sxy + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (sxx + syy + SSIM_C2)
    return float((num / den).mean())


@lru_cache(maxsize=4)
def _vmaf_model(device: str) -> torch.nn.Module | None:
    try:
        from vmaf_torch import VMAF
    except ImportError:
        log.warning("vmaf-torch is not installed (pip install -e .[score]); VMAF is skipped")
        return None
    return VMAF(temporal_pooling=True, clip_score=True).to(device).eval()


def vmaf_available() -> bool:
    """Whether the optional ``vmaf-torch`` package can be imported."""
    return _vmaf_model("cpu") is not None


@torch.no_grad()
def vmaf(ref: torch.Tensor, dist: torch.Tensor) -> float | None:
    """VMAF (v0.6.1 model, vmaf-torch) of ``(N, 1, H, W)`` luma in [0, 255]; None without the package."""
    model = _vmaf_model(str(ref.device))
    if model is None:
        return None
    return float(model(ref, dist))


def saturation_average(u: np.ndarray, v: np.ndarray) -> float:
    """signalstats ``SATAVG``: mean of ``floor(hypot(U - 128, V - 128))`` over the chroma plane (8-bit)."""
    sat = np.floor(np.hypot(u.astype(np.float32) - 128.0, v.astype(np.float32) - 128.0))
    return float(sat.mean())


def luma_average(y: np.ndarray) -> float:
    """signalstats ``YAVG``: mean luma (8-bit)."""
    return float(y.mean(dtype=np.float64))


def finite_or_none(value: float | None) -> float | None:
    """``value`` rounded for reports; None for missing or non-finite values."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, 4)
