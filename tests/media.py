"""Test media generated with PyAV: small clips with a moving pattern, optional audio, and broken files.

Every helper writes a real file and returns its path, e.g.::

    clip = make_clip(tmp_path / "in.mp4", width=64, height=48, frames=12, fps=Fraction(30000, 1001), audio=True)
    broken = make_corrupt(tmp_path / "bad.mp4")

Odd sizes are encoded as yuv444p (4:2:0 needs even sizes), which also exercises non-yuv420p input.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 16000


def pattern_frame(index: int, width: int, height: int) -> np.ndarray:
    """Frame ``index`` of a deterministic moving pattern: smooth colour gradients plus a bright square
    that moves two pixels per frame. ``uint8 (height, width, 3)`` RGB."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = index * 0.15
    red = 0.5 + 0.4 * np.sin(2 * np.pi * (xs + phase))
    green = 0.5 + 0.4 * np.cos(2 * np.pi * (ys - phase))
    blue = 0.3 + 0.4 * xs * ys
    frame = np.stack(np.broadcast_arrays(red, green, blue), axis=-1)
    side = max(2, min(width, height) // 4)
    x0 = (2 * index) % max(1, width - side)
    y0 = (index) % max(1, height - side)
    frame[y0 : y0 + side, x0 : x0 + side] = (0.95, 0.95, 0.9)
    return np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _tone(start: int, count: int, channels: int) -> np.ndarray:
    """A 440 Hz tone, samples ``[start, start + count)``, as planar float32 ``(channels, count)``."""
    t = (np.arange(start, start + count, dtype=np.float64)) / AUDIO_RATE
    wave = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    return np.repeat(wave[None, :], channels, axis=0)


def _add_audio(container: av.container.OutputContainer, codec: str) -> av.audio.stream.AudioStream:
    stream = container.add_stream(codec, rate=AUDIO_RATE)
    stream.layout = "mono"
    return stream


def _audio_frames(stream: av.audio.stream.AudioStream, seconds: float) -> list[av.AudioFrame]:
    """Audio frames covering ``seconds`` in the encoder's sample format and frame size."""
    total = int(round(seconds * AUDIO_RATE))
    size = stream.codec_context.frame_size or 1024
    fmt = stream.codec_context.format.name
    frames = []
    for start in range(0, total, size):
        count = min(size, total - start)
        samples = _tone(start, count, 1)
        if fmt == "s16":
            frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16), format="s16", layout="mono")
        elif fmt == "fltp":
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        else:
            raise ValueError(f"test audio encoder wants unsupported sample format {fmt}")
        frame.sample_rate = AUDIO_RATE
        frame.pts = start
        frames.append(frame)
    return frames


def make_clip(
    path: str | Path,
    *,
    width: int = 64,
    height: int = 48,
    frames: int = 10,
    fps: Fraction | int = 30,
    audio: bool = False,
    audio_codec: str = "aac",
    codec: str = "libx264",
    pix_fmt: str | None = None,
) -> Path:
    """Write a clip of ``frames`` pattern frames; ``audio=True`` adds a mono tone as long as the video.

    The container follows the suffix (``.mp4``, ``.mkv``, ``.mov``). ``pix_fmt`` defaults to
    yuv420p for even sizes and yuv444p for odd ones.
    """
    path = Path(path)
    fps = Fraction(fps)
    if pix_fmt is None:
        pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.codec_context.options = {"preset": "ultrafast"} if codec in ("libx264", "libx265") else {}
        sound = _add_audio(container, audio_codec) if audio else None
        sound_frames = _audio_frames(sound, frames / fps) if sound is not None else []
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(pattern_frame(index, width, height), format="rgb24")
            frame.pts = index
            frame.time_base = 1 / fps
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            for frame in sound_frames:
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def make_zero_frame(path: str | Path, *, width: int = 64, height: int = 48) -> Path:
    """An MP4 written with a video stream and no frames (the header and an empty index only)."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=30)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        container.start_encoding()
        container.mux(video.encode(None))
    return path


def make_size_change(path: str | Path, sizes: tuple[tuple[int, int], ...] = ((64, 48), (80, 48)),
                     frames: int = 5) -> Path:
    """A raw H.264 stream whose frame size changes mid-stream: one encoded stream per size, concatenated
    (decoders follow the new parameter sets), ``frames`` frames of each."""
    path = Path(path)
    with path.open("wb") as out:
        for width, height in sizes:
            part = path.with_suffix(f".{width}x{height}.h264")
            with av.open(str(part), "w", format="h264") as container:
                video = container.add_stream("libx264", rate=30)
                video.width, video.height, video.pix_fmt = width, height, "yuv420p"
                for index in range(frames):
                    frame = av.VideoFrame.from_ndarray(pattern_frame(index, width, height), format="rgb24")
                    container.mux(video.encode(frame))
                container.mux(video.encode(None))
            out.write(part.read_bytes())
            part.unlink()
    return path


def make_corrupt(path: str | Path) -> Path:
    """A valid clip whose bytes after the first 64 are overwritten with noise (header and payload broken)."""
    path = Path(path)
    make_clip(path, frames=8)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    data[64:] = rng.integers(0, 256, len(data) - 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def make_truncated(path: str | Path, keep: float = 0.5) -> Path:
    """A valid clip cut after ``keep`` of its bytes (an interrupted download)."""
    path = Path(path)
    make_clip(path, frames=12)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def make_text_file(path: str | Path) -> Path:
    """A plain text file (typically named ``*.mp4``)."""
    path = Path(path)
    path.write_text("this is not a video\n" * 20)
    return path


def make_audio_only(path: str | Path, seconds: float = 0.5) -> Path:
    """An M4A-like MP4 holding only an AAC audio stream."""
    path = Path(path)
    with av.open(str(path), "w", format="mp4") as container:
        sound = _add_audio(container, "aac")
        for frame in _audio_frames(sound, seconds):
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    return path
