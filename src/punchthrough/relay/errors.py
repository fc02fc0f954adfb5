"""Exceptions raised by the relay package.

Everything derives from :class:`RelayError`. Malformed data-plane bytes raise
:class:`RelayFrameError` from the codec (the server and client turn it into a counted drop);
a refused registration is a :class:`RelayRegistrationError` and a refused lookup a
:class:`RelayLookupRefused`, each carrying the relay's code (code decides on it, not the text).
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class for every relay failure."""


class RelayFrameError(RelayError, ValueError):
    """Bytes are not a valid relay data-plane frame (or a frame we would send is invalid)."""


class RelayRegistrationError(RelayError):
    """The relay refused to register us (``code`` is one of ``punchthrough.signal.RELAY_*``)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"relay refused registration: {code} {reason}".rstrip())


class RelayLookupRefused(RelayError):
    """The relay refused a lookup (``code``: one of ``punchthrough.signal.RELAY_*``, e.g.
    ``RELAY_RATE_LIMITED`` when this client looked up too many peers too fast)."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"relay refused lookup: {code} {reason}".rstrip())


class RelayTimeout(RelayError, TimeoutError):
    """The relay did not complete a handshake or answer within the timeout."""


class RelayClosed(RelayError, ConnectionError):
    """The relay control connection closed (before or during registration)."""
