"""Exceptions raised by the signal package.

All derive from :class:`SignalError`. Anything wrong with received bytes is a
:class:`SignalDecodeError` (never a msgspec, ``struct`` or ``ValueError`` from deep inside), so a
connection handler can catch one family, reply with a reason and carry on or close cleanly.
"""

from __future__ import annotations

from collections.abc import Iterable


class SignalError(Exception):
    """Base class for every signal failure."""


class SignalDecodeError(SignalError):
    """Received bytes are not a valid signal message; the message names the problem."""


class UnsupportedVersion(SignalDecodeError):
    """The peer speaks a signal version we do not (the envelope decoded, the version is wrong)."""

    def __init__(self, version: object, supported: Iterable[int]) -> None:
        #: The version the peer sent or offered (whatever type it had on the wire).
        self.version = version
        #: The versions we speak, for the reply.
        self.supported = tuple(sorted(supported))
        super().__init__(
            f"unsupported signal version {version!r}; this peer speaks "
            + ", ".join(map(str, self.supported))
        )


class MessageTooLarge(SignalDecodeError):
    """A message or frame exceeds the size limit; on a stream the stream cannot continue."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"signal message of {size} bytes exceeds the {limit}-byte limit")


class SignalEncodeError(SignalError, ValueError):
    """We tried to send a message the peer would reject (a local bug, caught before sending)."""


class SignalTimeout(SignalError, TimeoutError):
    """No complete message (or no write progress) within the timeout."""
