"""Hard-NAT stages end to end in the simulator: port prediction under churn, the birthday attack
against the formula, and the cost of one birthday attempt.

The WHOLE system, not a model of it: per trial a fresh simulated internet (virtual time, seeded)
with our relay (RFC 5780 STUN on 198.51.100.20/.21, as tests/sim/test_direct_sim.py lays it
out), peer A behind an ``eim-apdf`` NAT and peer B behind the hard NAT, 10 ms one way on every
WAN link (relayed RTT 80 ms, direct 40 ms). Both run the real Endpoint (netcheck samples,
relay registration, QUIC, control stream, waterfall); A calls B and streams a 50 pps echo call.
A trial succeeds when the call moved onto a direct path found by the stage under test.
``direct_ms`` is the traversal report's time to direct, counted from the start of A's
connection (virtual ms); ``stage_ms`` is from the stage's own start to its hit.

(a) Port prediction, eim-apdf (A, predicting) vs apdm-sequential (B, delta 1, ports
    40000-40999) with background churn on B's NAT of 0, 1, 5 and 10 new flows per second
    (``NatConfig.churn``: other hosts' flows, a Poisson process, each taking the next port).
    Calls last ``PREDICTION_CALL_S``: one attempt (a failed hard stage retries only after 30 s).
    Churn also disturbs netcheck's samples: a NAT whose samples no longer look sequential is
    reported as random and gets the birthday attack instead; ``strategies`` counts what won.
(b) Birthday attack, eim-apdf (A, easy: probes) vs apdm-random (B, hard: n = 256 sockets) with
    m = 256, 512, 1024 probes (``Budget.birthday_probes`` through ``EndpointConfig``), the
    default pace of 150 probes/s. B's NAT picks ports uniformly in R = 1024..65535
    (``sim.nat`` profile ``apdm-random``: 64512 ports; the Linux ``masquerade fully-random``
    range). One attempt per call (calls end before the 30 s retry). Measured rate with a Wilson
    95% interval against 1 - exp(-n*m/R) and the exact hypergeometric form.
(c) Cost of one birthday attempt, in this process: CPU seconds (``time.process_time``) and peak
    Python heap (``tracemalloc``) of one whole simulated trial (both endpoints, relay, NATs,
    256 simulated sockets, up to 1024 probes, the call around it), minus the same trial's
    figures for an easy pair that needs no attack (eim-apdf vs eim-apdf, the hole punch): the
    difference is what the attack adds. Simulated sockets, not kernel ones: the lab's 256 UDP
    sockets cost the kernel more (file descriptors, socket buffers) than this shows.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any

from punchthrough.apps.echo import run_echo_session, serve_endpoint
from punchthrough.endpoint import Endpoint
from punchthrough.endpoint.config import EndpointConfig
from punchthrough.identity import Identity
from punchthrough.netio import Address
from punchthrough.relay import RelayServer
from punchthrough.sim import Host, Link, World, profile, run
from punchthrough.traversal.hardnat.plan import BIRTHDAY_RATE, Budget
from punchthrough.traversal.hardnat.stats import (
    success_probability,
    success_probability_exact,
    wilson_interval,
)

RELAY: Address = ("198.51.100.20", 3478)
RELAY_ALT_IP = "198.51.100.21"
STUN: list[Address] = [("198.51.100.20", 3479), (RELAY_ALT_IP, 3478), (RELAY_ALT_IP, 3479)]
WAN_LINK = Link(0.010)
LAN_LINK = Link(0.0)
PPS = 50

CHURNS = (0.0, 1.0, 5.0, 10.0)
PREDICTION_TRIALS = 50
#: Prediction connects within ~1 s or not at all (PREDICTION_MAX 4 s on the predicted side).
PREDICTION_CALL_S = 6.0
SOCKETS = 256
PROBES = (256, 512, 1024)
BIRTHDAY_TRIALS = 100
#: What B's NAT allocates from (sim.nat: the apdm-random profile's default range).
BIRTHDAY_RANGE = profile("apdm-random").port_range  # type: ignore[union-attr]
COST_TRIALS = 5


def _identity(n: int) -> Identity:
    return Identity.from_private_bytes(bytes([n]) * 32)


def _place(world: World, name: str, nat: str, n: int, **nat_kw: Any) -> Host:
    cfg = profile(nat, **nat_kw)
    if cfg is None:
        return world.add_host(name, f"192.0.2.{n}", link=WAN_LINK)
    box = world.add_nat(
        f"nat-{name}", cfg, f"203.0.113.{n}", inside_ip=f"10.0.{n}.1", link=WAN_LINK
    )
    return box.add_host(name, f"10.0.{n}.2", link=LAN_LINK)


async def call(
    nat_b: str,
    *,
    duration: float,
    nat_b_kw: dict[str, Any] | None = None,
    config: EndpointConfig | None = None,
) -> dict[str, Any]:
    """One echo call from A (eim-apdf) to B (``nat_b``); the session result plus socket counts."""
    cfg = config or EndpointConfig()
    world = World()
    relay_host = world.add_host("relay", RELAY[0], RELAY_ALT_IP, link=WAN_LINK)
    relay = await RelayServer.start(relay_host, [RELAY], alt_ip=RELAY_ALT_IP)
    try:
        a = _place(world, "a", "eim-apdf", 1)
        b = _place(world, "b", nat_b, 2, **(nat_b_kw or {}))
        async with (
            Endpoint.bind(_identity(1), relays=[RELAY], stun=STUN, network=a, config=cfg) as ea,
            Endpoint.bind(_identity(2), relays=[RELAY], stun=STUN, network=b, config=cfg) as eb,
        ):
            server = asyncio.ensure_future(serve_endpoint(eb))
            try:
                result: dict[str, Any] = await run_echo_session(
                    ea, eb.peer_id, duration=duration, pps=PPS
                )
            finally:
                server.cancel()
                await asyncio.gather(server, return_exceptions=True)
            await asyncio.sleep(0.5)  # B's side of the call winds down
            result["sockets_after_call"] = [len(a.sockets), len(b.sockets)]
        return result
    finally:
        await relay.close()


def _stage(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in result["traversal"]["stages"] if s["stage"] == name)


def _pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def _rate(successes: int, trials: int) -> dict[str, Any]:
    lo, hi = wilson_interval(successes, trials)
    return {
        "trials": trials,
        "successes": successes,
        "success_rate": round(successes / trials, 4),
        "ci95": [round(lo, 4), round(hi, 4)],
    }


def _times(name: str, values: list[float]) -> dict[str, Any]:
    return {
        f"{name}_p50": _pct(values, 0.50),
        f"{name}_p95": _pct(values, 0.95),
    }


def bench_prediction(trials: int = PREDICTION_TRIALS, seed0: int = 1000) -> list[dict[str, Any]]:
    rows = []
    for k, churn in enumerate(CHURNS):
        ok, direct, stage_ms, lost, leaks = 0, [], [], 0, 0
        strategies: Counter[str] = Counter()
        for t in range(trials):
            r = run(
                call("apdm-sequential", duration=PREDICTION_CALL_S, nat_b_kw={"churn": churn}),
                seed=seed0 + 1000 * k + t,
            )
            strategies[str(r["strategy"])] += 1
            lost += r["frames_lost"]
            leaks += r["sockets_after_call"] != [1, 1]
            if r["path"] == "direct" and r["strategy"] == "port-prediction":
                ok += 1
                direct.append(r["direct_ms"])
                pp = _stage(r, "port-prediction")
                stage_ms.append(round(pp["at_ms"] - pp["started_ms"], 1))
        rows.append(
            {
                "churn_flows_per_s": churn,
                **_rate(ok, trials),
                **_times("direct_ms", direct),
                **_times("stage_ms", stage_ms),
                "strategies": dict(strategies),
                "frames_lost_total": lost,
                "trials_with_sockets_left_open": leaks,
            }
        )
    return rows


def _birthday_config(m: int) -> tuple[EndpointConfig, float]:
    """Budget for m probes, and a call long enough for the whole attack but one attempt."""
    budget = Budget(birthday_sockets=SOCKETS, birthday_probes=m)
    # setup (netcheck, relay, 256 pinholes ~0.5 s) + m probes at the pace + the last answers
    duration = 3.0 + m / BIRTHDAY_RATE + 2.0
    return EndpointConfig(hardnat_budget=budget), duration


def bench_birthday(trials: int = BIRTHDAY_TRIALS, seed0: int = 2000) -> list[dict[str, Any]]:
    lo, hi = BIRTHDAY_RANGE
    size = hi - lo + 1
    rows = []
    for k, m in enumerate(PROBES):
        cfg, duration = _birthday_config(m)
        ok, direct, stage_ms, probes, lost, leaks, failed_sent = 0, [], [], [], 0, 0, []
        for t in range(trials):
            # seeds of their own per m: the same seed would replay the same pinhole ports and
            # probe order, making the rows for different m the same trials cut short
            r = run(call("apdm-random", duration=duration, config=cfg), seed=seed0 + 1000 * k + t)
            lost += r["frames_lost"]
            leaks += r["sockets_after_call"] != [1, 1]
            bd = _stage(r, "birthday")
            if bd["status"] == "succeeded" and r["path"] == "direct":
                ok += 1
                direct.append(r["direct_ms"])
                stage_ms.append(round(bd["at_ms"] - bd["started_ms"], 1))
                probes.append(bd["probes_sent"])
            elif "probes_sent" in bd:
                failed_sent.append(bd["probes_sent"])
        formula = success_probability(SOCKETS, m, size)
        rate = _rate(ok, trials)
        rows.append(
            {
                "sockets_n": SOCKETS,
                "probes_m": m,
                "port_range": [lo, hi],
                "range_size_R": size,
                **rate,
                "formula_1_minus_exp_nm_over_R": round(formula, 4),
                "exact_hypergeometric": round(success_probability_exact(SOCKETS, m, size), 4),
                "formula_within_ci95": rate["ci95"][0] <= formula <= rate["ci95"][1],
                **_times("direct_ms", direct),
                **_times("stage_ms", stage_ms),
                "probes_to_hit_median": statistics.median(probes) if probes else None,
                "probes_sent_by_failed_attempts": sorted(failed_sent),
                "call_s": duration,
                "frames_lost_total": lost,
                "trials_with_sockets_left_open": leaks,
            }
        )
    return rows


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds, peak traced heap KiB) of one call of ``fn``."""
    gc.collect()
    t0 = time.process_time()
    fn()
    cpu = time.process_time() - t0
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return cpu, peak / 1024


def bench_cost(trials: int = COST_TRIALS, seed0: int = 3000) -> dict[str, Any]:
    cfg, duration = _birthday_config(1024)
    attack_cpu, attack_heap, base_cpu, base_heap, probes = [], [], [], [], []

    for t in range(trials):
        seed = seed0 + t
        out: dict[str, Any] = {}

        def attack(seed: int = seed, out: dict[str, Any] = out) -> None:
            r = run(call("apdm-random", duration=duration, config=cfg), seed=seed)
            out["probes"] = _stage(r, "birthday").get("probes_sent")

        def baseline(seed: int = seed) -> None:
            run(call("eim-apdf", duration=duration, config=cfg), seed=seed)

        cpu, heap = _measure(attack)
        attack_cpu.append(cpu)
        attack_heap.append(heap)
        probes.append(out["probes"])
        cpu, heap = _measure(baseline)
        base_cpu.append(cpu)
        base_heap.append(heap)
    med = statistics.median
    return {
        "trials": trials,
        "call_s": duration,
        "birthday_trial_cpu_ms_median": round(med(attack_cpu) * 1000, 1),
        "baseline_trial_cpu_ms_median": round(med(base_cpu) * 1000, 1),
        "attempt_cpu_ms_median": round((med(attack_cpu) - med(base_cpu)) * 1000, 1),
        "birthday_trial_peak_heap_kib_median": round(med(attack_heap), 1),
        "baseline_trial_peak_heap_kib_median": round(med(base_heap), 1),
        "attempt_peak_heap_kib_median": round(med(attack_heap) - med(base_heap), 1),
        "probes_sent": probes,
        "note": "attempt = birthday trial minus baseline trial (same call, no attack); "
        "simulated sockets and packets, one process",
    }


def bench_hardnat_sim() -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {"how": __doc__}
    out["prediction"] = bench_prediction()
    out["birthday"] = bench_birthday()
    out["cost_one_birthday_attempt"] = bench_cost()
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


if __name__ == "__main__":
    import json
    import sys

    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else None
    t0 = time.perf_counter()
    if which == "prediction":
        res: Any = bench_prediction(n or PREDICTION_TRIALS)
    elif which == "birthday":
        res = bench_birthday(n or BIRTHDAY_TRIALS)
    elif which == "cost":
        res = bench_cost(n or COST_TRIALS)
    else:
        res = bench_hardnat_sim()
    print(json.dumps(res, indent=2))
    print(f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
