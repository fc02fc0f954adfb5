"""Per-source rate limit of a STUN server (issue 12): a token bucket per source, bounded table.

A STUN server answers anyone, so without a limit one source can make it spend a core on
parsing and can point its answers at a victim (reflection). Each source gets a token bucket;
a datagram over the limit is dropped before it is even decoded.

The key is the source IP, never the port (a host has 64k of those). An IPv6 source is keyed by
its /64: one host may use any address of its /64 (RFC 8981 temporary addresses; RFC 4291
§2.5.1 interface identifiers), so a per-address key would let it reset its bucket at will. An
IPv4-mapped IPv6 address counts as its IPv4 address.

The table holds at most ``max_sources`` buckets and evicts the least recently seen one, so
spoofed sources cannot grow it. Eviction only ever forgets a debt (a returning source starts
with a full bucket, as a new one does), so it cannot be used to silence a real client; what a
spoofer gains is at most ``burst`` answers per victim per ``max_sources`` datagrams it sends.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

#: Sustained datagrams per second per source. A relay client sends one Binding per NAT keepalive
#: (``EndpointConfig.nat_keepalive``, 2 s) and one more per 0.5 s RTO while unanswered
#: (``relay.nat_keepalive``): 0.5/s each, so 100/s serves ~200 clients behind one carrier-grade
#: NAT address, while one source costs at most 100 answers (~4 ms of CPU) a second.
DEFAULT_RATE = 100.0
#: Datagrams a source may send at once. The biggest legitimate burst is a netcheck run (about
#: ten transactions at once, RFC 8489 §6.2.1 retransmissions on top) or a hard-NAT port
#: prediction (up to 16 fresh sockets each sampling the servers): 64 covers either with margin.
DEFAULT_BURST = 64.0
#: Most sources tracked at once: at most 2.3 MB (tracemalloc: 230 bytes per IPv4 source, 280 per
#: IPv6 one). A bucket idle for burst / rate (0.64 s) is full again, so forgetting it loses
#: nothing; the least recently seen bucket is one that recent only with more than
#: 8192 / 0.64 = 12,800 distinct sources a second.
DEFAULT_MAX_SOURCES = 8192


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The limiter's knobs; see the module constants for why the defaults are what they are."""

    rate: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST
    max_sources: int = DEFAULT_MAX_SOURCES

    def __post_init__(self) -> None:
        if self.rate < 0 or self.burst < 1 or self.max_sources < 1:
            raise ValueError("a rate limit needs rate >= 0, burst >= 1 and max_sources >= 1")


#: What :class:`~.server.StunServerCore` and :class:`~.server.StunServer` use unless told.
DEFAULT_RATE_LIMIT = RateLimit()


def event_loop_time() -> float:
    """The running event loop's clock (virtual in the simulator), else ``time.monotonic``."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def source_key(ip: str) -> str:
    """What one source is: the IPv4 address, or the /64 of an IPv6 one (module docstring)."""
    if ":" not in ip:
        return ip
    try:
        addr = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return addr.packed[:8].hex() + "/64"


class SourceRateLimiter:
    """Token buckets keyed by :func:`source_key`, in an LRU table of ``max_sources`` entries."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = event_loop_time) -> None:
        self.limit = limit
        self._clock = clock
        #: key -> [tokens, time of last refill]; least recently seen first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        #: Buckets forgotten to make room (a sign of many sources, spoofed or not).
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, ip: str) -> bool:
        """Spend one token of ``ip``'s bucket; False (over the limit) if it has none."""
        key = source_key(ip)
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.limit.max_sources:
                self._buckets.popitem(last=False)
                self.evictions += 1
            self._buckets[key] = [self.limit.burst - 1, now]
            return True
        self._buckets.move_to_end(key)
        tokens, last = bucket
        if now > last:  # a clock that goes backwards refills nothing
            tokens = min(self.limit.burst, tokens + (now - last) * self.limit.rate)
            bucket[1] = now
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True
