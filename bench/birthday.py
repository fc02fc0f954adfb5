"""Birthday attack: success rate over seeded trials against 1 - exp(-n*m/N), and its cost.

The PURE model, no sockets and no event loop (as tests/sim/test_hardnat_model.py): the real
sans-IO plans (traversal/hardnat/birthday.py: HardSidePlan, EasySidePlan, scan_range) drive two
sim NatTable objects (an apdm-random NAT with port range N, and an eim-apdf NAT) with a fixed
20 ms one-way delay, in time order; a trial succeeds when a check is admitted by the far NAT (the
moment the real code sees its first verified check). The easy side probes the hard NAT's range
as observed from 6 STUN samples (scan_range), exactly as phase A would.

Cost per attempt: CPU seconds (time.process_time around one trial) and peak Python heap
(tracemalloc, measured on a separate subset of trials because tracing slows the run). This is the
cost of the PLANNER + NAT MODEL, not of the real sockets (256 UDP sockets and ~1024 datagrams
cost the kernel more than this; see the lab for that).
"""

from __future__ import annotations

import heapq
import random
import statistics
import time
import tracemalloc
from typing import Any

from punchthrough.netio import Address
from punchthrough.sim.nat import Admitted, NatTable, Translated, nat_config
from punchthrough.traversal.hardnat.birthday import (
    MAX_DURATION,
    EasySidePlan,
    HardSidePlan,
    scan_range,
)
from punchthrough.traversal.hardnat.plan import BIRTHDAY_RATE
from punchthrough.traversal.hardnat.stats import success_probability, wilson_interval

HARD_IP, EASY_IP = "203.0.113.10", "198.51.100.50"
HARD_HOST, EASY_HOST = "10.0.0.2", "10.1.0.2"
EASY_MAIN: Address = (EASY_HOST, 6000)
STUN = [(f"192.0.2.{i}", 3478) for i in range(1, 7)]
OWD = 0.02  # s one way
LINUX_FULL = (1024, 65535)  # `masquerade fully-random` range
LINUX_EPHEMERAL = (32768, 60999)  # net.ipv4.ip_local_port_range default
#: (sockets n, probes m, hard NAT port range): the shipped defaults on two Linux ranges, and
#: two smaller attacks whose success rate is mid-range, where the formula is actually tested.
CASES: list[tuple[int, int, tuple[int, int]]] = [
    (256, 1024, LINUX_FULL),
    (256, 1024, LINUX_EPHEMERAL),
    (64, 256, LINUX_FULL),
    (16, 64, (20000, 20999)),
]
TRIALS = 500
MEMORY_TRIALS = 10


def trial(seed: int, n: int, m: int, hard_range: tuple[int, int]) -> float | None:
    """One attempt; model seconds from the easy side's first probe to success, or None."""
    rng = random.Random(seed)
    hard = NatTable(
        nat_config("apdm-random", port_range=hard_range), HARD_IP, random.Random(rng.random())
    )
    easy = NatTable(nat_config("eim-apdf"), EASY_IP, random.Random(rng.random()))
    observed = []
    for i, d in enumerate(STUN):
        t = hard.outbound(i * 0.002, (HARD_HOST, 5000), d)
        assert isinstance(t, Translated)
        observed.append(t.external[1])
    t = easy.outbound(0.0, EASY_MAIN, STUN[0])
    assert isinstance(t, Translated)
    easy_ext = t.external
    start = 1.0
    hp = HardSidePlan(easy_ext, start=start, sockets=n)
    easy_start = start + hp.easy_start_offset + OWD
    ep = EasySidePlan(
        HARD_IP,
        scan_range((min(observed), max(observed)), m),
        start=easy_start,
        rng=random.Random(rng.random()),
        probes=m,
        rate=BIRTHDAY_RATE,
        max_duration=MAX_DURATION,
    )
    sockets = {i: (HARD_HOST, 10000 + i) for i in hp.socket_ids}
    arrivals: list[tuple[float, int, str, Address, Address]] = []
    seq = 0
    while True:
        due = [d for d in (hp.next_deadline(), ep.next_deadline()) if d is not None]
        if arrivals:
            due.append(arrivals[0][0])
        if not due:
            return None
        now = min(due)
        if arrivals and arrivals[0][0] <= now:
            _, _, to, src, dst = heapq.heappop(arrivals)
            nat = easy if to == "easy" else hard
            if isinstance(nat.inbound(now, src, dst[1]), Admitted):
                return now - easy_start
            continue
        for s in hp.poll(now):
            out = hard.outbound(now, sockets[s.socket], s.dest)
            if isinstance(out, Translated):
                seq += 1
                heapq.heappush(arrivals, (now + OWD, seq, "easy", out.external, s.dest))
        for s in ep.poll(now):
            out = easy.outbound(now, EASY_MAIN, s.dest)
            if isinstance(out, Translated):
                seq += 1
                heapq.heappush(arrivals, (now + OWD, seq, "hard", out.external, s.dest))


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_birthday(trials: int = TRIALS) -> dict[str, Any]:
    rows = []
    for n, m, rng_ in CASES:
        size = rng_[1] - rng_[0] + 1
        cpu: list[float] = []
        times: list[float] = []
        for seed in range(trials):
            c0 = time.process_time()
            at = trial(seed, n, m, rng_)
            cpu.append(time.process_time() - c0)
            if at is not None:
                times.append(at)
        peaks = []
        for seed in range(MEMORY_TRIALS):
            tracemalloc.start()
            trial(10_000 + seed, n, m, rng_)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        wins = len(times)
        lo, hi = wilson_interval(wins, trials)
        expected = success_probability(n, m, size)
        rows.append(
            {
                "sockets_n": n,
                "probes_m": m,
                "port_range": list(rng_),
                "range_size_N": size,
                "trials": trials,
                "successes": wins,
                "success_rate": wins / trials,
                "ci95": [round(lo, 4), round(hi, 4)],
                "formula_1_minus_exp": round(expected, 4),
                "formula_within_ci95": lo <= expected <= hi,
                "model_s_to_success_p50": _pct(times, 0.5),
                "model_s_to_success_p95": _pct(times, 0.95),
                "cpu_ms_per_attempt_median": round(statistics.median(cpu) * 1000, 3),
                "cpu_ms_per_attempt_p95": round((_pct(cpu, 0.95) or 0) * 1000, 3),
                "peak_heap_kib_per_attempt_median": round(statistics.median(peaks) / 1024, 1),
                "memory_trials": MEMORY_TRIALS,
            }
        )
    return {
        "how": __doc__,
        "probe_rate_per_s": BIRTHDAY_RATE,
        "one_way_delay_s": OWD,
        "cases": rows,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_birthday(20), indent=2))
