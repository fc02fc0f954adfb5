"""Property tests on the sans-IO NAT model (no event loop: time is passed explicitly)."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punchthrough.nat import PortAllocation, classify_port_allocation
from punchthrough.netio import Address as Addr
from punchthrough.sim.nat import (
    ALLOCATIONS,
    FILTERINGS,
    Admitted,
    AllocationPolicy,
    Dropped,
    FilteringBehaviour,
    NatConfig,
    NatTable,
    Translated,
    nat_config,
    profile,
)

EXT = "203.0.113.1"
ALICE = ("10.0.1.2", 5000)

ips = st.sampled_from([f"198.51.100.{i}" for i in range(1, 9)])
ports = st.integers(1, 65535)
remotes = st.lists(st.tuples(ips, ports), min_size=1, max_size=12, unique=True)
allocations = st.sampled_from(ALLOCATIONS)


def table(cfg: NatConfig, seed: int = 0) -> NatTable:
    return NatTable(cfg, EXT, random.Random(seed))


def out(t: NatTable, now: float, internal: tuple[str, int], remote: tuple[str, int]) -> int:
    res = t.outbound(now, internal, remote)
    assert isinstance(res, Translated), res
    assert res.external[0] == EXT
    return res.external[1]


@given(remotes, allocations, st.sampled_from(FILTERINGS), st.integers(0, 2**32))
def test_eim_one_external_port_for_every_destination(
    rs: list[Addr], alloc: AllocationPolicy, filt: FilteringBehaviour, seed: int
) -> None:
    t = table(NatConfig("eim", filt, alloc), seed)
    assert len({out(t, i * 0.1, ALICE, r) for i, r in enumerate(rs)}) == 1


@given(remotes, allocations, st.integers(0, 2**32))
def test_adm_port_depends_on_remote_ip_only(
    rs: list[Addr], alloc: AllocationPolicy, seed: int
) -> None:
    t = table(NatConfig("adm", "apdf", alloc), seed)
    by_ip: dict[str, int] = {}
    for r in rs:
        port = out(t, 0.0, ALICE, r)
        assert by_ip.setdefault(r[0], port) == port  # same IP, same port
    assert len(set(by_ip.values())) == len(by_ip)  # different IPs, different ports


@given(remotes, allocations, st.integers(0, 2**32))
def test_apdm_new_port_per_remote_endpoint(
    rs: list[Addr], alloc: AllocationPolicy, seed: int
) -> None:
    t = table(NatConfig("apdm", "apdf", alloc), seed)
    got = [out(t, 0.0, ALICE, r) for r in rs]
    assert len(set(got)) == len(rs)
    assert [out(t, 1.0, ALICE, r) for r in rs] == got  # existing flows keep their port


@given(ips, ports, ports)
def test_apdf_drops_unseen_remote_port(ip: str, p1: int, p2: int) -> None:
    t = table(nat_config("eim-apdf"))
    ext = out(t, 0.0, ALICE, (ip, p1))
    assert isinstance(t.inbound(0.1, (ip, p1), ext), Admitted)
    res = t.inbound(0.1, (ip, p2), ext)
    assert isinstance(res, Admitted) == (p1 == p2)
    if isinstance(res, Dropped):
        assert "filtered (apdf)" in res.reason


@given(ports, ports)
def test_adf_admits_any_port_of_contacted_ip_only(p1: int, p2: int) -> None:
    t = table(nat_config("eim-adf"))
    ext = out(t, 0.0, ALICE, ("198.51.100.1", p1))
    assert isinstance(t.inbound(0.1, ("198.51.100.1", p2), ext), Admitted)
    assert isinstance(t.inbound(0.1, ("198.51.100.9", p1), ext), Dropped)


def test_eif_admits_strangers_but_not_unmapped_ports() -> None:
    t = table(nat_config("eim-eif"))
    ext = out(t, 0.0, ALICE, ("198.51.100.1", 3478))
    res = t.inbound(0.1, ("192.0.2.7", 999), ext)
    assert isinstance(res, Admitted) and res.internal == ALICE
    assert isinstance(t.inbound(0.1, ("192.0.2.7", 999), ext + 1), Dropped)


@given(st.floats(1.0, 600.0), st.floats(0.0, 2.0))
def test_expired_binding_drops_inbound(lifetime: float, slack: float) -> None:
    cfg = NatConfig(unreplied_lifetime=lifetime, binding_lifetime=lifetime)
    t = table(cfg)
    remote = ("198.51.100.1", 3478)
    ext = out(t, 0.0, ALICE, remote)
    assert isinstance(t.inbound(lifetime * 0.99, remote, ext), Admitted)  # refreshes (inbound)
    later = lifetime * 0.99 + lifetime + slack
    res = t.inbound(later, remote, ext)
    assert isinstance(res, Dropped) and "no binding" in res.reason
    assert t.bindings == []


def test_outbound_refreshes_and_inbound_refresh_is_configurable() -> None:
    remote = ("198.51.100.1", 3478)
    for inbound_refreshes in (True, False):
        t = table(
            NatConfig(
                unreplied_lifetime=10, binding_lifetime=10, inbound_refreshes=inbound_refreshes
            )
        )
        ext = out(t, 0.0, ALICE, remote)
        for now in (5.0, 9.0):  # inbound only: keeps it alive only if inbound refreshes
            assert isinstance(t.inbound(now, remote, ext), Admitted)
        assert isinstance(t.inbound(12.0, remote, ext), Admitted) == inbound_refreshes
    t = table(NatConfig(unreplied_lifetime=10, binding_lifetime=10, inbound_refreshes=False))
    ext = out(t, 0.0, ALICE, remote)
    for now in (8.0, 16.0, 24.0):  # outbound always refreshes
        assert out(t, now, ALICE, remote) == ext
    assert isinstance(t.inbound(33.0, remote, ext), Admitted)
    assert isinstance(t.inbound(34.5, remote, ext), Dropped)


def test_replied_binding_lives_longer_than_unreplied() -> None:
    remote = ("198.51.100.1", 3478)
    t = table(NatConfig())  # Linux defaults: 30 s unreplied, 120 s replied
    ext = out(t, 0.0, ALICE, remote)
    assert t.binding_for_port(ext, 31.0) is None
    ext = out(t, 40.0, ALICE, remote)
    assert isinstance(t.inbound(40.1, remote, ext), Admitted)
    assert t.binding_for_port(ext, 150.0) is not None
    assert t.binding_for_port(ext, 160.2) is None


@given(st.integers(-50, 50).filter(lambda d: d != 0), st.integers(0, 2**32))
def test_sequential_any_signed_delta_without_churn(delta: int, seed: int) -> None:
    t = table(NatConfig("apdm", "apdf", "sequential", delta=delta, port_range=(40000, 40999)), seed)
    got = [out(t, 0.0, ALICE, ("198.51.100.1", 1000 + i)) for i in range(8)]
    assert all(40000 <= p <= 40999 for p in got)
    assert [(b - a) % 1000 for a, b in itertools.pairwise(got)] == [delta % 1000] * 7


def test_sequential_counter_is_shared_by_all_lan_hosts() -> None:
    t = table(nat_config("apdm-sequential"))
    a = out(t, 0.0, ALICE, ("198.51.100.1", 3478))
    b = out(t, 0.0, ("10.0.1.3", 5000), ("198.51.100.1", 3478))
    c = out(t, 0.0, ALICE, ("198.51.100.2", 3478))
    assert (b - a, c - b) == (1, 1)


def _sample(t: NatTable, start: float, n: int, gap: float) -> list[int]:
    return [out(t, start + i * gap, ALICE, ("198.51.100.1", 2000 + i)) for i in range(n)]


@given(st.integers(0, 2**32))
@settings(max_examples=30)
def test_churn_makes_sequential_samples_show_gaps(seed: int) -> None:
    cfg = replace(nat_config("apdm-sequential"), port_range=(10000, 60000))
    quiet = _sample(table(cfg, seed), 0.0, 6, 0.05)
    assert [b - a for a, b in itertools.pairwise(quiet)] == [1] * 5
    busy = _sample(table(replace(cfg, churn=40.0), seed), 1.0, 6, 0.05)
    diffs = [b - a for a, b in itertools.pairwise(busy)]
    assert all(d >= 1 for d in diffs)
    # 40 flows/s over 5 gaps of 50 ms: P(no background flow at all) = exp(-10) ~ 5e-5
    assert sum(diffs) > 5


def test_churn_gaps_still_classify_as_sequential() -> None:
    cfg = replace(nat_config("apdm-sequential"), churn=20.0)
    ports = _sample(table(cfg, 7), 1.0, 6, 0.05)
    assert ports != list(range(ports[0], ports[0] + 6))  # gaps
    result = classify_port_allocation(ports)
    assert result.kind is PortAllocation.SEQUENTIAL and result.delta == 1


@given(st.integers(1024, 60000), st.integers(1, 500), st.integers(0, 2**32))
def test_random_allocation_stays_in_range(lo: int, width: int, seed: int) -> None:
    t = table(NatConfig("apdm", "apdf", "random", port_range=(lo, lo + width)), seed)
    got = [out(t, 0.0, ALICE, ("198.51.100.1", 1 + i)) for i in range(min(width + 1, 20))]
    assert all(lo <= p <= lo + width for p in got) and len(set(got)) == len(got)


def test_preserving_keeps_port_and_falls_back_on_clash() -> None:
    t = table(nat_config("eim-apdf"))
    remote = ("198.51.100.1", 3478)
    assert out(t, 0.0, ALICE, remote) == 5000
    other = out(t, 0.0, ("10.0.1.3", 5000), remote)  # same local port, second host
    assert other != 5000
    assert out(t, 0.0, ("10.0.1.3", 5000), ("198.51.100.2", 3478)) == other  # still EIM


def test_session_limit_and_recovery_after_expiry() -> None:
    t = table(NatConfig("apdm", "apdf", "random", session_limit=3, unreplied_lifetime=5))
    for i in range(3):
        out(t, 0.0, ALICE, ("198.51.100.1", 1000 + i))
    res = t.outbound(0.0, ALICE, ("198.51.100.1", 2000))
    assert isinstance(res, Dropped) and res.reason == "session table full"
    out(t, 0.0, ALICE, ("198.51.100.1", 1000))  # existing flows still pass
    out(t, 6.0, ALICE, ("198.51.100.1", 2000))  # the others expired


def test_churn_counts_against_the_session_limit() -> None:
    t = table(NatConfig(churn=100.0, session_limit=50, unreplied_lifetime=30))
    res = t.outbound(5.0, ALICE, ("198.51.100.1", 1))
    assert isinstance(res, Dropped) and res.reason == "session table full"


def test_mapping_rate_limit_is_per_internal_host() -> None:
    t = table(NatConfig("apdm", "apdf", "random", mapping_rate_limit=2.0, mapping_burst=2))
    results = [t.outbound(0.0, ALICE, ("198.51.100.1", 1000 + i)) for i in range(3)]
    assert [isinstance(r, Translated) for r in results] == [True, True, False]
    assert isinstance(t.outbound(0.0, ("10.0.1.3", 1), ("198.51.100.1", 1)), Translated)
    assert isinstance(t.outbound(0.5, ALICE, ("198.51.100.1", 2000)), Translated)  # 1 token back


def test_udp_blocked_drops_everything() -> None:
    t = table(nat_config("udp-blocked"))
    res = t.outbound(0.0, ALICE, ("198.51.100.1", 3478))
    assert isinstance(res, Dropped) and res.reason == "udp blocked"


def test_port_mapping_admits_strangers_and_is_used_outbound() -> None:
    t = table(nat_config("apdm-random"))
    b = t.map_port(0.0, ALICE, 6000, 100)
    assert b is not None and not isinstance(b, Dropped) and b.external_port == 6000
    res = t.inbound(1.0, ("192.0.2.9", 4444), 6000)
    assert isinstance(res, Admitted) and res.internal == ALICE
    assert out(t, 1.0, ALICE, ("198.51.100.1", 1)) == 6000  # explicit mapping is EIM
    assert t.map_port(2.0, ALICE, 0, 0) is None  # delete
    assert isinstance(t.inbound(3.0, ("192.0.2.9", 4444), 6000), Dropped)


def test_port_mapping_expires_and_checks_nonce() -> None:
    t = table(nat_config("eim-apdf"))
    nonce = b"n" * 12
    b = t.map_port(0.0, ALICE, 0, 60, nonce)
    assert b is not None and not isinstance(b, Dropped)
    assert isinstance(t.map_port(1.0, ALICE, 0, 60, b"x" * 12), Dropped)
    assert isinstance(t.inbound(59.0, ("192.0.2.9", 1), b.external_port), Admitted)
    # the stranger that came in now has a flow of its own (as conntrack would), others do not
    assert isinstance(t.inbound(61.0, ("192.0.2.10", 1), b.external_port), Dropped)


@pytest.mark.parametrize(
    "bad",
    [
        {"delta": 0},
        {"port_range": (0, 10)},
        {"port_range": (5, 4)},
        {"churn": -1.0},
        {"session_limit": 0},
        {"binding_lifetime": 0.0},
        {"mapping": "cone"},
    ],
)
def test_config_validation(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NatConfig(**bad)  # type: ignore[arg-type]


def test_unknown_profile_and_open_params() -> None:
    with pytest.raises(ValueError, match="unknown NAT profile"):
        profile("full-cone")
    with pytest.raises(ValueError):
        profile("open", delta=2)
    assert profile("open") is None
    with pytest.raises(ValueError, match="has no NAT"):
        nat_config("open")
    assert nat_config("apdm-sequential", delta=-3).delta == -3
