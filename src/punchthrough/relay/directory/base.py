"""The directory of a relay fleet: peer id -> home relay (id and addresses), with a TTL.

Every relay publishes the peers registered with it (their *home*) and refreshes them well
within the TTL, so an entry outlives its relay by at most one TTL; a peer that re-homes
overwrites its entry at once (last writer wins). A relay answers a client's ``RelayLookup``
from its own registry first and asks the directory only for peers it does not hold, so an
unreachable directory never affects calls between peers of one relay.

Implementations: :class:`~.memory.MemoryDirectory` (one process: the embedded default, and
the simulator's shared fleet state) and :class:`~.redis.RedisDirectory` (a real Redis shared
by every relay of a fleet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from punchthrough.identity import PeerId
from punchthrough.netio import Address
from punchthrough.relay.errors import RelayError

#: How long an entry lives without a refresh. 30 s = the relay's QUIC idle timeout
#: (``RelayLimits.idle_timeout``): a relay that died stops refreshing, and its entries are gone
#: about when its clients' control connections would have timed out anyway.
DEFAULT_TTL: Final = 30.0
#: Relays refresh every entry this often (a third of the TTL: two refreshes may be lost).
REFRESH_FRACTION: Final = 1 / 3
#: Bound on one directory operation. A cross-relay lookup must fail within a second when the
#: directory is down (issue 14); half of that leaves the client's round trip room.
DIRECTORY_TIMEOUT: Final = 0.5


class DirectoryUnavailable(RelayError):
    """The directory could not be reached or did not answer in time (``reason`` says why)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"directory unavailable: {reason}")


@dataclass(frozen=True, slots=True)
class HomeEntry:
    """Where a peer lives: its home relay's id and the addresses clients reach it at."""

    relay_id: str
    addresses: tuple[Address, ...]


class Directory(Protocol):
    """What a relay needs from the fleet's shared state. Every method may raise
    :class:`DirectoryUnavailable`, and none blocks longer than its implementation's timeout."""

    async def publish(self, entries: dict[PeerId, HomeEntry], ttl: float) -> None:
        """Set (or refresh) each peer's home, expiring ``ttl`` seconds from now."""
        ...

    async def lookup(self, peer_id: PeerId) -> HomeEntry | None:
        """The peer's home, or None (never registered, expired, withdrawn)."""
        ...

    async def withdraw(self, peer_id: PeerId, relay_id: str) -> bool:
        """Remove the entry if it still names ``relay_id`` (never a newer home elsewhere)."""
        ...

    async def close(self) -> None: ...
