"""Application error codes a peer connection closes with, and how they read in a reason.

Shared by the connection and its setup (:mod:`punchthrough.endpoint.peerauth`), and exported
by :mod:`punchthrough.endpoint` so callers can tell a refusal from a hangup by its code.
"""

from __future__ import annotations

from typing import Final

# Application error codes in CONNECTION_CLOSE (RFC 9000 section 20.2 leaves them to the
# application). Kept out of 0x0-0x1ff so they can never be mistaken for transport or TLS-alert
# (CRYPTO_ERROR) codes in logs.
CLOSE_HANGUP: Final = 0x0
CLOSE_REFUSED: Final = 0x5401
CLOSE_AUTH_FAILED: Final = 0x5402
CLOSE_PEER_ID_MISMATCH: Final = 0x5403
CLOSE_PROTOCOL_ERROR: Final = 0x5404
CLOSE_BUSY: Final = 0x5405


def describe_close(code: int) -> str:
    """A close code in words, for a peer that closed without a reason phrase."""
    return {
        CLOSE_HANGUP: "closed",
        CLOSE_REFUSED: "refused",
        CLOSE_AUTH_FAILED: "authentication failed",
        CLOSE_PEER_ID_MISMATCH: "peer id mismatch",
        CLOSE_PROTOCOL_ERROR: "protocol error",
        CLOSE_BUSY: "busy",
    }.get(code, f"error 0x{code:x}")
