"""Typed video I/O settings from ``configs/video.toml``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from upscaler.configfiles import load_config


@dataclass(frozen=True)
class ReaderConfig:
    prefetch: int
    decoder_threads: int


@dataclass(frozen=True)
class WriterConfig:
    codec: str
    crf: int
    preset: str
    prefer_nvenc: bool
    nvenc_preset: str
    threads: int
    nice: int
    queue_frames: int
    pix_fmt: str
    odd_size_pix_fmt: str
    faststart: bool

    def __post_init__(self) -> None:
        if isinstance(self.nice, bool) or not isinstance(self.nice, int) or not 0 <= self.nice <= 19:
            raise ValueError(f"configs/video.toml [writer] nice must be a whole number from 0 to 19, got {self.nice!r}")


@dataclass(frozen=True)
class AudioConfig:
    copy_codecs: tuple[str, ...]
    reencode_codec: str
    reencode_bitrate: int


@dataclass(frozen=True)
class FitConfig:
    crf_step: int
    max_crf: int
    max_attempts: int
    headroom: float


@dataclass(frozen=True)
class VideoConfig:
    reader: ReaderConfig
    writer: WriterConfig
    audio: AudioConfig
    fit: FitConfig


@lru_cache(maxsize=1)
def video_config() -> VideoConfig:
    """The parsed ``configs/video.toml`` (read once)."""
    raw = load_config("video")
    audio = dict(raw["audio"])
    audio["copy_codecs"] = tuple(audio["copy_codecs"])
    return VideoConfig(
        reader=ReaderConfig(**raw["reader"]),
        writer=WriterConfig(**raw["writer"]),
        audio=AudioConfig(**audio),
        fit=FitConfig(**raw["fit"]),
    )
