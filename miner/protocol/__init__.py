"""Vidaio synapse models and the bittensor-10 wire format (server and client side).

- ``models``: pydantic models of the synapses (``VideoUpscalingProtocol`` ...), ``SERVED_SYNAPSES``,
  ``NOT_SERVED_SYNAPSES``; ``tasks``: ``UpscalingTask`` with input/output geometry.
- ``wire``: server side, ``parse_synapse`` / ``synapse_from`` / ``parse_legacy_request`` and ``answer_synapse`` /
  ``legacy_response``; ``dendrite``: client side, ``build_legacy_request`` / ``parse_legacy_response``.
"""

from miner.protocol.dendrite import (
    BITTENSOR_VERSION_AS_INT, OutgoingRequest, build_legacy_request, new_dendrite_uuid, parse_legacy_response,
)
from miner.protocol.models import (
    NOT_SERVED_SYNAPSES, SERVED_SYNAPSES, ContentLength, JobKickoffResponse, LengthCheckProtocol, MinerResponse,
    PollResponse, Synapse, TaskType, TaskWarrantProtocol, TerminalInfo, UpscalingMinerPayload, Version,
    VideoUpscalingJobProtocol, VideoUpscalingPollProtocol, VideoUpscalingProtocol,
)
from miner.protocol.tasks import UpscalingTask
from miner.protocol.wire import (
    LegacyHeaders, WireError, answer_synapse, body_hash, legacy_response, parse_legacy_request, parse_synapse,
    request_timeout, signature_message, synapse_class, synapse_from, synapse_headers,
)

__all__ = [
    "BITTENSOR_VERSION_AS_INT", "NOT_SERVED_SYNAPSES", "SERVED_SYNAPSES", "ContentLength", "JobKickoffResponse",
    "LegacyHeaders", "LengthCheckProtocol", "MinerResponse", "OutgoingRequest", "PollResponse", "Synapse",
    "TaskType", "TaskWarrantProtocol", "TerminalInfo", "UpscalingMinerPayload", "UpscalingTask", "Version",
    "VideoUpscalingJobProtocol", "VideoUpscalingPollProtocol", "VideoUpscalingProtocol", "WireError",
    "answer_synapse", "body_hash", "build_legacy_request", "legacy_response", "new_dendrite_uuid",
    "parse_legacy_request", "parse_legacy_response", "parse_synapse", "request_timeout", "signature_message",
    "synapse_class", "synapse_from", "synapse_headers",
]
