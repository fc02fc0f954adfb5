"""Exceptions raised by the STUN package.

Everything derives from :class:`StunError` so a caller can catch the whole family; malformed
input is always :class:`StunDecodeError` (never ``struct.error``/``IndexError``/``ValueError``).
"""

from __future__ import annotations


class StunError(Exception):
    """Base class for every STUN failure."""


class StunDecodeError(StunError):
    """A datagram is not a well-formed STUN message; the message names the rule it broke."""


class StunTimeout(StunError, TimeoutError):
    """No response after all retransmissions, or the caller's timeout elapsed."""


class StunErrorResponse(StunError):
    """The server answered with an error response (RFC 8489 §6.3.4)."""

    def __init__(self, code: int, reason: str, unknown_attributes: tuple[int, ...] = ()) -> None:
        self.code = code
        self.reason = reason
        #: For 420 responses: the attribute types the server did not understand.
        self.unknown_attributes = unknown_attributes
        super().__init__(f"STUN error response {code} {reason}".rstrip())


class StunFamilyMismatch(StunError):
    """The server reported our address in another family than the one we asked it over (an
    IPv4 answer to an IPv6 request, or the reverse): a broken or lying server, or a NAT64 in
    the way. The address is useless as a candidate on this path, so the answer is refused."""

    def __init__(self, server: tuple[str, int], mapped: tuple[str, int]) -> None:
        self.server = server
        self.mapped = mapped
        super().__init__(f"asked {server[0]} but told our address is {mapped[0]}: families differ")
