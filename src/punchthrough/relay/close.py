"""Why the relay ends a control connection: the QUIC application error code it closes with.

The server sends one of these in its CONNECTION_CLOSE; the client keeps it
(:attr:`~punchthrough.relay.client.RelayClient.close_code`), so that whoever supervises a
registration decides on the code and never on the human-readable reason.
"""

from __future__ import annotations

import enum


class RelayCloseCode(enum.IntEnum):
    """QUIC application error codes on relay control connections (RFC 9000 section 20.2
    leaves them to the application protocol: these values are ours)."""

    #: The client ended its control stream.
    NORMAL = 0
    #: A newer registration of the same peer id (or from the same source address) took over.
    REPLACED = 0x101
    #: The client broke the control protocol (e.g. a second control stream).
    PROTOCOL = 0x102
    #: The client did not register in time after connecting.
    REGISTER_TIMEOUT = 0x103
    #: The relay is shutting down.
    SHUTDOWN = 0x104
    #: The relay is draining (SIGTERM, ``relay.drain``): move to another relay now.
    DRAINING = 0x105
