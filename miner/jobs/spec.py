"""What the scheduler sends to a worker and what comes back (picklable: file paths and URLs, never video bytes)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


class ErrorKind:
    """Short reasons carried by failed outcomes (also the ``result`` label of task metrics)."""

    INPUT = "input_error"          # corrupt, empty, zero-frame or non-video input
    OOM = "out_of_memory"
    CANCELLED = "cancelled"        # the caller went away
    DEADLINE = "deadline"          # could not finish before the caller's timeout
    TOO_LARGE = "output_too_large"
    CRASH = "worker_crash"
    REFUSED = "refused"            # admission control or a full queue
    SHUTDOWN = "shutdown"
    ERROR = "error"                # anything else (a bug): logged with a traceback


@dataclass(frozen=True)
class TaskSpec:
    """One clip to upscale on a worker: ``src`` -> ``dst`` at exactly ``width x height``."""

    task_id: str
    task_type: str
    src: str
    dst: str
    width: int
    height: int
    frames: int
    variant: str
    tile_size: int
    max_bytes: int
    deadline: float              # wall-clock (time.time()) seconds; the worker cancels past it
    crf: int
    codec: str = "hevc"
    preset: str = ""             # encoder preset ("" = configs/video.toml)
    est_seconds: float = 0.0
    attempt: int = 0
    src_url: str = ""            # where ``src`` was downloaded from
    staged_on: int = -1          # the worker that downloaded ``src`` on its own host (Ray backend; -1: this host):
                                 # another Ray actor pulls it from there, or fetches ``src_url`` if that copy is gone
    failed_peak_gib: float = 0.0  # the retry after an out-of-memory: the failed attempt's predicted peak (0: unknown);
                                  # the retry's layout is chosen below it

    @property
    def tiled(self) -> bool:
        """Whether it runs tiled: planned so, or the retry after an out-of-memory (tiled on a GPU)."""
        return self.tile_size > 0 or self.attempt > 0

    def retry_tiled(self, failed_peak_gib: float = 0.0) -> "TaskSpec":
        """The same task, second attempt: the worker tiles it in the layout that fits the memory free then and
        predicts less than ``failed_peak_gib``, the peak predicted for the attempt that ran out (0: unknown)."""
        return replace(self, attempt=self.attempt + 1, failed_peak_gib=failed_peak_gib)


@dataclass
class TaskOutcome:
    """The result of one task: ``report`` is ``UpscaleReport.as_dict()`` on success."""

    task_id: str
    ok: bool
    error_kind: str | None = None
    message: str = ""
    report: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    out_bytes: int = 0
    attempts: int = 1
    url: str = ""                # set when the worker stored the result itself (a Ray actor uploading to S3)
    predicted_peak_gib: float = 0.0  # the peak the memory model predicted for the attempt's layout (0: none planned)

    @classmethod
    def failed(cls, task_id: str, kind: str, message: str) -> "TaskOutcome":
        return cls(task_id=task_id, ok=False, error_kind=kind, message=message)
