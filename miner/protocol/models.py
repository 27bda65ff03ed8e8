"""Pydantic v2 models of the Vidaio synapses, field for field as ``vidaio_subnet_core/protocol.py``.

Each synapse carries the bittensor-10 ``Synapse`` envelope (``name``, ``timeout``, ``total_size``,
``header_size``, ``dendrite``/``axon`` terminal info, ``computed_body_hash``) in the same field order,
so ``synapse.model_dump(mode="json")`` is the JSON body a bittensor 10.1.0 dendrite sends and the
JSON a dendrite parses back. Payload and response models keep both the list fields and the legacy
scalar fields (``reference_video_url``, ``task_type``, ``optimized_video_url``) in sync the way
Vidaio's validators do.

    synapse = VideoUpscalingProtocol(miner_payload={"reference_video_urls": [a, b], "task_types": ["SD2HD"] * 2})
    synapse.miner_response = MinerResponse(optimized_video_urls=[x, y])   # optimized_video_url == x
"""

from __future__ import annotations

import time
from enum import IntEnum
from typing import Annotated, Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, model_validator

MAX_CLIPS = 64          # URLs per request: Vidaio sends a handful; bounds the work one request can ask for
Url = Annotated[str, StringConstraints(max_length=4096)]
Name = Annotated[str, StringConstraints(max_length=256)]


class TerminalInfo(BaseModel):
    """One end of a call (the ``dendrite`` caller or the ``axon`` receiver), as bittensor 10 has it."""

    model_config = ConfigDict(validate_assignment=True)

    status_code: Optional[int] = None
    status_message: Optional[str] = None
    process_time: Optional[float] = None
    ip: Optional[str] = None
    port: Optional[int] = None
    version: Optional[int] = None
    nonce: Optional[int] = None
    uuid: Optional[str] = None
    hotkey: Optional[str] = None
    signature: Optional[str] = None


class Synapse(BaseModel):
    """The bittensor-10 synapse envelope; subclasses add the Vidaio fields.

    ``required_hash_fields`` names the fields the body hash covers (none for every Vidaio synapse,
    so their body hash is the SHA3-256 of the empty string).
    """

    model_config = ConfigDict(validate_assignment=True, extra="ignore")
    required_hash_fields: ClassVar[tuple[str, ...]] = ()

    name: Optional[str] = None
    timeout: Optional[float] = 12.0
    total_size: Optional[int] = 0
    header_size: Optional[int] = 0
    dendrite: Optional[TerminalInfo] = Field(default_factory=TerminalInfo)
    axon: Optional[TerminalInfo] = Field(default_factory=TerminalInfo)
    computed_body_hash: Optional[str] = ""

    _received_at: float = PrivateAttr(default_factory=time.time)

    @model_validator(mode="before")
    @classmethod
    def _route_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {**data, "name": cls.__name__}
        return data

    @property
    def received_at(self) -> float:
        """``time.time()`` when this object was built (for a parsed request: when it arrived)."""
        return self._received_at


class Version(BaseModel):
    major: int
    minor: int
    patch: int


class ContentLength(IntEnum):
    """Seconds of video per clip a miner accepts (``LengthCheckProtocol``)."""

    FIVE = 5
    TEN = 10


class TaskType(IntEnum):
    """The kind of work a miner warrants (``TaskWarrantProtocol``)."""

    COMPRESSION = 1
    UPSCALING = 2


def _sync_list_and_scalar(model: BaseModel, plural: str, singular: str) -> None:
    """Vidaio's rule: a lone scalar becomes the list; a non-empty list sets the scalar to its first item."""
    values = model.__dict__
    if not values[plural] and values[singular]:
        values[plural] = [values[singular]]
    if values[plural]:
        values[singular] = values[plural][0]


class UpscalingMinerPayload(BaseModel):
    """What the validator asks for: one task per reference video, same order."""

    reference_video_urls: list[Url] = Field(default_factory=list, max_length=MAX_CLIPS)
    reference_video_url: Url = ""
    maximum_optimized_size_mb: int = Field(default=100, gt=0)
    task_types: list[Name] = Field(default_factory=list, max_length=MAX_CLIPS)
    task_type: Name = "HD24K"

    @model_validator(mode="after")
    def _legacy_fields(self) -> "UpscalingMinerPayload":
        _sync_list_and_scalar(self, "reference_video_urls", "reference_video_url")
        _sync_list_and_scalar(self, "task_types", "task_type")
        return self

    def tasks(self) -> list[str]:
        """One task name per reference URL: a single task type applies to every URL."""
        tasks = list(self.task_types)
        if len(tasks) == 1 and len(self.reference_video_urls) > 1:
            tasks = tasks * len(self.reference_video_urls)
        return tasks


class MinerResponse(BaseModel):
    """Our answer: one URL per input, same order (``""`` for a failed clip).

    Set both ``optimized_video_urls`` and ``optimized_video_url`` (or build a new object): the
    fields are synchronised when the model is built, not on assignment (as in Vidaio).
    """

    optimized_video_urls: list[str] = Field(default_factory=list)
    optimized_video_url: str = ""

    @model_validator(mode="after")
    def _legacy_fields(self) -> Any:
        _sync_list_and_scalar(self, "optimized_video_urls", "optimized_video_url")
        return self


class JobKickoffResponse(BaseModel):
    accepted: bool = False


class PollResponse(BaseModel):
    """Status of a background job: ``processing`` | ``completed`` | ``failed``."""

    job_id: str = ""
    status: str = "unknown"
    optimized_video_urls: list[str] = Field(default_factory=list)
    optimized_video_url: str = ""

    @model_validator(mode="after")
    def _legacy_fields(self) -> Any:
        _sync_list_and_scalar(self, "optimized_video_urls", "optimized_video_url")
        return self


class VideoUpscalingProtocol(Synapse):
    version: Optional[Version] = None
    round_id: Optional[Name] = None
    miner_payload: UpscalingMinerPayload = Field(default_factory=UpscalingMinerPayload, frozen=True)
    miner_response: MinerResponse = Field(default_factory=MinerResponse)


class LengthCheckProtocol(Synapse):
    version: Optional[Version] = None
    max_content_length: ContentLength = ContentLength.FIVE


class TaskWarrantProtocol(Synapse):
    version: Optional[Version] = None
    warrant_task: Optional[TaskType] = None


class VideoUpscalingJobProtocol(Synapse):
    job_id: Name = ""
    miner_payload: UpscalingMinerPayload = Field(default_factory=UpscalingMinerPayload, frozen=True)
    job_response: JobKickoffResponse = Field(default_factory=JobKickoffResponse)
    miner_response: MinerResponse = Field(default_factory=MinerResponse)


class VideoUpscalingPollProtocol(Synapse):
    job_id: Name = ""
    poll_response: PollResponse = Field(default_factory=PollResponse)


SERVED_SYNAPSES: dict[str, type[Synapse]] = {
    cls.__name__: cls
    for cls in (VideoUpscalingProtocol, LengthCheckProtocol, TaskWarrantProtocol,
                VideoUpscalingJobProtocol, VideoUpscalingPollProtocol)
}
"""Route name -> model of every synapse this miner serves."""

NOT_SERVED_SYNAPSES: tuple[str, ...] = (
    "VideoCompressionProtocol", "VideoCompressionJobProtocol", "VideoCompressionPollProtocol",
    "CompetitionInvitationProtocol", "CompetitionSubmissionProtocol",
)
"""Vidaio synapses we know of but do not serve (compression and the compression competition)."""
