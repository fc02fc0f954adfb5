"""The public API: :class:`Endpoint` (one identity, one socket) and :class:`Connection`.

async with Endpoint.bind(identity, relays=["198.51.100.20:3478"]) as ep:
    conn = await ep.connect(peer_id)          # usable as soon as the relayed path works
    conn.send_datagram(frame)                 # media: unreliable
    reader, writer = await conn.open_stream() # reliable data
"""

from punchthrough.endpoint.codes import (
    CLOSE_AUTH_FAILED,
    CLOSE_BUSY,
    CLOSE_HANGUP,
    CLOSE_PEER_ID_MISMATCH,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
)
from punchthrough.endpoint.config import (
    MAX_DATAGRAM_PAYLOAD,
    PEER_ALPN,
    QUIC_MAX_DATAGRAM_SIZE,
    EndpointConfig,
)
from punchthrough.endpoint.connection import Connection
from punchthrough.endpoint.endpoint import Endpoint
from punchthrough.endpoint.errors import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    Displaced,
    EndpointClosed,
    EndpointError,
    HandshakeFailed,
    NoRelay,
    PeerIdMismatch,
    PeerLookupFailed,
    PeerRefused,
    PeerUnreachable,
)
from punchthrough.endpoint.report import TraversalReport, TraversalStage

__all__ = [
    "CLOSE_AUTH_FAILED",
    "CLOSE_BUSY",
    "CLOSE_HANGUP",
    "CLOSE_PEER_ID_MISMATCH",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_REFUSED",
    "MAX_DATAGRAM_PAYLOAD",
    "PEER_ALPN",
    "QUIC_MAX_DATAGRAM_SIZE",
    "ConnectError",
    "ConnectTimeout",
    "Connection",
    "ConnectionClosed",
    "Displaced",
    "Endpoint",
    "EndpointClosed",
    "EndpointConfig",
    "EndpointError",
    "HandshakeFailed",
    "NoRelay",
    "PeerIdMismatch",
    "PeerLookupFailed",
    "PeerRefused",
    "PeerUnreachable",
    "TraversalReport",
    "TraversalStage",
]
