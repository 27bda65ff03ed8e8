"""The bittensor-10 synapse wire format, client side: requests exactly as a bittensor 10.1.0 ``Dendrite`` makes them.

Usage (a local validator calling a miner)::

    from miner.protocol import LengthCheckProtocol, build_legacy_request, parse_legacy_response, new_dendrite_uuid

    dendrite_uuid = new_dendrite_uuid()            # keep one per client, like a Dendrite instance
    req = build_legacy_request(LengthCheckProtocol(), wallet.hotkey, axon_hotkey=miner_ss58,
                               axon_ip="127.0.0.1", axon_port=8091, timeout=10.0, dendrite_uuid=dendrite_uuid)
    resp = httpx.post(f"http://127.0.0.1:8091{req.path}", headers=req.headers, content=req.body, timeout=10.0)
    answer = parse_legacy_response(req.synapse, resp.status_code, resp.headers, resp.content)
    answer.dendrite.status_code, answer.max_content_length

``signer`` is a bittensor 11 ``Keypair`` (``wallet.hotkey``) or a wallet (its hotkey is used):
anything with ``ss58_address`` and ``sign(bytes) -> bytes``.
"""

from __future__ import annotations

import json
import time
import uuid as uuid_mod
from typing import Any, Mapping, NamedTuple, Optional, TypeVar

from miner.protocol.models import Synapse, TerminalInfo
from miner.protocol.wire import AXON_PREFIX, DENDRITE_PREFIX, body_hash, signature_message, synapse_headers

S = TypeVar("S", bound=Synapse)

BITTENSOR_VERSION_AS_INT = 10_001_000
"""``bittensor.core.settings.version_as_int`` of bittensor 10.1.0 (sent as ``bt_header_dendrite_version``)."""

PARSE_FAILURE = (422, "Failed to parse response")
"""What a bittensor 10 dendrite records when the answer is not JSON."""


class OutgoingRequest(NamedTuple):
    """A signed request: POST ``path`` with ``headers`` and the JSON ``body``; ``synapse`` as sent."""

    path: str
    headers: dict[str, str]
    body: bytes
    synapse: Synapse


def new_dendrite_uuid() -> str:
    """A dendrite instance id (bittensor uses ``uuid1``)."""
    return str(uuid_mod.uuid1())


def _keypair(signer: Any) -> Any:
    return signer.hotkey if hasattr(signer, "hotkey") and not hasattr(signer, "sign") else signer


def build_legacy_request(
    synapse: Synapse,
    signer: Any,
    axon_hotkey: str,
    axon_ip: str,
    axon_port: int,
    timeout: float,
    *,
    dendrite_uuid: str,
    dendrite_ip: str = "127.0.0.1",
    nonce_ns: Optional[int] = None,
) -> OutgoingRequest:
    """Sign ``synapse`` for the axon ``axon_hotkey`` at ``axon_ip:axon_port`` as ``Dendrite.call`` does.

    Works on a copy: sets ``timeout``, the dendrite terminal (ip, version, nonce, uuid, hotkey,
    signature) and the axon terminal (ip, port, hotkey); headers as ``Synapse.to_headers``; body
    as ``json.dumps(synapse.model_dump())`` after the headers (so it carries ``total_size``).
    """
    keypair = _keypair(signer)
    synapse = synapse.model_copy(deep=True)
    synapse.timeout = timeout
    synapse.dendrite = TerminalInfo(
        ip=dendrite_ip, version=BITTENSOR_VERSION_AS_INT, nonce=time.time_ns() if nonce_ns is None else nonce_ns,
        uuid=dendrite_uuid, hotkey=keypair.ss58_address,
    )
    synapse.axon = TerminalInfo(ip=axon_ip, port=axon_port, hotkey=axon_hotkey)
    message = signature_message(synapse.dendrite.nonce, keypair.ss58_address, axon_hotkey, dendrite_uuid,
                                body_hash(synapse))
    synapse.dendrite.signature = "0x" + bytes(keypair.sign(message.encode())).hex()
    headers = synapse_headers(synapse)
    headers["Content-Type"] = "application/json"
    body = json.dumps(synapse.model_dump(mode="json")).encode()
    return OutgoingRequest(path=f"/{type(synapse).__name__}", headers=headers, body=body, synapse=synapse)


def _terminal_updates(headers: Mapping[str, str], prefix: str) -> dict[str, Any]:
    raw = {k.lower()[len(prefix):]: v for k, v in headers.items() if k.lower().startswith(prefix)}
    known = {k: v for k, v in raw.items() if k in TerminalInfo.model_fields}
    return TerminalInfo.model_validate(known).model_dump(exclude_none=True)


def parse_legacy_response(sent: S, status: int, headers: Mapping[str, str], body: bytes) -> S:
    """The synapse a bittensor 10.1.0 dendrite would return for this answer.

    200: the JSON fields are copied onto a copy of ``sent``; otherwise ``axon.status_code`` is the
    HTTP status and ``axon.status_message`` the JSON ``message``. Then the ``bt_header_axon_*`` /
    ``bt_header_dendrite_*`` response headers update the terminals, and ``dendrite.status_code`` /
    ``status_message`` mirror the axon's. A non-JSON answer gives ``dendrite.status_code == 422``.
    """
    result = sent.model_copy(deep=True)
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("answer is not a JSON object")
        if status == 200:
            server = type(sent).model_validate(data)
            for key, field in type(sent).model_fields.items():
                if not field.frozen:  # bittensor's setattr fails silently on frozen inputs
                    setattr(result, key, getattr(server, key))
        else:
            result.axon = (result.axon or TerminalInfo()).model_copy(
                update={"status_code": status, "status_message": data.get("message")})
        result.dendrite = (result.dendrite or TerminalInfo()).model_copy(update=_terminal_updates(headers, DENDRITE_PREFIX))
        result.axon = (result.axon or TerminalInfo()).model_copy(update=_terminal_updates(headers, AXON_PREFIX))
    except ValueError as exc:
        code, message = PARSE_FAILURE
        result.dendrite = (result.dendrite or TerminalInfo()).model_copy(
            update={"status_code": code, "status_message": f"{message}: {exc}"})
        return result
    result.dendrite = result.dendrite.model_copy(
        update={"status_code": result.axon.status_code, "status_message": result.axon.status_message})
    return result
