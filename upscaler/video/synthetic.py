"""Generated input clips for benchmarks and start-up warm-ups (no files needed)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_test_clip(path: str | Path, width: int, height: int, frames: int, fps: int = 30) -> Path:
    """An H.264 yuv420p clip with moving structure (gradients, a grating, grain) at ``width x height``."""
    path = Path(path)
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    grain = rng.integers(0, 24, size=(height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(frames):
            r = (xs * 0.5 + i * 3) % 256
            g = 128 + 100 * np.sin((xs + ys + i * 4) / 9.0)
            b = (ys * 0.7 + i * 2) % 256
            rgb = np.stack([r, g, b], -1).astype(np.uint8) + grain
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path
