"""The relay's fast path: SEND frames forwarded from a batch of receive slots, in place.

The ordinary path (:mod:`.forward`) gets each frame as a new ``bytes`` through the asyncio
transport, the socket multiplexer and a closure, and builds a new DATA frame per send (~12 us
of Python per frame with asyncio, issue 16). Here a :class:`~punchthrough.netio.batched.
BatchedUdpSocket` hands over a batch of slots; for each well-formed SEND frame from a
registered address with its frame token, to a destination registered on the same socket, within
the sender's limits, the slot is rewritten in place into the DATA frame (SEND and DATA headers
have the same length: type, peer id, token) and queued for one ``sendmmsg``. Everything else --
STUN, QUIC, malformed or forged frames, unknown destinations, rate-limited senders -- is passed
to the ordinary path unchanged, which drops, counts and answers exactly as before. So the fast
path changes no behaviour, only the cost of the common case.

Counters are plain integers on the cached route (a ``Counter`` increment costs ~115 ns, issue
16), folded into the registrations' stats when they are read or the route is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from hmac import compare_digest

from punchthrough.netio import mmsg
from punchthrough.netio.base import Address
from punchthrough.netio.batched import RecvSlots, SendSlots
from punchthrough.relay.frames import (
    FRAME_DATA,
    FRAME_SEND,
    MAX_SEND_FRAME,
    PEER_ID_BYTES,
    SEND_HEADER_LENGTH,
)
from punchthrough.relay.registry import LocalRegistry, Registration

#: Routes one source may have cached (destination id + token -> where and what to stamp);
#: only registered destinations are cached, so this bounds a client that calls many peers.
MAX_ROUTES_PER_SOURCE = 1024


class _Route:
    """A verified (sender, destination) pair: the DATA header to stamp, where to send, and
    what went that way since the counts were last folded into the two registrations."""

    __slots__ = ("bytes", "dest", "frames", "header", "sockaddr", "src")

    def __init__(self, src: Registration, dest: Registration, header: bytes, sockaddr: bytes):
        self.src = src
        self.dest = dest
        self.header = header
        self.sockaddr = sockaddr
        self.frames = 0
        self.bytes = 0

    def fold(self) -> None:
        """Add the counts to the registrations' plain-integer stats (``Registration.fast``)."""
        if self.frames:
            src, dest = self.src.fast, self.dest.fast
            src[0] += self.frames
            src[1] += self.bytes
            dest[2] += self.frames
            dest[3] += self.bytes
            self.frames = self.bytes = 0


class _Source:
    """A registered sender seen on this socket, and its verified routes."""

    __slots__ = ("packets", "reg", "routes", "volume")

    def __init__(self, reg: Registration) -> None:
        self.reg = reg
        self.routes: dict[bytes, _Route] = {}
        self.packets = reg.limiter.packets
        self.volume = reg.limiter.bytes


class FastForwarder:
    """The batch handler of one primary relay socket (see the module docstring)."""

    def __init__(self, local: Address, family: int, registry: LocalRegistry) -> None:
        self._loop = asyncio.get_running_loop()
        self._local = local
        self._family = family
        self._registry = registry
        self._version = -1
        #: source sockaddr -> sender; cleared whenever the registry changes (a registration
        #: added, moved or removed), with every route cached under it.
        self._by_source: dict[bytes, _Source] = {}
        self.frames = 0
        self.bytes = 0

    def fold(self) -> None:
        """Bring every registration's fast-path counts up to date (before stats are read)."""
        for src in self._by_source.values():
            for route in src.routes.values():
                route.fold()

    def _forget(self) -> None:
        self.fold()
        self._by_source.clear()

    def stats(self) -> dict[str, int]:
        """What this path forwarded: ``frames_in``/``frames_out`` and the bytes of both."""
        return {
            "frames_in": self.frames,
            "frames_out": self.frames,
            "bytes_in": self.bytes,
            "bytes_out": self.bytes,
        }

    def _source(self, key: bytes) -> _Source | None:
        reg = self._registry.by_address(mmsg.decode_sockaddr(key))
        if reg is None:
            return None
        src = self._by_source[key] = _Source(reg)
        return src

    def _route(self, src: _Source, key: bytes) -> _Route | None:
        """Verify ``key`` (destination id + token) for ``src`` and cache the route; None when
        the token is wrong or the destination is not registered on this socket."""
        reg = src.reg
        if not compare_digest(key[PEER_ID_BYTES:], reg.frame_token):
            return None
        dest = self._registry.by_peer(key[:PEER_ID_BYTES])
        if dest is None or dest.local != self._local:
            return None
        if len(src.routes) >= MAX_ROUTES_PER_SOURCE:
            for old in src.routes.values():
                old.fold()
            src.routes.clear()
        header = bytes([FRAME_DATA]) + reg.peer_id.raw + dest.frame_token
        sockaddr = mmsg.encode_sockaddr(self._family, dest.address)
        route = _Route(reg, dest, header, sockaddr)
        src.routes[key] = route
        return route

    def __call__(
        self, batch: RecvSlots, got: int, out: SendSlots, slow: Callable[[int], None]
    ) -> None:
        if self._registry.version != self._version:
            self._forget()
            self._version = self._registry.version
        by_source = self._by_source
        data, view, lengths, slot = batch.data, batch.view, batch.lengths, batch.slot
        now = self._loop.time()
        frames = size_total = 0
        for i in range(got):
            n = lengths[i]
            at = i * slot
            if data[at] != FRAME_SEND or n <= SEND_HEADER_LENGTH or n > MAX_SEND_FRAME:
                slow(i)
                continue
            key = batch.source(i)
            src = by_source.get(key) or self._source(key)
            if src is None:
                slow(i)
                continue
            rkey = bytes(view[at + 1 : at + SEND_HEADER_LENGTH])
            route = src.routes.get(rkey) or self._route(src, rkey)
            if route is None:
                slow(i)  # forged token, unknown destination, another socket: the slow path
                continue  # drops, counts and answers
            size = n - SEND_HEADER_LENGTH
            packets, volume = src.packets, src.volume
            if packets.last != now:
                packets.refill(now)
            if volume.last != now:
                volume.refill(now)
            if packets.tokens < 1.0 or volume.tokens < size:
                slow(i)  # over the limit: nothing taken here, the slow path drops and notices
                continue
            packets.tokens -= 1.0
            volume.tokens -= size
            data[at : at + SEND_HEADER_LENGTH] = route.header
            out.add(i, n, route.sockaddr)
            frames += 1
            size_total += size
            route.frames += 1
            route.bytes += size
        self.frames += frames
        self.bytes += size_total
