"""Exceptions of the public API (:class:`Endpoint`, :class:`Connection`).

Everything derives from :class:`EndpointError`. A dialer catches :class:`ConnectError` (or one of
its subclasses to tell *why*); anyone using a connection catches :class:`ConnectionClosed`.
"""

from __future__ import annotations

from punchthrough.identity import PeerIdMismatch as _IdentityPeerIdMismatch


class EndpointError(Exception):
    """Base class for every endpoint failure."""


class EndpointClosed(EndpointError):
    """The endpoint was closed (``accept()`` and ``connect()`` wake with this)."""


class NoRelay(EndpointError):
    """No relay is configured or registered, so no peer can be reached (yet)."""


class ConnectError(EndpointError):
    """``connect()`` could not produce a usable connection."""


class ConnectTimeout(ConnectError, TimeoutError):
    """No usable connection within the timeout (the peer may be offline or not accepting)."""


class PeerUnreachable(ConnectError):
    """Every relay we asked said the peer id is not registered there."""


class PeerRefused(ConnectError):
    """The peer authenticated us and refused the call (its ``allow`` callback, or busy)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"peer refused the connection: {reason}" if reason else "peer refused")


class PeerIdMismatch(ConnectError, _IdentityPeerIdMismatch):
    """The peer proved another identity than the one dialled (or none).

    Also an :class:`punchthrough.identity.PeerIdMismatch`, so either catch works.
    """


class HandshakeFailed(ConnectError):
    """The QUIC/TLS handshake or the peer authentication failed (reason from the peer or TLS)."""


class ConnectionClosed(EndpointError, ConnectionError):
    """The connection is closed; ``reason`` says why and ``by_peer`` who closed it."""

    def __init__(self, reason: str, *, by_peer: bool = False, error_code: int = 0) -> None:
        self.reason = reason
        self.by_peer = by_peer
        self.error_code = error_code
        text = f"connection closed: {reason or 'no reason given'}"
        super().__init__(f"{text} (by the peer)" if by_peer else text)


class PeerLookupFailed(ConnectError):
    """The relay fleet could not say where the peer lives (``code``: the relay's, e.g. 503
    ``RELAY_UNAVAILABLE`` when the directory is down; ``reason`` says why)."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"peer lookup failed: {code} {reason}".rstrip())


class Displaced(EndpointClosed, ConnectionClosed):
    """Another instance of this identity registered after us and took our place: this endpoint
    is no longer reachable and stops (``accept()`` and ``connect()`` raise it)."""

    def __init__(self, reason: str) -> None:
        ConnectionClosed.__init__(self, reason)
