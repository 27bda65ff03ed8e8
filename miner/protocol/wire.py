"""The bittensor-10 synapse wire format, server side (what a bittensor 10.1.0 ``Axon`` reads and answers).

A bittensor 10.1.0 ``Dendrite`` sends ``POST /<SynapseName>`` with the synapse as its JSON body and
these headers (names as sent; HTTP makes them case-insensitive):

- ``name``, ``timeout`` (seconds the caller waits), ``header_size``, ``total_size``;
- ``bt_header_axon_{ip,port,hotkey}``: the receiver it meant;
- ``bt_header_dendrite_{ip,version,nonce,uuid,hotkey,signature}``: the caller; ``nonce`` is
  ``time.time_ns()`` at signing, ``uuid`` is fixed per dendrite instance;
- ``computed_body_hash``: SHA3-256 hex over the SHA3-256 hex of each ``required_hash_fields`` value
  (no Vidaio synapse has any, so it is SHA3-256 of ``""``).

The signature is sr25519 by the caller's hotkey over
``f"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{dendrite_uuid}.{computed_body_hash}"`` as ``"0x" + hex``.
The answer is the synapse JSON with HTTP status = ``axon.status_code`` (``{"message": ...}`` for a
non-200), and the same header set with ``bt_header_axon_status_code``, ``..._status_message`` and
``..._process_time``; the dendrite copies the JSON fields back on 200 and the status from the headers.

Server-side usage (the auth dependency has already verified the request)::

    synapse = parse_synapse(VideoUpscalingProtocol, await request.body())   # or synapse_from(cls, parsed_json)
    synapse.miner_response = MinerResponse(optimized_video_urls=urls)
    return answer_synapse(synapse, status_code=200, message="Success")

Lower level: ``parse_legacy_request(route, headers, body) -> (synapse, LegacyHeaders)`` and
``legacy_response(synapse, status_code, message, process_time) -> (body, headers)``.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, TypeVar

from pydantic import ValidationError
from starlette.responses import Response

from miner.protocol.models import SERVED_SYNAPSES, Synapse, TerminalInfo

S = TypeVar("S", bound=Synapse)

HEADER_BODY_HASH = "computed_body_hash"
MAX_NUMBER_CHARS = 32  # a nanosecond nonce has 19 digits; longer numeric headers are refused unparsed
HEADER_TIMEOUT = "timeout"
AXON_PREFIX = "bt_header_axon_"
DENDRITE_PREFIX = "bt_header_dendrite_"
_MAX_STATUS_MESSAGE = 1024


class WireError(ValueError):
    """A request that is not a well-formed synapse call; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def sha3_hex(text: str) -> str:
    """SHA3-256 hex digest of ``text`` (UTF-8), bittensor's ``get_hash``."""
    return hashlib.sha3_256(text.encode("utf-8")).hexdigest()


def body_hash(synapse: Synapse) -> str:
    """The body hash bittensor 10 computes over the synapse's ``required_hash_fields``."""
    fields = type(synapse).required_hash_fields
    values = synapse.model_dump() if fields else {}
    return sha3_hex("".join(sha3_hex(str(values[f])) for f in fields))


def class_body_hash(cls: type[Synapse]) -> str:
    """The body hash of every instance of ``cls``, known without a body (it hashes no fields)."""
    if cls.required_hash_fields:
        raise ValueError(f"{cls.__name__} hashes body fields: its body hash needs the body")
    return sha3_hex("")


@dataclass(frozen=True)
class LegacyHeaders:
    """The ``bt_header_*`` values of one request (``None`` where absent)."""

    name: Optional[str]
    timeout: Optional[float]
    computed_body_hash: Optional[str]
    dendrite_hotkey: Optional[str]
    dendrite_nonce: Optional[int]
    dendrite_uuid: Optional[str]
    dendrite_signature: Optional[str]
    dendrite_version: Optional[int]
    dendrite_ip: Optional[str]
    axon_hotkey: Optional[str]
    axon_ip: Optional[str]
    axon_port: Optional[int]

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> "LegacyHeaders":
        """Read the headers (any case); ``WireError(401)`` when a number does not parse."""
        lowered = {k.lower(): v for k, v in headers.items()}

        def number(key: str, kind: type) -> Any:
            raw = lowered.get(key)
            if raw is None:
                return None
            if len(raw) > MAX_NUMBER_CHARS:
                raise WireError(401, f"header {key} is too long for a number: {raw[:40]!r}...")
            try:
                value = kind(raw)
            except (ValueError, OverflowError):
                raise WireError(401, f"header {key} is not a number: {raw[:40]!r}") from None
            if kind is float and not math.isfinite(value):
                raise WireError(401, f"header {key} is not a finite number: {raw[:40]!r}")
            return value

        return cls(
            name=lowered.get("name"),
            timeout=number(HEADER_TIMEOUT, float),
            computed_body_hash=lowered.get(HEADER_BODY_HASH),
            dendrite_hotkey=lowered.get(DENDRITE_PREFIX + "hotkey"),
            dendrite_nonce=number(DENDRITE_PREFIX + "nonce", int),
            dendrite_uuid=lowered.get(DENDRITE_PREFIX + "uuid"),
            dendrite_signature=lowered.get(DENDRITE_PREFIX + "signature"),
            dendrite_version=number(DENDRITE_PREFIX + "version", int),
            dendrite_ip=lowered.get(DENDRITE_PREFIX + "ip"),
            axon_hotkey=lowered.get(AXON_PREFIX + "hotkey"),
            axon_ip=lowered.get(AXON_PREFIX + "ip"),
            axon_port=number(AXON_PREFIX + "port", int),
        )


def signature_message(nonce: int, dendrite_hotkey: str, axon_hotkey: str, dendrite_uuid: str, hash_hex: str) -> str:
    """The text a dendrite signs: ``{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash}``."""
    return f"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{dendrite_uuid}.{hash_hex}"


def synapse_class(route: str) -> type[Synapse]:
    """The served synapse model of a route name (``"/X"`` or ``"X"``); ``WireError(404)`` otherwise."""
    name = route.strip("/").split("/")[0]
    cls = SERVED_SYNAPSES.get(name)
    if cls is None:
        raise WireError(404, f"synapse {name!r} is not served (served: {', '.join(SERVED_SYNAPSES)})")
    return cls


def parse_synapse(cls: type[S], body: bytes) -> S:
    """The synapse of a JSON body; ``WireError(400)`` naming the problem when it is not one."""
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(400, f"body is not JSON: {exc}") from None
    except RecursionError:
        raise WireError(400, "body nests too deeply") from None
    return synapse_from(cls, data)


def synapse_from(cls: type[S], data: Any) -> S:
    """The synapse of an already parsed JSON body; ``WireError(400)`` naming the problem when it is not one."""
    if not isinstance(data, dict):
        raise WireError(400, "body is not a JSON object")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise WireError(400, f"body is not a valid {cls.__name__}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "body"
    return f"{where}: {err.get('msg', 'invalid')} ({exc.error_count()} error(s))"


def parse_legacy_request(route: str, headers: Mapping[str, str], body: bytes) -> tuple[Synapse, LegacyHeaders]:
    """The synapse (from the body) and the ``bt_header_*`` values of one request.

    Like a bittensor 10 axon, the caller/receiver terminal info and the timeout are taken from the
    headers (the ones the signature covers are verified by ``miner.auth``), not from the body.
    """
    cls = synapse_class(route)
    parsed = LegacyHeaders.parse(headers)
    synapse = parse_synapse(cls, body)
    dendrite = synapse.dendrite.model_copy() if synapse.dendrite else None
    if dendrite is not None:
        dendrite.hotkey, dendrite.nonce, dendrite.uuid = parsed.dendrite_hotkey, parsed.dendrite_nonce, parsed.dendrite_uuid
        dendrite.signature, dendrite.version = parsed.dendrite_signature, parsed.dendrite_version
        synapse.dendrite = dendrite
    if parsed.timeout is not None:
        synapse.timeout = parsed.timeout
    return synapse, parsed


def request_timeout(headers: Mapping[str, str]) -> Optional[float]:
    """Seconds the caller waits (the ``timeout`` header), ``None`` when absent or invalid."""
    try:
        return LegacyHeaders.parse(headers).timeout
    except WireError:
        return None


def _header_safe(text: str) -> str:
    """A status message fit for an HTTP header: printable ASCII, bounded length."""
    cleaned = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in text)
    return cleaned[:_MAX_STATUS_MESSAGE]


def _object_size(obj: Any, seen: Optional[set[int]] = None) -> int:
    """Recursive ``sys.getsizeof`` (bittensor's ``total_size`` measure; informational only)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(_object_size(k, seen) + _object_size(v, seen) for k, v in obj.items())
    elif hasattr(obj, "__dict__"):
        size += _object_size(obj.__dict__, seen)
    elif hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes, bytearray)):
        size += sum(_object_size(i, seen) for i in obj)
    return size


def synapse_headers(synapse: Synapse) -> dict[str, str]:
    """The header set bittensor 10's ``Synapse.to_headers`` makes (and sets ``total_size``).

    Order and names as bittensor: ``name``, ``timeout``, ``bt_header_axon_*``, ``bt_header_dendrite_*``
    (non-``None`` terminal fields), ``header_size``, ``total_size``, ``computed_body_hash``.
    """
    headers = {"name": str(synapse.name), "timeout": str(synapse.timeout)}
    for prefix, terminal in ((AXON_PREFIX, synapse.axon), (DENDRITE_PREFIX, synapse.dendrite)):
        if terminal is not None:
            headers.update({f"{prefix}{k}": str(v) for k, v in terminal.model_dump().items() if v is not None})
    headers["header_size"] = str(sys.getsizeof(headers))
    synapse.total_size = _object_size(synapse)
    headers["total_size"] = str(synapse.total_size)
    headers[HEADER_BODY_HASH] = body_hash(synapse)
    return headers


def legacy_response(
    synapse: Optional[Synapse], status_code: int, message: str, process_time: Optional[float] = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an answer a bittensor 10.1.0 dendrite understands.

    200: the synapse JSON (outputs filled in) with ``axon.status_code/status_message/process_time``
    set. Otherwise ``{"message": message}``. ``synapse=None`` (a request that did not parse) gives
    only the status headers. ``process_time`` defaults to the time since the synapse was parsed.
    """
    message = _header_safe(message)
    if synapse is None:
        headers = {AXON_PREFIX + "status_code": str(status_code), AXON_PREFIX + "status_message": message}
    else:
        axon = (synapse.axon or TerminalInfo()).model_copy()
        axon.status_code, axon.status_message = status_code, message
        axon.process_time = process_time if process_time is not None else time.time() - synapse.received_at
        synapse.axon = axon
        headers = synapse_headers(synapse)
    if status_code == 200 and synapse is not None:
        body = json.dumps(synapse.model_dump(mode="json"), separators=(",", ":")).encode()
    else:
        body = json.dumps({"message": message}).encode()
    headers["content-type"] = "application/json"
    return body, headers


def answer_synapse(synapse: Synapse, status_code: int = 200, message: str = "Success",
                   process_time: Optional[float] = None) -> Response:
    """``legacy_response`` as a Starlette/FastAPI ``Response``."""
    body, headers = legacy_response(synapse, status_code, message, process_time)
    return Response(content=body, status_code=status_code, headers=headers)
