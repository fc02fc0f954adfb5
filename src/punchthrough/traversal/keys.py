"""Credentials of the connectivity checks and the key of the dialer's early offer.

Both come from the call secret (:func:`call_secret`): the static-static X25519 secret of the two
identity keys (:func:`punchthrough.identity.agreement.static_secret`) bound by HKDF to this
QUIC connection's original destination connection ID (the random value the dialer's first
Initial carries, RFC 9000 section 7.2) and to both peer ids in their roles. Nobody but the two
key holders can compute it, not even the relay that carries the handshake, and both have it
before any round trip: the dialer when it dials, the acceptor when the Initial arrives (from the
id the relay stamped on it). So checks can run, and the acceptor can check, from the first
half round trip (issue 17; the design notes' "early check keys" say why this is safe: a check
never moves a path before the QUIC handshake has authenticated the peer). HKDF (RFC 5869)
turns the call secret into:

- one 32-byte MESSAGE-INTEGRITY key (HMAC-SHA1, RFC 8489 section 14.5) for checks both ways;
- a username fragment per role (RFC 8445 section 5.3), so that a check names its recipient
  (``USERNAME = recipient:sender``) and the endpoint can route it to the right connection
  among many on one socket without trying every key. A reflected check never verifies as a
  request to its own sender, because the roles' fragments differ.

No key material ever goes on the wire or through the relay.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: HKDF ``info`` (RFC 5869 section 3.2): binds each output to its use and version.
CHECK_KEY_INFO: Final = b"punchthrough connectivity checks v2"
CALL_SECRET_INFO: Final = b"punchthrough call secret v1"
OFFER_KEY_INFO: Final = b"punchthrough early offer v1"
KEY_LENGTH: Final = 32
#: Username fragments: 10 bytes -> 16 base32 characters (RFC 8445 section 5.3 asks >= 24 bits).
UFRAG_BYTES: Final = 10


def _ufrag(raw: bytes) -> str:
    return base64.b32encode(raw).decode().rstrip("=").lower()


@dataclass(frozen=True, slots=True)
class CheckCredentials:
    """What one side needs to send and verify checks."""

    local_ufrag: str
    remote_ufrag: str
    key: bytes = b""

    @property
    def request_username(self) -> str:
        """USERNAME of the requests we send (RFC 8445 section 7.2.2: ``remote:local``)."""
        return f"{self.remote_ufrag}:{self.local_ufrag}"

    @property
    def expected_username(self) -> str:
        """USERNAME of the requests the peer sends us."""
        return f"{self.local_ufrag}:{self.remote_ufrag}"

    def __repr__(self) -> str:  # never print the key
        return f"CheckCredentials({self.local_ufrag}, {self.remote_ufrag})"


def call_secret(static: bytes, odcid: bytes, dialer: bytes, acceptor: bytes) -> bytes:
    """One call's secret: ``static`` (the identities' X25519 secret) bound to the connection
    (``odcid``, its original destination connection ID) and to the peers in their roles
    (``dialer``, ``acceptor``: raw peer ids), so no two calls and no two directions share it."""
    if len(static) != 32 or not odcid:
        raise ValueError("a call secret needs the 32-byte static secret and the connection id")
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=odcid,
        info=CALL_SECRET_INFO + dialer + acceptor,
    ).derive(static)


def offer_key(secret: bytes) -> bytes:
    """The AEAD key of the dialer's early offer (:mod:`punchthrough.traversal.offer`)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=OFFER_KEY_INFO).derive(secret)


def derive_credentials(binding: bytes, *, is_dialer: bool) -> CheckCredentials:
    """Both sides call this with the same secret (``binding``: the call secret) and get
    mirror-image credentials."""
    if len(binding) < 16:
        raise ValueError("call secret is too short")
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=KEY_LENGTH + 2 * UFRAG_BYTES,
        salt=None,
        info=CHECK_KEY_INFO,
    ).derive(binding)
    key = okm[:KEY_LENGTH]
    dialer = _ufrag(okm[KEY_LENGTH : KEY_LENGTH + UFRAG_BYTES])
    acceptor = _ufrag(okm[KEY_LENGTH + UFRAG_BYTES :])
    if is_dialer:
        return CheckCredentials(dialer, acceptor, key)
    return CheckCredentials(acceptor, dialer, key)


def recipient_ufrag(username: str) -> str | None:
    """The recipient part of a check's USERNAME, or ``None`` if it is not ``a:b`` shaped."""
    recipient, sep, sender = username.partition(":")
    if not sep or not recipient or not sender:
        return None
    return recipient
