"""Token buckets and the relay's configurable limits (pure: every call takes ``now``).

A relay is a shared resource: each registered client gets a packet bucket and a byte bucket;
NOTICE replies and new control connections have their own buckets so that neither can be used
to amplify or to exhaust the relay.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final, Literal

#: IPv6 addresses counted together: RFC 4291 section 2.5.1 gives every subnet a /64 and
#: RFC 6177 hands sites at least that much, so one host can use 2**64 source addresses.
IPV6_PREFIX_LEN: Final = 64
#: Heap held by one relay control connection, half-open or registered (aioquic's
#: QuicConnection plus ours): 95-99 KB measured by ``bench/relay_memory.py`` (tracemalloc,
#: simulator: 12,000 half-open Initials and 200 idle registered clients), rounded up. What
#: ``RelayLimits.memory_budget`` is divided by.
CONNECTION_BYTES: Final = 100_000


def address_prefix(ip: str) -> str:
    """What ``max_connections_per_ip`` counts: the IPv4 address or the IPv6 /64 (an
    IPv4-mapped IPv6 address counts as its IPv4 address; anything unparsable as itself)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, IPV6_PREFIX_LEN), strict=False))
    return str(addr)


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full.

    ``now`` is any monotonic clock in seconds (the event loop's). A clock that goes backwards
    refills nothing (it never adds tokens).
    """

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or burst <= 0:
            raise ValueError("a token bucket needs rate >= 0 and burst > 0")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; False (nothing spent) otherwise."""
        self._refill(now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def refund(self, cost: float = 1.0) -> None:
        """Give back tokens taken for something that did not happen (capped at ``burst``)."""
        self._tokens = min(self.burst, self._tokens + cost)


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """Every knob of the relay. Defaults suit a voice/video relay on one core."""

    #: Per client: DATA frames per second and burst. A call is ~50 pps each way; 2000 pps
    #: leaves room for bulk transfer and a QUIC handshake burst.
    packets_per_second: float = 2000.0
    packet_burst: float = 2000.0
    #: Per client: payload bytes per second and burst (4 MB/s ~ 2000 full 1400-byte frames).
    bytes_per_second: float = 4_000_000.0
    byte_burst: float = 4_000_000.0
    #: Per client: NOTICE replies (never more notices than frames; never a flood of them).
    notices_per_second: float = 5.0
    notice_burst: float = 10.0
    #: Per client: RelayLookup answers (issue 12, finding 7: a lookup tells whether a peer id is
    #: online, so unlimited lookups let one client watch many peers' presence). A client looks a
    #: peer up once per connection attempt; a burst of 20 covers (re)connecting to a contact
    #: list at start, 1 per second covers retries. Over it: RelayError 429 on the control stream.
    lookups_per_second: float = 1.0
    lookup_burst: float = 20.0
    #: Control connection idle timeout (QUIC max_idle_timeout, RFC 9000 section 10.1): a client
    #: that disappears is forgotten after this long. Clients are told to PING every third.
    idle_timeout: float = 30.0
    #: A control connection must register within this many seconds or it is closed.
    register_timeout: float = 10.0
    #: Most registered clients and most control connections (registered or not).
    max_clients: int = 10_000
    max_connections: int = 12_000
    #: Control connections from one IPv4 address or IPv6 /64 (:func:`address_prefix`; keys are
    #: free, so one host could otherwise fill the relay; generous because a carrier-grade NAT
    #: puts many users behind one IP).
    max_connections_per_ip: int = 256
    #: New control connections (QUIC Initials creating state) per second, relay-wide.
    new_connections_per_second: float = 200.0
    new_connection_burst: float = 400.0
    #: QUIC Retry (relay/retry.py): "load" asks unvalidated Initials to prove their address
    #: only while the new-connection bucket is below half; "always" / "never" as they say.
    retry: Literal["load", "always", "never"] = "load"
    #: How long close() waits for CONNECTION_CLOSE to go out before dropping connections.
    shutdown_grace: float = 0.5
    #: Memory for control connections in bytes, or None for ``max_connections`` alone: the
    #: relay holds at most ``memory_budget // CONNECTION_BYTES`` of them (see
    #: :attr:`connection_cap`). Per client the rest is bounded too: its stream data by
    #: ``relay.control.CONTROL_RECEIVE_BUFFER``, its frames by the rate limits (never queued).
    memory_budget: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "packets_per_second",
            "bytes_per_second",
            "notices_per_second",
            "lookups_per_second",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in (
            "packet_burst",
            "byte_burst",
            "notice_burst",
            "new_connection_burst",
            "lookup_burst",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.idle_timeout <= 0 or self.register_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if min(self.max_clients, self.max_connections, self.max_connections_per_ip) < 1:
            raise ValueError("max_clients and max_connections(_per_ip) must be >= 1")
        if self.retry not in ("load", "always", "never"):
            raise ValueError("retry must be 'load', 'always' or 'never'")
        if self.memory_budget is not None and self.memory_budget < CONNECTION_BYTES:
            raise ValueError(f"memory_budget must be >= {CONNECTION_BYTES} bytes (one connection)")

    @property
    def connection_cap(self) -> int:
        """Most control connections (registered or not): ``max_connections``, lowered to what
        ``memory_budget`` holds at ``CONNECTION_BYTES`` each."""
        if self.memory_budget is None:
            return self.max_connections
        return min(self.max_connections, self.memory_budget // CONNECTION_BYTES)

    @property
    def keepalive_ms(self) -> int:
        """What clients are told: PING three times per idle timeout (loss-tolerant)."""
        return max(1, int(self.idle_timeout * 1000 / 3))


class ClientLimiter:
    """The buckets of one registered client."""

    __slots__ = ("bytes", "lookups", "notices", "packets")

    def __init__(self, limits: RelayLimits, now: float) -> None:
        self.packets = TokenBucket(limits.packets_per_second, limits.packet_burst, now)
        self.bytes = TokenBucket(limits.bytes_per_second, limits.byte_burst, now)
        self.notices = TokenBucket(limits.notices_per_second, limits.notice_burst, now)
        self.lookups = TokenBucket(limits.lookups_per_second, limits.lookup_burst, now)

    def allow_frame(self, now: float, size: int) -> bool:
        """One frame of ``size`` payload bytes: both buckets must allow it (none spent if not)."""
        if not self.packets.take(now):
            return False
        if not self.bytes.take(now, size):
            self.packets.refund()  # the frame is not sent
            return False
        return True
