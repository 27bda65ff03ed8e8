"""Token layout helpers: the DiT keeps its tokens in LCSA *window order* between patchify and head.

Window order groups the (f, h, w) patch grid into 3D windows of ``window`` = (2, 8, 8) tokens: windows
are ordered by (time, row, column) and tokens inside a window by (time, row, column), exactly as
FlashVSR's ``WindowPartition3D.partition`` followed by its flattening. Every DiT op except attention
is per token, so permuting once after patchify (and back once after the head) is exact.
"""

from __future__ import annotations

import torch

Grid = tuple[int, int, int]


def check_grid(grid: Grid, window: Grid) -> None:
    """Raise ``ValueError`` unless the patch grid divides into whole windows."""
    if any(g % w for g, w in zip(grid, window)):
        raise ValueError(
            f"patch grid (f, h, w)={grid} must be a multiple of the LCSA window {window}; "
            "the model input must be a multiple of 128 pixels in height and width"
        )


def channels_first_to_windows(x: torch.Tensor, window: Grid) -> torch.Tensor:
    """``(B, C, f, h, w)`` -> ``(B, f*h*w, C)`` tokens in window order (one copy)."""
    b, c, f, h, w = x.shape
    wf, wh, ww = window
    x = x.view(b, c, f // wf, wf, h // wh, wh, w // ww, ww)
    return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, f * h * w, c)


def raster_to_windows(x: torch.Tensor, grid: Grid, window: Grid) -> torch.Tensor:
    """``(B, f*h*w, C)`` tokens in raster (f, h, w) order -> window order (one copy)."""
    b, _, c = x.shape
    f, h, w = grid
    wf, wh, ww = window
    x = x.view(b, f // wf, wf, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b, f * h * w, c)


def windows_to_raster(x: torch.Tensor, grid: Grid, window: Grid) -> torch.Tensor:
    """Inverse of :func:`raster_to_windows`."""
    b, _, c = x.shape
    f, h, w = grid
    wf, wh, ww = window
    x = x.view(b, f // wf, h // wh, w // ww, wf, wh, ww, c)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, f * h * w, c)


def unpatchify_windows(x: torch.Tensor, grid: Grid, window: Grid, patch: Grid, channels: int) -> torch.Tensor:
    """Head output ``(B, L, pf*ph*pw*C)`` in window order -> ``(B, C, f*pf, h*ph, w*pw)`` (one copy).

    The per-token channel layout is ``(pf, ph, pw, C)`` as in Wan's ``unpatchify``.
    """
    b = x.shape[0]
    f, h, w = grid
    wf, wh, ww = window
    pf, ph, pw = patch
    x = x.view(b, f // wf, h // wh, w // ww, wf, wh, ww, pf, ph, pw, channels)
    # -> (b, C, nf, wf, pf, nh, wh, ph, nw, ww, pw)
    x = x.permute(0, 10, 1, 4, 7, 2, 5, 8, 3, 6, 9)
    return x.reshape(b, channels, f * pf, h * ph, w * pw)


def window_positions(grid: Grid, window: Grid, device: torch.device | str) -> torch.Tensor:
    """``(L, 3)`` long tensor of each window-ordered token's (t, y, x) grid position."""
    f, h, w = grid
    t_idx, y_idx, x_idx = torch.meshgrid(
        torch.arange(f, device=device), torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    raster = torch.stack([t_idx, y_idx, x_idx], dim=-1).reshape(1, f * h * w, 3)
    return raster_to_windows(raster, grid, window)[0]
