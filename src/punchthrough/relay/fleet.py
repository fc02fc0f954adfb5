"""A relay's part in a fleet: publish its clients in the directory, answer lookups from it.

:class:`FleetLink` sits between the control plane and a :class:`~.directory.Directory`:

* a registration publishes ``peer id -> this relay`` (at once), every registration is refreshed
  every ``ttl / 3`` (one pipelined batch), and a registration that ends is withdrawn (only if
  the entry still names this relay: a peer that re-homed elsewhere keeps its new entry);
* a lookup is answered from this relay's registry first (never touching the directory: calls
  between two clients of one relay work with the directory down), then from the directory.

Directory writes go through one ordered queue worked by one task, so a publish and the
withdraw that follows it cannot be reordered, and a slow or dead directory never delays a
registration: writes that fail are counted and the next refresh repairs the state. The queue
is bounded; what it drops the refresh re-publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Final

from punchthrough.identity import PeerId
from punchthrough.netio import Address
from punchthrough.relay.directory import (
    DEFAULT_TTL,
    Directory,
    DirectoryUnavailable,
    HomeEntry,
)
from punchthrough.relay.directory.base import REFRESH_FRACTION
from punchthrough.relay.registry import LocalRegistry, Registration

log = logging.getLogger(__name__)

#: Directory writes waiting for the worker; past this the oldest is dropped (the periodic
#: refresh re-publishes every live registration anyway). 10,000 covers a relay's whole client
#: table being re-published while the directory is slow.
MAX_PENDING_WRITES: Final = 10_000

#: Stat keys this module counts in the relay's stats.
FLEET_STAT_KEYS: Final = (
    "directory_publishes",  # entries written (registration or refresh)
    "directory_withdraws",  # entries removed when a registration ended
    "directory_write_errors",  # writes that failed (directory down or slow)
    "directory_writes_dropped",  # the write queue overflowed (the refresh repairs it)
    "directory_lookups",  # lookups of peers not registered here
    "directory_misses",  # ... that the directory did not know either
    "directory_errors",  # ... that failed: the client got 503
)

_Write = tuple[str, PeerId]


class FleetLink:
    """Keeps ``directory`` in step with ``registry``; see the module docstring."""

    def __init__(
        self,
        directory: Directory,
        relay_id: str,
        addresses: Sequence[Address],
        registry: LocalRegistry,
        stats: Counter[str],
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("directory ttl must be positive")
        self._loop = asyncio.get_running_loop()
        self.directory = directory
        self.relay_id = relay_id
        self.entry = HomeEntry(relay_id, tuple(addresses))
        self.registry = registry
        self._stats = stats
        for key in FLEET_STAT_KEYS:
            stats.setdefault(key, 0)
        self.ttl = ttl
        self._writes: deque[_Write] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._closed = False
        self._busy = False

    def start(self) -> None:
        self._worker = self._loop.create_task(self._work())
        self._refresher = self._loop.create_task(self._refresh_loop())

    # -- control plane hooks --------------------------------------------------------------
    def registered(self, reg: Registration) -> None:
        self._queue(("publish", reg.peer_id))

    def unregistered(self, reg: Registration) -> None:
        self._queue(("withdraw", reg.peer_id))

    def _queue(self, write: _Write) -> None:
        if self._closed:
            return
        if len(self._writes) >= MAX_PENDING_WRITES:
            self._writes.popleft()
            self._stats["directory_writes_dropped"] += 1
        self._writes.append(write)
        self._wake.set()

    async def locate(self, peer_id: PeerId) -> tuple[Address, ...]:
        """Relay addresses where ``peer_id`` lives: here, or its home in the directory.

        Raises :class:`DirectoryUnavailable` (within the directory's timeout) only for a peer
        that is not registered here.
        """
        local = self.registry.locate(peer_id)
        reg = self.registry.by_peer(peer_id.raw)
        if local and reg is not None and not reg.visitor:
            return local
        # not here, or only visiting (its home, from the directory, is where it stays)
        self._stats["directory_lookups"] += 1
        try:
            entry = await self.directory.lookup(peer_id)
        except DirectoryUnavailable:
            self._stats["directory_errors"] += 1
            if local:
                return local
            raise
        if entry is None or entry.relay_id == self.relay_id:
            # our own stale entry (the client left and the withdraw is pending) is a miss
            self._stats["directory_misses"] += 1
            return ()
        return entry.addresses

    # -- the writer -----------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._busy = True
            while self._writes:
                # one batch: every publish up to the next withdraw goes in one pipeline
                batch: dict[PeerId, HomeEntry] = {}
                while self._writes and self._writes[0][0] == "publish":
                    _, peer = self._writes.popleft()
                    reg = self.registry.by_peer(peer.raw)
                    if reg is not None and not reg.visitor:
                        batch[peer] = self.entry
                if batch:
                    await self._write_publish(batch)
                if self._writes and self._writes[0][0] == "withdraw":
                    _, peer = self._writes.popleft()
                    if self.registry.by_peer(peer.raw) is None:  # not back in the meantime
                        await self._write_withdraw(peer)
            self._busy = False

    async def _write_publish(self, batch: dict[PeerId, HomeEntry]) -> None:
        try:
            await self.directory.publish(batch, self.ttl)
        except DirectoryUnavailable as exc:
            self._stats["directory_write_errors"] += 1
            log.warning("relay %s: directory publish failed: %s", self.relay_id, exc.reason)
            return
        self._stats["directory_publishes"] += len(batch)

    async def _write_withdraw(self, peer: PeerId) -> None:
        try:
            if await self.directory.withdraw(peer, self.relay_id):
                self._stats["directory_withdraws"] += 1
        except DirectoryUnavailable as exc:
            self._stats["directory_write_errors"] += 1
            log.warning("relay %s: directory withdraw failed: %s", self.relay_id, exc.reason)

    async def _refresh_loop(self) -> None:
        interval = self.ttl * REFRESH_FRACTION
        while True:
            await asyncio.sleep(interval)
            for reg in self.registry:
                if not reg.visitor:
                    self._queue(("publish", reg.peer_id))

    async def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until the queued writes are done (tests, drain)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._writes or self._busy:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0)

    async def close(self, *, withdraw: bool = True) -> None:
        """Stop refreshing; with ``withdraw``, remove our clients' entries (bounded: 2 s in
        all, and nothing more once the directory fails), so that lookups stop naming a relay
        that is gone. Does not close the directory."""
        if self._closed:
            return
        await self.flush()
        self._closed = True
        tasks = [t for t in (self._refresher, self._worker) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not withdraw:
            return
        with contextlib.suppress(TimeoutError, DirectoryUnavailable):
            async with asyncio.timeout(2.0):
                for reg in self.registry:
                    if not reg.visitor and await self.directory.withdraw(
                        reg.peer_id, self.relay_id
                    ):
                        self._stats["directory_withdraws"] += 1


class FleetConfig:
    """What makes a relay a member of a fleet: its id, the shared directory, the addresses
    its clients are told to use (default: the bound ones) and the directory TTL."""

    def __init__(
        self,
        relay_id: str,
        directory: Directory,
        *,
        addresses: Sequence[Address] | None = None,
        ttl: float = DEFAULT_TTL,
    ) -> None:
        if not relay_id or len(relay_id) > 64:
            raise ValueError("a relay id is 1-64 characters")
        self.relay_id = relay_id
        self.directory = directory
        self.addresses = list(addresses) if addresses else None
        self.ttl = ttl

    def link(
        self, bound: Sequence[Address], registry: LocalRegistry, stats: Counter[str]
    ) -> FleetLink:
        return FleetLink(
            self.directory,
            self.relay_id,
            self.addresses or bound,
            registry,
            stats,
            ttl=self.ttl,
        )
