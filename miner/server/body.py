"""Reading a request body at the ASGI ``receive`` level: at most ``cap`` bytes, within a deadline.

    body = await read_capped(receive, cap=65536, timeout_s=10.0)   # BodyTooLarge / BodyTimeout / ClientGone
    await app(scope, replay(body, receive), send)                  # the app reads the buffered body

Unlike ``await request.body()``, nothing past the cap is ever buffered: the read stops at the first
chunk that crosses it (uvicorn hands over at most its read size, and pauses the socket while the
app is not reading), and a body that trickles in slower than ``timeout_s`` is abandoned.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

Receive = Callable[[], Awaitable[dict[str, Any]]]


class BodyError(Exception):
    """The body could not be read; ``status`` is the answer (``None``: the client is gone, answer nothing)."""

    status: int | None = 400
    reason = "bad_body"


class BodyTooLarge(BodyError):
    status = 413
    reason = "too_large"


class BodyTimeout(BodyError):
    status = 408
    reason = "body_timeout"


class ClientGone(BodyError):
    status = None
    reason = "client_gone"


async def read_capped(receive: Receive, *, cap: int, timeout_s: float) -> bytes:
    """The whole body if it is at most ``cap`` bytes and arrives within ``timeout_s``."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone("the client went away while sending its body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > cap:
                    raise BodyTooLarge(f"request body exceeds the {cap}-byte limit of this route")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise BodyTimeout(f"request body not received within {timeout_s:g} s ({size} bytes arrived)") from None


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields ``body`` once, then defers to the real one (disconnect detection)."""
    delivered = False

    async def replaying() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying
