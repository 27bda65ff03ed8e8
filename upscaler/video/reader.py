"""Streaming decode: RGB frames from a video, decoded ahead in a background thread."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Iterator, Literal

import av
import numpy as np
import torch

from upscaler.errors import InputVideoError
from upscaler.video.channel import Channel, ChannelAborted
from upscaler.video.config import video_config
from upscaler.video.probe import open_input

log = logging.getLogger(__name__)


class FrameReader:
    """Iterate a video's frames as ``uint8 (H, W, 3)`` RGB arrays (or CPU tensors).

    A background thread decodes up to ``prefetch`` frames ahead into a bounded queue, so decoding
    overlaps the consumer's work and memory stays bounded. Decoder errors surface in the consumer
    as :class:`InputVideoError`, as do a video with no decodable frame and a frame size that changes
    mid-stream. Any pixel format and size (odd sizes included) is converted to packed RGB. One pass
    only; :meth:`close` (or leaving a ``with`` block) stops the thread early.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        prefetch: int | None = None,
        output: Literal["numpy", "torch"] = "numpy",
    ) -> None:
        cfg = video_config().reader
        self.path = Path(path)
        self.output = output
        self._channel: Channel[np.ndarray] = Channel(prefetch if prefetch is not None else cfg.prefetch)
        self._threads = cfg.decoder_threads
        self._thread: threading.Thread | None = None
        self.frames_read = 0

    def _decode(self) -> None:
        name = self.path.name
        try:
            container, stream = open_input(self.path)
        except InputVideoError as exc:
            self._channel.close(exc)
            return
        try:
            with container:
                stream.thread_type = "AUTO"
                if self._threads:
                    stream.codec_context.thread_count = self._threads
                size: tuple[int, int] | None = None
                for index, frame in enumerate(container.decode(stream)):
                    size = size or (frame.width, frame.height)
                    if (frame.width, frame.height) != size:
                        raise InputVideoError(f"{name}: frame {index} is {frame.width}x{frame.height}, the video "
                                              f"started at {size[0]}x{size[1]} (a size change mid-stream is not supported)")
                    if not self._channel.put(frame.to_ndarray(format="rgb24")):
                        return
            self._channel.close()
        except av.FFmpegError as exc:
            self._channel.close(InputVideoError(f"cannot decode {name}: {exc.__class__.__name__}: {exc}"))
        except Exception as exc:  # anything else still has to reach the consumer
            self._channel.close(exc)

    def __iter__(self) -> Iterator[np.ndarray] | Iterator[torch.Tensor]:
        if self._thread is not None:
            raise RuntimeError("FrameReader can be iterated only once")
        self._thread = threading.Thread(target=self._decode, name=f"decode-{self.path.name}", daemon=True)
        self._thread.start()
        try:
            for array in self._channel:
                self.frames_read += 1
                yield torch.from_numpy(array) if self.output == "torch" else array
        except ChannelAborted:
            return
        finally:
            self.close()
        if self.frames_read == 0:
            raise InputVideoError(f"{self.path.name} has no decodable video frames")
        log.debug("decoded %d frames from %s", self.frames_read, self.path.name)

    @property
    def wait_s(self) -> float:
        """Seconds the consumer has waited for a decoded frame (decoding fell behind)."""
        return self._channel.wait_s

    def close(self) -> None:
        """Stop the decoding thread and release the file."""
        self._channel.abort()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
