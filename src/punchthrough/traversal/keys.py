"""Credentials of the connectivity checks, derived from the end-to-end QUIC session.

Both peers hold the QUIC connection's channel binding (an exporter-like secret of the TLS 1.3
session, :func:`punchthrough.identity.channel_binding`); nobody else does, not even the relay
that carried the handshake. HKDF (RFC 5869) turns it into:

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

#: HKDF ``info`` (RFC 5869 section 3.2): binds the output to this use and version.
CHECK_KEY_INFO: Final = b"punchthrough connectivity checks v1"
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


def derive_credentials(binding: bytes, *, is_dialer: bool) -> CheckCredentials:
    """Both sides call this with the same ``binding`` and get mirror-image credentials."""
    if len(binding) < 16:
        raise ValueError("channel binding is too short")
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
