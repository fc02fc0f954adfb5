"""The in-memory directory: one relay (the embedded default), or a fleet in one process (the
simulator, tests). Same semantics as Redis: TTL per entry, compare-and-delete withdraw."""

from __future__ import annotations

import time
from collections.abc import Callable

from punchthrough.identity import PeerId
from punchthrough.relay.directory.base import DirectoryUnavailable, HomeEntry


class MemoryDirectory:
    """A dict with expiry. ``clock``: seconds, monotonic (pass ``loop.time`` in the simulator).

    ``available`` can be set False to model a directory outage (simulator, tests).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[bytes, tuple[HomeEntry, float]] = {}
        self.available = True
        self.stats = {"publishes": 0, "lookups": 0, "withdraws": 0}

    def _check(self) -> None:
        if not self.available:
            raise DirectoryUnavailable("in-memory directory marked unavailable")

    async def publish(self, entries: dict[PeerId, HomeEntry], ttl: float) -> None:
        self._check()
        expires = self._clock() + ttl
        for peer, entry in entries.items():
            self._entries[peer.raw] = (entry, expires)
        self.stats["publishes"] += len(entries)

    async def lookup(self, peer_id: PeerId) -> HomeEntry | None:
        self._check()
        self.stats["lookups"] += 1
        found = self._entries.get(peer_id.raw)
        if found is None:
            return None
        entry, expires = found
        if expires <= self._clock():
            del self._entries[peer_id.raw]
            return None
        return entry

    async def withdraw(self, peer_id: PeerId, relay_id: str) -> bool:
        self._check()
        found = self._entries.get(peer_id.raw)
        if found is None or found[0].relay_id != relay_id:
            return False
        del self._entries[peer_id.raw]
        self.stats["withdraws"] += 1
        return True

    def __len__(self) -> int:
        now = self._clock()
        return sum(1 for _, exp in self._entries.values() if exp > now)

    async def close(self) -> None:
        return None
