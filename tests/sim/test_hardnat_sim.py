"""The hard-NAT stages end to end in the simulator: real endpoints, relay, QUIC and checks.

Topology as in ``test_direct_sim`` (relay + RFC 5780 STUN at 198.51.100.20/.21, each peer
behind its own NAT, 10 ms per WAN link: relayed RTT 80 ms, direct RTT 40 ms). A 50 pps echo
call runs throughout; success means the call moved onto the direct path found by the stage
and no frame was lost. Rates are over fixed seeds (deterministic) with a Wilson 95% interval.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest
from test_direct_sim import RELAY, RELAY_ALT_IP, STUN, WAN_LINK, _identity, _place, echo

from punchthrough.endpoint import Endpoint
from punchthrough.relay import RelayServer
from punchthrough.sim import Host, World, run
from punchthrough.traversal.hardnat.stats import success_probability, wilson_interval


async def _call(
    nat_a: str, nat_b: str, *, duration: float, nat_b_kw: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One echo call a -> b; also counts every socket left open on both hosts afterwards."""
    world = World()
    relay_host = world.add_host("relay", RELAY[0], RELAY_ALT_IP, link=WAN_LINK)
    relay = await RelayServer.start(relay_host, [RELAY], alt_ip=RELAY_ALT_IP)
    hosts: list[Host] = []
    try:
        a_host, _ = _place(world, "a", nat_a, 1)
        b_host, _ = _place(world, "b", nat_b, 2, **(nat_b_kw or {}))
        hosts = [a_host, b_host]
        async with (
            Endpoint.bind(_identity(1), relays=[RELAY], stun=STUN, network=a_host) as ea,
            Endpoint.bind(_identity(2), relays=[RELAY], stun=STUN, network=b_host) as eb,
        ):
            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, len(b_host.sockets), len(a_host.sockets))
                    await asyncio.sleep(0.1)

            watcher = asyncio.ensure_future(watch())
            try:
                result = await echo(world, ea, eb, duration=duration)
            finally:
                watcher.cancel()
            await asyncio.sleep(0.5)  # the acceptor's side of the call winds down
            # Once the call is over only each endpoint's main socket is left.
            result["sockets_after_call"] = [len(h.sockets) for h in hosts]
            result["peak_sockets"] = peak
        result["sockets_after_close"] = [len(h.sockets) for h in hosts]
        return result
    finally:
        await relay.close()


def _stage(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in result["traversal"]["stages"] if s["stage"] == name)


def test_birthday_attack_connects_a_random_nat_to_an_endpoint_independent_one() -> None:
    """eim-apdf (easy, dialer) vs apdm-random (hard) over 20 seeds: the birthday attack."""
    results = [run(_call("eim-apdf", "apdm-random", duration=10.0), seed=s) for s in range(20)]
    ok = [r for r in results if r["path"] == "direct"]
    lo, _hi = wilson_interval(len(ok), len(results))
    # Planned P = 1 - exp(-256 * 1024 / 64512) = 0.98 per attempt; retries add more.
    assert lo >= 0.8, (len(ok), len(results))
    for r in results:
        assert r["frames_lost"] == 0 and r["frames_corrupt"] == 0
        assert r["sockets_after_call"] == [1, 1] and r["sockets_after_close"] == [0, 0]
        assert r["peak_sockets"] <= 256 + 2  # the budget: 256 pinholes + main + one STUN
    for r in ok:
        assert r["traversal"]["strategy"] == "birthday"
        bd = _stage(r, "birthday")
        assert bd["status"] == "succeeded" and bd["role"] == "easy"
        assert bd["sockets"] == 256 and 0 < bd["probes_sent"] <= 1024
        assert bd["range_size"] > 1024  # estimated from 4 samples (German tank)
    times = sorted(r["traversal"]["direct_ms"] for r in ok)
    # expected probes to the first hit ~ N/n = 252 at 150/s ~ 1.7 s, after ~0.9 s of setup
    assert statistics.median(times) < 5000, times


def test_birthday_hit_rate_follows_the_formula_with_fewer_probes() -> None:
    """Budget-limited attack (n=256, m=256, one attempt): measured rate vs 1 - exp(-n*m/N)."""
    from punchthrough.endpoint.config import EndpointConfig
    from punchthrough.traversal.hardnat.plan import Budget

    cfg = EndpointConfig(hardnat_budget=Budget(birthday_probes=256, birthday_max_duration=4.0))

    async def body(seed: int) -> bool:
        world = World()
        relay_host = world.add_host("relay", RELAY[0], RELAY_ALT_IP, link=WAN_LINK)
        relay = await RelayServer.start(relay_host, [RELAY], alt_ip=RELAY_ALT_IP)
        try:
            a_host, _ = _place(world, "a", "eim-apdf", 1)
            b_host, _ = _place(world, "b", "apdm-random", 2)
            async with (
                Endpoint.bind(
                    _identity(1), relays=[RELAY], stun=STUN, network=a_host, config=cfg
                ) as ea,
                Endpoint.bind(
                    _identity(2), relays=[RELAY], stun=STUN, network=b_host, config=cfg
                ) as eb,
            ):
                r = await echo(world, ea, eb, duration=6.0)
                bd = _stage(r, "birthday")
                assert bd["status"] in ("succeeded", "failed")
                assert bd["probes_sent"] <= 256
                return bool(r["path"] == "direct")
        finally:
            await relay.close()

    trials = 30
    hits = sum(run(body(s), seed=100 + s) for s in range(trials))
    lo, hi = wilson_interval(hits, trials)
    p = success_probability(256, 256, 64512)  # 0.64
    assert lo <= p <= hi, (hits, trials, p)


@pytest.mark.parametrize("seed", range(5))
def test_port_prediction_connects_a_sequential_nat(seed: int) -> None:
    """eim-apdf vs apdm-sequential (delta 1, no churn), both dialling directions."""
    for a, b in (("eim-apdf", "apdm-sequential"), ("apdm-sequential", "eim-apdf")):
        r = run(_call(a, b, duration=3.0), seed=seed)
        assert r["path"] == "direct" and r["frames_lost"] == 0, r["traversal"]
        assert r["traversal"]["strategy"] == "port-prediction"
        assert r["traversal"]["direct_ms"] < 1000
        assert r["sockets_after_call"] == [1, 1]


def test_port_prediction_with_delta_two() -> None:
    r = run(_call("eim-apdf", "apdm-sequential", duration=3.0, nat_b_kw={"delta": 2}), seed=3)
    assert r["path"] == "direct" and r["traversal"]["strategy"] == "port-prediction"
    assert r["frames_lost"] == 0


def test_two_random_nats_stay_on_the_relay_and_say_why() -> None:
    r = run(_call("apdm-random", "apdm-random", duration=7.0), seed=1)
    assert r["path"] == "relay" and r["frames_lost"] == 0
    bd = _stage(r, "birthday")
    assert bd["status"] == "skipped" and "staying on the relay" in bd["reason"]
    assert "P ~ n*m/(N1*N2)" in bd["reason"]
    assert r["peak_sockets"] <= 3  # no birthday sockets were opened


def test_mutual_prediction_connects_two_sequential_nats() -> None:
    """apdm-sequential vs apdm-sequential (delta 1, no churn) over 20 seeds: both sides take
    fresh samples, swap HardNatProbe and send their k-th fresh flow to the peer's k-th."""
    results = [
        run(_call("apdm-sequential", "apdm-sequential", duration=8.0), seed=s) for s in range(20)
    ]
    ok = [r for r in results if r["path"] == "direct"]
    print("mutual direct", len(ok), "of", len(results))
    for r in results:
        assert r["frames_lost"] == 0 and r["frames_corrupt"] == 0
        assert r["sockets_after_call"] == [1, 1] and r["sockets_after_close"] == [0, 0]
        assert r["peak_sockets"] <= 16 + 2
    for r in ok:
        assert r["traversal"]["strategy"] == "port-prediction"
        pp = _stage(r, "port-prediction")
        assert pp["status"] == "succeeded" and pp["role"] == "mutual"
    assert len(ok) >= 18, [(r["path"], _stage(r, "port-prediction")) for r in results]
