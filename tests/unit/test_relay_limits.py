"""Token buckets and per-client limits with a fake clock; the registry's invariants."""

from __future__ import annotations

import pytest

from punchthrough.identity import Identity
from punchthrough.relay import LocalRegistry, Registration, RelayLimits, TokenBucket
from punchthrough.relay.limits import ClientLimiter


def test_bucket_starts_full_and_refills_at_rate() -> None:
    b = TokenBucket(rate=10, burst=5, now=100.0)
    assert [b.take(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert not b.take(100.0625)  # 0.625 tokens
    assert b.take(100.125)  # 1.25 tokens after 0.125 s
    assert not b.take(100.125)
    assert b.available(1000.0) == 5  # never above burst


def test_bucket_ignores_a_clock_going_backwards() -> None:
    b = TokenBucket(rate=10, burst=2, now=50.0)
    assert b.take(50.0) and b.take(50.0)
    assert not b.take(10.0)  # earlier time: no refill, no crash
    assert not b.take(50.0)
    assert b.take(50.125)


def test_bucket_cost_and_refund() -> None:
    b = TokenBucket(rate=1000, burst=1500, now=0.0)
    assert b.take(0.0, 1400)
    assert not b.take(0.0, 200)  # 100 left
    b.refund(1400)
    assert b.available(0.0) == 1500  # refund capped at burst
    with pytest.raises(ValueError):
        TokenBucket(rate=1, burst=0, now=0.0)


def test_sustained_rate_matches_configuration() -> None:
    """Offer 10x the rate for 10 virtual seconds: about burst + rate * 10 pass."""
    b = TokenBucket(rate=2000, burst=2000, now=0.0)
    passed = sum(b.take(i / 20000) for i in range(200_000))
    assert 2000 + 2000 * 10 - 2 <= passed <= 2000 + 2000 * 10


def test_client_limiter_needs_both_buckets_and_refunds_packets() -> None:
    limits = RelayLimits(
        packets_per_second=100, packet_burst=10, bytes_per_second=1000, byte_burst=3000
    )
    lim = ClientLimiter(limits, now=0.0)
    assert lim.allow_frame(0.0, 1400) and lim.allow_frame(0.0, 1400)
    assert not lim.allow_frame(0.0, 1400)  # bytes exhausted (200 left)
    assert lim.packets.available(0.0) == 8  # the refused frame cost no packet token
    assert lim.allow_frame(0.0, 100)
    many = [lim.allow_frame(0.0, 1) for _ in range(20)]
    assert many.count(True) == 7  # packets run out first now


def test_limits_validate_and_derive_keepalive() -> None:
    assert RelayLimits().keepalive_ms == 10_000
    assert RelayLimits(idle_timeout=0.6).keepalive_ms == 200
    with pytest.raises(ValueError):
        RelayLimits(idle_timeout=0)
    with pytest.raises(ValueError):
        RelayLimits(packet_burst=0)


def _reg(ident: Identity, addr: tuple[str, int]) -> Registration:
    return Registration(
        ident.peer_id, addr, ("198.51.100.20", 3478), 0.0, ClientLimiter(RelayLimits(), 0.0)
    )


def test_registry_replaces_by_peer_and_by_address() -> None:
    reg = LocalRegistry({("198.51.100.20", 3478): ("198.51.100.20", 3478)})
    a, b = Identity.generate(), Identity.generate()
    a1 = _reg(a, ("203.0.113.1", 1000))
    assert reg.add(a1) == []
    a2 = _reg(a, ("203.0.113.1", 2000))  # same peer, new mapping (NAT rebinding)
    assert reg.add(a2) == [a1]
    assert reg.by_peer(a.peer_id.raw) is a2 and reg.by_address(("203.0.113.1", 1000)) is None
    assert not reg.remove(a1)  # stale: already replaced
    b1 = _reg(b, ("203.0.113.1", 2000))  # another peer from a2's address
    assert reg.add(b1) == [a2]
    assert len(reg) == 1 and reg.by_address(("203.0.113.1", 2000)) is b1
    assert reg.locate(b.peer_id) == (("198.51.100.20", 3478),)
    assert reg.locate(a.peer_id) == ()
    assert reg.move(b1, ("203.0.113.9", 7)) == []
    assert (
        reg.by_address(("203.0.113.9", 7)) is b1 and reg.by_address(("203.0.113.1", 2000)) is None
    )
    assert reg.remove(b1) and len(reg) == 0
