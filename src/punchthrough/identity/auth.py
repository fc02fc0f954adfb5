"""Proving an identity inside an established connection (the acceptor verifying a dialer).

The dialer checks the acceptor through the acceptor's certificate. The acceptor learns who
dialled from a signature over a per-connection secret value (a channel binding, see
:func:`punchthrough.identity.quic.channel_binding`) that the dialer sends on the control
stream. The value is unique to one TLS session, so the signature cannot be replayed on another
connection, and the signing context keeps it from being reused for anything else (e.g. relay
registration signs under :data:`RELAY_REGISTER_CONTEXT`).
"""

from __future__ import annotations

from typing import Final

from punchthrough.identity.keys import Identity
from punchthrough.identity.peerid import PeerId

#: Context for a dialer proving its peer id to the peer it dialled.
PEER_AUTH_CONTEXT: Final = "quic-peer-auth"
#: Context for a client proving its peer id to a relay when registering.
RELAY_REGISTER_CONTEXT: Final = "relay-register"
#: A channel binding shorter than this is not a per-connection secret (128-bit security).
MIN_EXPORTER_LENGTH: Final = 16
#: Longer values are certainly a mistake (our binding is 32 bytes).
MAX_EXPORTER_LENGTH: Final = 255


def _check_exporter(exporter_value: bytes) -> None:
    if not MIN_EXPORTER_LENGTH <= len(exporter_value) <= MAX_EXPORTER_LENGTH:
        raise ValueError(
            f"exporter value must be {MIN_EXPORTER_LENGTH}-{MAX_EXPORTER_LENGTH} bytes, "
            f"got {len(exporter_value)}"
        )


def sign_exporter(
    identity: Identity, exporter_value: bytes, *, context: str = PEER_AUTH_CONTEXT
) -> bytes:
    """Sign a connection's channel binding to prove ``identity`` is at this end of it."""
    _check_exporter(exporter_value)
    return identity.sign(exporter_value, context=context)


def verify_exporter(
    peer_id: PeerId,
    exporter_value: bytes,
    signature: bytes,
    *,
    context: str = PEER_AUTH_CONTEXT,
) -> None:
    """Raise :class:`BadSignature` unless ``peer_id`` signed this connection's binding."""
    _check_exporter(exporter_value)
    peer_id.verify(signature, exporter_value, context=context)
