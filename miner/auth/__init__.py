"""Who may call the miner: request verification for both transports, validator admission, client signing.

- ``LegacyVerifier``: bittensor-10 synapse requests (``bt_header_*``, sr25519, nonce window, replay store).
- ``BtAuthVerifier`` / ``sign_btauth``: btauth/1 (``bittensor.http_auth``).
- ``NonceStore``: nonces reserved before their signature is checked, so each is verified at most once.
- ``check_access``: registered validator with a permit and enough stake (403 otherwise).
- ``LegacyAuth`` / ``BtAuth``: the two-step (headers, then body) authentication the server's gate runs.
Client-side signing of legacy requests is ``miner.protocol.build_legacy_request``.
"""

from miner.auth.access import check_access
from miner.auth.btauth import BtAuthClaim, BtAuthSettings, BtAuthVerifier, sign_btauth
from miner.auth.caller import Caller
from miner.auth.errors import (
    AuthError, BadBody, BadSignature, BodyHashMismatch, Forbidden, MalformedRequest, NoValidatorPermit,
    ReplayedRequest, StaleNonce, StakeTooLow, Unauthorized, UnknownHotkey, WrongReceiver,
)
from miner.auth.legacy import LegacySettings, LegacyVerifier, VerifiedRequest
from miner.auth.nonces import NonceStore, Reservation
from miner.auth.twostep import BtAuth, LegacyAuth, Pending

__all__ = [
    "AuthError", "BadBody", "BadSignature", "BodyHashMismatch", "BtAuth", "BtAuthClaim", "BtAuthSettings",
    "BtAuthVerifier", "Caller", "Forbidden", "LegacyAuth", "LegacySettings", "LegacyVerifier", "MalformedRequest",
    "NoValidatorPermit", "NonceStore", "Pending", "ReplayedRequest", "Reservation", "StaleNonce", "StakeTooLow",
    "Unauthorized", "UnknownHotkey", "VerifiedRequest", "WrongReceiver", "check_access", "sign_btauth",
]
