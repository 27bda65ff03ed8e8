"""Authentication and admission failures, each with the HTTP status it is answered with.

401 (``Unauthorized``): the request does not prove who sent it, to us, now: malformed auth headers,
body hash mismatch, bad signature, wrong receiver, stale nonce, replay.
403 (``Forbidden``): the sender is proven but may not use this miner: unknown hotkey, no validator
permit, stake below the minimum.
"""

from __future__ import annotations


class AuthError(Exception):
    """A refused request: ``status`` is the HTTP status, ``reason`` a message for the caller."""

    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unauthorized(AuthError):
    status = 401


class MalformedRequest(Unauthorized):
    """Auth headers missing or unparsable."""


class BadBody(AuthError):
    """The body is not the synapse the route names (answered 400)."""

    status = 400


class BodyHashMismatch(Unauthorized):
    pass


class BadSignature(Unauthorized):
    pass


class WrongReceiver(Unauthorized):
    pass


class StaleNonce(Unauthorized):
    pass


class ReplayedRequest(Unauthorized):
    pass


class Forbidden(AuthError):
    status = 403


class UnknownHotkey(Forbidden):
    pass


class NoValidatorPermit(Forbidden):
    pass


class StakeTooLow(Forbidden):
    pass
