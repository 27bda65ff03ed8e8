"""Reference clip content: procedural scenes with real structure, or cuts of the user's own videos.

A procedural scene is a large world image (multi-scale noise texture, gratings, checkerboards, hard-edged
shapes, text blocks, colour gradients) seen through a camera that pans across it, with textured sprites
moving and rotating on top and a frame counter. Everything is deterministic for a given seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch
import torch.nn.functional as F

from miner.mock_validator.font import stamp, text_mask


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Noise in [0, 1) with features about ``cell`` pixels wide (a bicubically upsampled random grid)."""
    grid = torch.from_numpy(rng.random((1, 1, h // cell + 3, w // cell + 3), dtype=np.float32))
    up = F.interpolate(grid, scale_factor=cell, mode="bicubic", align_corners=False)[0, 0, :h, :w]
    return up.clamp(0, 1).numpy()


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Multi-scale noise, octaves from 1/4 of the height down to 2 pixels, normalised to [0, 1]."""
    out = np.zeros((h, w), np.float32)
    cell, amp = max(h // 4, 2), 1.0
    while cell >= 2:
        out += amp * _smooth_noise(rng, h, w, cell)
        cell, amp = cell // 2, amp * 0.8
    out -= out.min()
    return out / max(float(out.max()), 1e-6)


class ProceduralScene:
    """Frames of a camera panning over a structured world, with moving sprites and a frame counter."""

    def __init__(self, width: int, height: int, fps: int, seconds: float, *, seed: int,
                 pan_widths_per_s: float, sprites: int, text: str) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.frames = int(round(seconds * fps))
        self.rng = np.random.default_rng(seed)
        self.pan = pan_widths_per_s * width / fps                      # pixels per frame
        self.margin = max(height // 24, 2)                         # vertical camera sway
        self.world = self._world(height + 2 * self.margin, width + int(math.ceil(self.pan * self.frames)) + 1, text)
        self.sprites = [self._sprite() for _ in range(sprites)]
        self.text_scale = max(height // 120, 1)

    def _world(self, h: int, w: int, text: str) -> np.ndarray:
        rng = self.rng
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        c0, c1, c2 = (rng.random(3, dtype=np.float32) for _ in range(3))
        gx, gy = xx / w, yy / h
        world = c0 * (1 - gx)[..., None] + c1 * gx[..., None]
        world = world * 0.6 + 0.4 * (c2 * gy[..., None])
        tex = _texture(rng, h, w)
        tint = rng.random(3, dtype=np.float32)
        world = world * 0.55 + 0.45 * tex[..., None] * (0.5 + tint)
        unit = max(h // 10, 8)
        for _ in range(max(w // unit, 4)):                  # patches of fine structure and hard edges
            ph, pw = int(rng.integers(unit, 3 * unit)), int(rng.integers(unit, 3 * unit))
            y, x = int(rng.integers(0, h - ph)), int(rng.integers(0, w - pw))
            kind = int(rng.integers(0, 4))
            py, px = yy[y:y + ph, x:x + pw] - y, xx[y:y + ph, x:x + pw] - x
            colour = rng.random(3, dtype=np.float32)
            if kind == 0:                                          # grating, random period and angle
                period, angle = float(rng.uniform(2.5, unit / 2)), float(rng.uniform(0, math.pi))
                wave = 0.5 + 0.5 * np.sin(2 * math.pi * (px * math.cos(angle) + py * math.sin(angle)) / period)
                world[y:y + ph, x:x + pw] = wave[..., None] * colour + (1 - wave[..., None]) * (1 - colour)
            elif kind == 1:                                        # checkerboard
                cell = int(rng.integers(2, max(unit // 4, 3)))
                board = ((px // cell + py // cell) % 2)[..., None]
                world[y:y + ph, x:x + pw] = board * colour + (1 - board) * 0.1
            elif kind == 2:                                        # filled disc with a hard edge
                r = min(ph, pw) / 2
                inside = ((px - pw / 2) ** 2 + (py - ph / 2) ** 2) < r * r
                world[y:y + ph, x:x + pw][inside] = colour
            else:                                                  # text block on a light card
                world[y:y + ph, x:x + pw] = 0.92
                scale = max(ph // 45, 1)
                per_row = max(pw // (6 * scale) - 1, 1)
                rows = [text[i:i + per_row] for i in range(0, len(text), per_row)]
                canvas = world[y:y + ph, x:x + pw]
                for row, line in enumerate(rows):
                    mask = text_mask(line, scale)
                    stamp(canvas, mask, 2 * scale, 2 * scale + row * 9 * scale, tuple(colour * 0.5))
        return (np.clip(world, 0, 1) * 255).astype(np.uint8)

    def _sprite(self) -> dict[str, float | np.ndarray]:
        rng = self.rng
        return {"r": float(rng.uniform(0.05, 0.14) * self.height), "fx": float(rng.uniform(0.1, 0.6)),
                "fy": float(rng.uniform(0.1, 0.6)), "phase": float(rng.uniform(0, 2 * math.pi)),
                "spin": float(rng.uniform(-3, 3)), "spokes": float(rng.integers(4, 12)),
                "colour": rng.random(3, dtype=np.float32) * 255}

    def _draw_sprite(self, frame: np.ndarray, sprite: dict, t: float) -> None:
        r = sprite["r"]
        cx = (0.5 + 0.4 * math.sin(2 * math.pi * sprite["fx"] * t + sprite["phase"])) * self.width
        cy = (0.5 + 0.4 * math.cos(2 * math.pi * sprite["fy"] * t + sprite["phase"])) * self.height
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, self.width)
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, self.height)
        if x0 >= x1 or y0 >= y1:
            return
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = xx - cx, yy - cy
        dist = np.sqrt(dx * dx + dy * dy)
        inside = dist < r
        angle = np.arctan2(dy, dx) + sprite["spin"] * t
        spokes = 0.5 + 0.5 * np.sign(np.sin(sprite["spokes"] * angle))
        rings = 0.5 + 0.5 * np.cos(dist / max(r / 6, 1) * math.pi)
        shade = (0.35 + 0.65 * spokes * (0.6 + 0.4 * rings))[..., None]
        patch = frame[y0:y1, x0:x1]
        patch[inside] = (shade * sprite["colour"])[inside].astype(np.uint8)

    def __iter__(self) -> Iterator[np.ndarray]:
        for index in range(self.frames):
            t = index / self.fps
            x = int(round(index * self.pan))
            y = self.margin + int(round(self.margin * math.sin(2 * math.pi * 0.3 * t)))
            frame = self.world[y:y + self.height, x:x + self.width].copy()
            for sprite in self.sprites:
                self._draw_sprite(frame, sprite, t)
            counter = text_mask(f"FRAME {index:04d}", self.text_scale)
            frame[:counter.shape[0] + 8, :counter.shape[1] + 8] //= 4
            stamp(frame, counter, 4, 4, (255, 255, 255))
            yield frame


def source_frames(path: Path, width: int, height: int, fps: int, seconds: float,
                  rng: np.random.Generator) -> Iterator[np.ndarray]:
    """``seconds`` of ``path`` from a random start, resampled to ``fps`` (latest frame at each tick, like
    ``ffmpeg -r``), scaled to cover ``width`` x ``height`` and centre-cropped; RGB uint8 frames."""
    frames = int(round(seconds * fps))
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base) if stream.duration else float(container.duration or 0) / 1e6
        start = float(rng.uniform(0, max(duration - seconds, 0.0)))
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream, backward=True)
        scale = max(width / stream.codec_context.width, height / stream.codec_context.height)
        sw, sh = max(width, round(stream.codec_context.width * scale)), max(height, round(stream.codec_context.height * scale))
        ox, oy = (sw - width) // 2, (sh - height) // 2
        emitted, last = 0, None
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            ts = float(frame.pts * stream.time_base)
            if ts < start:
                continue
            rgb = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="BICUBIC").to_ndarray()
            last = rgb[oy:oy + height, ox:ox + width]
            while emitted < frames and start + emitted / fps <= ts + 0.5 / fps:
                yield last
                emitted += 1
            if emitted >= frames:
                return
        while last is not None and emitted < frames:                 # source shorter than the clip: hold the last frame
            yield last
            emitted += 1
