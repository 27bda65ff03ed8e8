"""Who may call the miner: request verification for both transports, validator admission, client signing.

- ``LegacyVerifier``: bittensor-10 synapse requests (``bt_header_*``, sr25519, nonce window, replay store).
- ``BtAuthVerifier`` / ``sign_btauth``: btauth/1 (``bittensor.http_auth``).
- ``check_access``: registered validator with a permit and enough stake (403 otherwise).
- ``LegacyAuth`` / ``BtAuth``: FastAPI dependencies returning a ``Caller``; ``install_auth_error_handler``.
Client-side signing of legacy requests is ``miner.protocol.build_legacy_request``.
"""

from miner.auth.access import check_access
from miner.auth.btauth import BtAuthSettings, BtAuthVerifier, sign_btauth
from miner.auth.caller import Caller
from miner.auth.errors import (
    AuthError, BadBody, BadSignature, BodyHashMismatch, Forbidden, MalformedRequest, NoValidatorPermit,
    ReplayedRequest, StaleNonce, StakeTooLow, Unauthorized, UnknownHotkey, WrongReceiver,
)
from miner.auth.fastapi import AuthFailure, BtAuth, LegacyAuth, install_auth_error_handler
from miner.auth.legacy import LegacySettings, LegacyVerifier, VerifiedRequest
from miner.auth.nonces import NonceStore

__all__ = [
    "AuthError", "AuthFailure", "BadBody", "BadSignature", "BodyHashMismatch", "BtAuth", "BtAuthSettings",
    "BtAuthVerifier", "Caller", "Forbidden", "LegacyAuth", "LegacySettings", "LegacyVerifier", "MalformedRequest",
    "NoValidatorPermit", "NonceStore", "ReplayedRequest", "StaleNonce", "StakeTooLow", "Unauthorized",
    "UnknownHotkey", "VerifiedRequest", "WrongReceiver", "check_access", "install_auth_error_handler",
    "sign_btauth",
]
