"""Who is registered where: peer id -> registration, and source address -> registration.

Two seams, so that several relays (regions) can later share one namespace:

* :class:`Registry` is this relay's own table (the forwarding fast path: lookups by raw peer id
  bytes and by source address, no allocation).
* :class:`PeerDirectory` answers "at which relay addresses does this peer id live?". The local
  implementation answers from the registry; a federated one would also ask other relays (the
  signal union already has ``RelayLookup``/``RelayLookupResult`` for that) or a shared store,
  and the server answers ``RelayLookup`` on control streams through this interface.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from punchthrough.identity import PeerId
from punchthrough.netio import Address
from punchthrough.relay.limits import ClientLimiter


@dataclass(eq=False, slots=True)
class Registration:
    """One registered client. Identity (``is``) matters: a newer registration replaces it."""

    peer_id: PeerId
    #: Where the client's control connection (and so its DATA frames) come from.
    address: Address
    #: This relay's socket it registered through; frames to the client leave from it, so they
    #: match the client's NAT mapping.
    local: Address
    registered_at: float
    limiter: ClientLimiter
    #: Every SEND frame from this registration and every DATA and NOTICE frame to it carries it
    #: (``relay.frames.FRAME_TOKEN_BYTES``).
    frame_token: bytes = b""
    stats: Counter[str] = field(default_factory=Counter)
    #: What the fast path (``relay.fastpath``) counted, as plain integers: frames in, bytes
    #: in, frames out, bytes out; :attr:`all_stats` adds them to ``stats``.
    fast: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    #: Opaque handle of the owning control connection (set by the server).
    owner: object | None = None
    #: Registered as a visitor (relay fleet): not published in the directory.
    visitor: bool = False

    @property
    def raw(self) -> bytes:
        return self.peer_id.raw

    @property
    def all_stats(self) -> dict[str, int]:
        """``stats`` with the fast path's counts added."""
        out = dict(self.stats)
        for key, value in zip(_FAST_KEYS, self.fast, strict=True):
            if value:
                out[key] = out.get(key, 0) + value
        return out


#: The order of ``Registration.fast``.
_FAST_KEYS = ("frames_in", "bytes_in", "frames_out", "bytes_out")


class Registry(Protocol):
    def add(self, reg: Registration) -> list[Registration]:
        """Install ``reg``; return the registrations it displaced (same peer id or address)."""
        ...

    def remove(self, reg: Registration) -> bool:
        """Remove ``reg`` if it is still current; False if it was already replaced."""
        ...

    def move(self, reg: Registration, address: Address) -> list[Registration]:
        """``reg``'s client now sends from ``address`` (NAT rebinding); return displaced."""
        ...

    def by_peer(self, raw: bytes) -> Registration | None: ...

    def by_address(self, address: Address) -> Registration | None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Registration]: ...


class PeerDirectory(Protocol):
    def locate(self, peer_id: PeerId) -> tuple[Address, ...]:
        """Relay addresses where ``peer_id`` is registered (empty: nowhere we know of)."""
        ...


class LocalRegistry:
    """The in-memory registry of one relay process; also a :class:`PeerDirectory`.

    Invariants: at most one registration per peer id and per source address (a source address
    stamps exactly one peer id onto the frames it sends).
    """

    def __init__(self, public_addresses: dict[Address, Address] | None = None) -> None:
        #: Bumped by every change, so that caches of lookups (the fast path's) know to refresh.
        self.version = 0
        self._by_peer: dict[bytes, Registration] = {}
        self._by_addr: dict[Address, Registration] = {}
        #: local socket address -> address clients reach it at (identity unless configured)
        self._public = public_addresses or {}

    def add(self, reg: Registration) -> list[Registration]:
        self.version += 1
        displaced: list[Registration] = []
        old = self._by_peer.get(reg.raw)
        if old is not None and old is not reg:
            self._drop(old)
            displaced.append(old)
        other = self._by_addr.get(reg.address)
        if other is not None and other is not reg:
            self._drop(other)
            displaced.append(other)
        self._by_peer[reg.raw] = reg
        self._by_addr[reg.address] = reg
        return displaced

    def remove(self, reg: Registration) -> bool:
        if self._by_peer.get(reg.raw) is not reg:
            return False
        self._drop(reg)
        return True

    def move(self, reg: Registration, address: Address) -> list[Registration]:
        if self._by_peer.get(reg.raw) is not reg or reg.address == address:
            return []
        if self._by_addr.get(reg.address) is reg:
            del self._by_addr[reg.address]
        self.version += 1
        reg.address = address
        return self.add(reg)

    def _drop(self, reg: Registration) -> None:
        self.version += 1
        if self._by_peer.get(reg.raw) is reg:
            del self._by_peer[reg.raw]
        if self._by_addr.get(reg.address) is reg:
            del self._by_addr[reg.address]

    def by_peer(self, raw: bytes) -> Registration | None:
        return self._by_peer.get(raw)

    def by_address(self, address: Address) -> Registration | None:
        return self._by_addr.get(address)

    def __len__(self) -> int:
        return len(self._by_peer)

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self._by_peer.values()))

    def locate(self, peer_id: PeerId) -> tuple[Address, ...]:
        reg = self._by_peer.get(peer_id.raw)
        if reg is None:
            return ()
        return (self._public.get(reg.local, reg.local),)
