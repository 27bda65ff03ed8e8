"""A clip's input: downloaded under the ``[fetch]`` limits and probed, because admission needs its size and
frame count before the clip may take a GPU. The same code runs on the miner's host (local workers) and in
a Ray actor (the clip is downloaded once, on a GPU host: :meth:`miner.jobs.scheduler.Scheduler.stage_input`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from miner.fetch import Fetcher, FetchError
from miner.jobs.spec import ErrorKind
from upscaler.errors import InputVideoError
from upscaler.video import VideoInfo, probe

INPUT_NAME = "input.mp4"  # the downloaded clip's file name in its task folder, on any host


class InputFailed(Exception):
    """The clip could not be downloaded or read; ``kind`` is the clip's error kind (``download_<reason>``,
    ``input_error``, or a worker's loss while it downloaded)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message


async def fetch_input(fetcher: Fetcher, url: str, dest: Path) -> VideoInfo:
    """Download ``url`` into ``dest`` and probe it; raises :class:`InputFailed`."""
    try:
        fetched = await fetcher.fetch(url, dest)
        info = await asyncio.to_thread(probe, fetched.path, fetcher.settings.max_frame_pixels)
    except FetchError as exc:
        raise InputFailed(f"download_{exc.kind}", str(exc)) from None
    except InputVideoError as exc:
        raise InputFailed(ErrorKind.INPUT, str(exc)) from None
    except Exception as exc:  # a probe of garbage may raise a decoder's own error type
        raise InputFailed(ErrorKind.INPUT, f"cannot read the video: {exc.__class__.__name__}: {exc}") from None
    if info.frames <= 0:
        raise InputFailed(ErrorKind.INPUT, "the video has no frames")
    return info
