"""Issue 12, finding 4b: the per-source rate limit of a STUN server's answers."""

from __future__ import annotations

import asyncio

import pytest

from punchthrough.netio import Address, DatagramSocket, UdpNetwork
from punchthrough.relay.listen import bind_listen
from punchthrough.stun import (
    Message,
    MessageClass,
    Method,
    RateLimit,
    SourceRateLimiter,
    StunServer,
    StunServerCore,
    encode,
)
from punchthrough.stun.ratelimit import source_key

LOCAL = ("192.0.2.1", 3478)


def _request() -> bytes:
    return encode(Message(Method.BINDING, MessageClass.REQUEST))


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_flooding_source_is_limited_while_another_is_answered() -> None:
    clock = _Clock()
    core = StunServerCore([LOCAL], rate_limit=RateLimit(rate=10, burst=20), clock=clock)
    flood, other = ("203.0.113.7", 1000), ("198.51.100.2", 2000)
    answered = sum(bool(core.handle(_request(), flood, LOCAL)) for _ in range(1000))
    assert answered == 20  # the burst, then nothing until the bucket refills
    assert core.stats["rate_limited"] == 980
    assert core.stats["dropped"] == 980
    assert core.handle(_request(), other, LOCAL)  # another source is still answered
    assert not core.handle(_request(), (flood[0], 1001), LOCAL)  # a new port does not help
    clock.now += 1.0
    answered = sum(bool(core.handle(_request(), flood, LOCAL)) for _ in range(1000))
    assert answered == 10  # one second at 10 per second


def test_default_limit_is_on_and_lets_a_netcheck_burst_through() -> None:
    core = StunServerCore([LOCAL], clock=_Clock())
    src = ("198.51.100.3", 4000)
    answered = sum(bool(core.handle(_request(), src, LOCAL)) for _ in range(1000))
    assert 32 <= answered < 1000


def test_limiter_table_stays_bounded_under_spoofed_sources() -> None:
    clock = _Clock()
    limit = RateLimit(rate=1, burst=2, max_sources=64)
    core = StunServerCore([LOCAL], rate_limit=limit, clock=clock)
    for i in range(10_000):
        core.handle(_request(), (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 9), LOCAL)
        clock.now += 0.0001
    assert core.rate_limiter is not None
    assert len(core.rate_limiter) == 64
    assert core.stats["sources_evicted"] == 10_000 - 64
    assert core.stats["responses"] == 10_000  # each spoofed source sent once: all within limit


def test_eviction_forgets_least_recently_seen_source() -> None:
    clock = _Clock()
    limiter = SourceRateLimiter(RateLimit(rate=0, burst=1, max_sources=2), clock)
    assert limiter.allow("192.0.2.10")
    assert limiter.allow("192.0.2.11")
    assert not limiter.allow("192.0.2.10")  # exhausted, and now the most recently seen
    assert limiter.allow("192.0.2.12")  # evicts .11, not the exhausted .10
    assert not limiter.allow("192.0.2.10")
    assert limiter.evictions == 1


def test_ipv6_sources_share_their_slash_64() -> None:
    limiter = SourceRateLimiter(RateLimit(rate=0, burst=2), _Clock())
    assert limiter.allow("2001:db8:1:2::1")
    assert limiter.allow("2001:db8:1:2:ffff::9")
    assert not limiter.allow("2001:db8:1:2:abcd::1")  # another address, same /64, same bucket
    assert limiter.allow("2001:db8:1:3::1")
    assert source_key("::ffff:192.0.2.1") == "192.0.2.1"


def test_clock_going_backwards_refills_nothing() -> None:
    clock = _Clock()
    clock.now = 100.0
    limiter = SourceRateLimiter(RateLimit(rate=1000, burst=1), clock)
    assert limiter.allow("192.0.2.1")
    clock.now = 50.0
    assert not limiter.allow("192.0.2.1")


def test_rate_limit_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimit(burst=0)
    with pytest.raises(ValueError):
        RateLimit(max_sources=0)


# --- both users of the core get the limit ---------------------------------------------------------

LO, LO_OTHER = "127.0.0.1", "127.0.0.3"  # Linux routes all of 127/8 to lo
#: A flood bigger than the burst, small enough for loopback: bounded in count, not in time.
FLOOD = 200


async def test_stun_server_over_loopback_limits_a_flood_and_answers_another_source() -> None:
    net = UdpNetwork()
    server = await StunServer.start(net, [(LO, 0)], rate_limit=RateLimit(rate=0, burst=10))
    flooder, other = await net.bind(LO, 0), await net.bind(LO_OTHER, 0)
    got: dict[str, int] = {LO: 0, LO_OTHER: 0}
    for s in (flooder, other):
        s.set_receiver(lambda data, addr, ip=s.local_address[0]: got.__setitem__(ip, got[ip] + 1))
    try:
        for _ in range(FLOOD):
            flooder.sendto(_request(), server.addresses[0])
        other.sendto(_request(), server.addresses[0])
        async with asyncio.timeout(5):
            while server.stats["rate_limited"] + server.stats["responses"] < FLOOD + 1:
                await asyncio.sleep(0.01)
            while got[LO] + got[LO_OTHER] < server.stats["responses"]:
                await asyncio.sleep(0.01)
        assert server.stats["rate_limited"] == FLOOD - 10
        assert got == {LO: 10, LO_OTHER: 1}
    finally:
        for s in (flooder, other):
            s.close()
        server.close()


async def test_relay_stun_core_is_rate_limited_without_relay_changes() -> None:
    # The relay builds its STUN core in relay.listen with the defaults: the limit is on there.
    sockets: dict[Address, DatagramSocket] = {}
    try:
        primaries, core = await bind_listen(UdpNetwork(), [(LO, 0)], None, sockets, None)
        assert core.rate_limiter is not None
        assert core.rate_limiter.limit == RateLimit()
        src = ("198.51.100.4", 1)
        answered = sum(bool(core.handle(_request(), src, primaries[0])) for _ in range(FLOOD))
        assert answered <= RateLimit().burst + 1  # +1: the loop's clock moves a little
    finally:
        for s in sockets.values():
            s.close()
