"""Video I/O with PyAV: probe, streaming decode, background encode to MP4, fitting under a size cap."""

from upscaler.video.fit import fit_to_size
from upscaler.video.probe import VideoInfo, probe
from upscaler.video.reader import FrameReader
from upscaler.video.writer import FrameWriter

__all__ = ["FrameReader", "FrameWriter", "VideoInfo", "fit_to_size", "probe"]
