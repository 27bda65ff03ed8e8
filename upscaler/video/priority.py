"""Lowering the CPU priority of one thread (and of the threads it starts), for the video encoder.

x265 and x264 start their worker pools from the thread that opens the codec, and on Linux a new thread
inherits its creator's nice value. So the encoder thread raising its own nice value before its first frame
puts the whole encoder below the threads that keep the GPU busy (the one that launches its work and the
decoder that feeds it), which otherwise wait for cores behind the encoder's workers when the encoder has
work for every core (1080p output). Under no contention nothing changes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger(__name__)


def lower_thread_priority(steps: int) -> None:
    """Raise the calling thread's nice value by ``steps`` (0: leave it). Linux only (elsewhere the nice value
    belongs to the process); a refusal is logged and ignored."""
    if steps <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + steps)
    except OSError as exc:
        log.warning("could not lower the encoder thread's priority (nice +%d): %s; it runs at the process's", steps, exc)
