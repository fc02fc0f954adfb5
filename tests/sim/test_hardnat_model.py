"""The hard-NAT plans against the sans-IO NAT model: measured success vs the formulas.

No event loop and no sockets: the plans' sends are pushed straight through two
:class:`~punchthrough.sim.nat.NatTable` objects (the hard side's and the easy side's NAT) with a
fixed one-way delay, in time order. A trial succeeds when a check is admitted by the far NAT:
that is the moment the real code would see its first verified check. Hundreds of seeded trials
run in well under a second each, so a rate can be compared with its formula inside a Wilson 95%
interval (the trial seeds are fixed: the test is deterministic).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import pytest

from punchthrough.nat.summary import estimate_range_size
from punchthrough.netio import Address
from punchthrough.sim.nat import Admitted, NatTable, Translated, nat_config
from punchthrough.traversal.hardnat.birthday import EasySidePlan, HardSidePlan, scan_range
from punchthrough.traversal.hardnat.prediction import (
    make_probe,
    parse_probe,
    predict_window,
    predicted_burst,
    predicting_schedule,
)
from punchthrough.traversal.hardnat.schedule import Send
from punchthrough.traversal.hardnat.stats import (
    poisson_cdf,
    success_probability,
    wilson_interval,
)

HARD_IP, EASY_IP = "203.0.113.10", "198.51.100.50"
HARD_HOST, EASY_HOST = "10.0.0.2", "10.1.0.2"
EASY_MAIN: Address = (EASY_HOST, 6000)
STUN = [(f"192.0.2.{i}", 3478) for i in range(1, 7)]
OWD = 0.02


def _sample(nat: NatTable, now: float, internal: Address, dests: list[Address]) -> list[int]:
    """Port samples (allocation order) as netcheck's STUN bindings would observe them."""
    out = []
    for i, d in enumerate(dests):
        t = nat.outbound(now + i * 0.002, internal, d)
        assert isinstance(t, Translated)
        out.append(t.external[1])
    return out


@dataclass
class _Trial:
    success: bool
    at: float | None
    winner: int | None


def _birthday_trial(seed: int, n: int, m: int, hard_range: tuple[int, int]) -> _Trial:
    rng = random.Random(seed)
    hard = NatTable(
        nat_config("apdm-random", port_range=hard_range), HARD_IP, random.Random(rng.random())
    )
    easy = NatTable(nat_config("eim-apdf"), EASY_IP, random.Random(rng.random()))
    # Phase A on both sides: the hard side's observed range, the easy side's public endpoint.
    observed = _sample(hard, 0.0, (HARD_HOST, 5000), STUN)
    t = easy.outbound(0.0, EASY_MAIN, STUN[0])
    assert isinstance(t, Translated)
    easy_ext = t.external
    start = 1.0
    hp = HardSidePlan(easy_ext, start=start, sockets=n, max_duration=4.0)
    ep = EasySidePlan(
        HARD_IP,
        scan_range((min(observed), max(observed)), m),
        start=start + hp.easy_start_offset + OWD,
        rng=random.Random(rng.random()),
        probes=m,
        rate=200.0,
        max_duration=4.0,
    )
    sockets = {i: (HARD_HOST, 10000 + i) for i in hp.socket_ids}
    arrivals: list[tuple[float, int, str, Address, Address]] = []  # (t, seq, to, src, dst)
    seq = 0
    while True:
        due = [d for d in (hp.next_deadline(), ep.next_deadline()) if d is not None]
        if arrivals:
            due.append(arrivals[0][0])
        if not due:
            return _Trial(False, None, None)
        now = min(due)
        if arrivals and arrivals[0][0] <= now:
            _, _, to, src, dst = heapq.heappop(arrivals)
            if to == "easy":
                verdict = easy.inbound(now, src, dst[1])
                if isinstance(verdict, Admitted):
                    winner = src[1]
                    sock = next(i for i, a in sockets.items() if _ext(hard, a, easy_ext) == winner)
                    return _finish(hp, ep, sock, now)
            else:
                verdict = hard.inbound(now, src, dst[1])
                if isinstance(verdict, Admitted):
                    sock = next(i for i, a in sockets.items() if a == verdict.internal)
                    return _finish(hp, ep, sock, now)
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


def _ext(nat: NatTable, internal: Address, remote: Address) -> int | None:
    for b in nat.bindings:
        if b.internal == internal and remote in b.remotes:
            return b.external_port
    return None


def _finish(hp: HardSidePlan, ep: EasySidePlan, sock: int, now: float) -> _Trial:
    closed = hp.on_success(sock)
    ep.on_success()
    # Stop rules: every losing socket closes, nothing more is sent.
    assert sorted(closed) == [s for s in hp.socket_ids if s != sock]
    assert hp.poll(now + 100) == [] and ep.poll(now + 100) == []
    return _Trial(True, now, sock)


@pytest.mark.parametrize(
    ("n", "m", "hard_range"),
    [(16, 64, (20000, 20999)), (20, 100, (20000, 20999)), (8, 64, (30000, 31999))],
)
def test_birthday_success_rate_matches_formula(n: int, m: int, hard_range: tuple[int, int]) -> None:
    trials = 300
    wins = sum(_birthday_trial(seed, n, m, hard_range).success for seed in range(trials))
    size = hard_range[1] - hard_range[0] + 1
    expected = success_probability(n, m, size)
    lo, hi = wilson_interval(wins, trials)
    print(
        f"birthday n={n} m={m} N={size}: {wins}/{trials}, Wilson [{lo:.3f}, {hi:.3f}], "
        f"formula {expected:.3f}"
    )
    assert lo <= expected <= hi


def test_birthday_range_estimate_from_samples() -> None:
    """The German-tank estimate of N from 6 samples is unbiased on average (within 5%)."""
    sizes = []
    for seed in range(200):
        hard = NatTable(
            nat_config("apdm-random", port_range=(20000, 23999)), HARD_IP, random.Random(seed)
        )
        ports = _sample(hard, 0.0, (HARD_HOST, 5000), STUN)
        sizes.append(estimate_range_size((min(ports), max(ports)), len(set(ports))))
    mean = sum(sizes) / len(sizes)
    assert 0.95 * 4000 <= mean <= 1.05 * 4000


# -- port prediction ---------------------------------------------------------------------------


def _prediction_trial(
    seed: int,
    delta: int,
    churn: float,
    *,
    late: float = 0.0,
    max_ports: int = 16,
    jitter: bool = True,
    known_churn: bool = False,
) -> bool:
    """apdm-sequential (predicted) vs eim-apdf (predicting), through both NAT models.

    ``late``: the target flow opens this long after the last sample (instead of in the burst),
    exposing it to ``churn * late`` background allocations on average.
    """
    rng = random.Random(seed)
    hard = NatTable(
        nat_config("apdm-sequential", delta=delta, churn=churn),
        HARD_IP,
        random.Random(rng.random()),
    )
    easy = NatTable(nat_config("eim-apdf"), EASY_IP, random.Random(rng.random()))
    t = easy.outbound(0.0, EASY_MAIN, STUN[0])
    assert isinstance(t, Translated)
    easy_ext = t.external
    t0 = 5.0  # after 5 s of background churn: a NAT in its steady state
    hard.advance(t0)
    fresh: Address = (HARD_HOST, 7000)
    burst = predicted_burst(STUN[:5], easy_ext)
    sends: list[tuple[float, str, Send]] = []
    ports: list[int] = []
    last_sample = t0
    for s in burst:
        at = t0 + s.t_offset + (late if s.purpose == "target" else 0.0)
        if s.purpose == "sample":
            out = hard.outbound(at, fresh, s.dest)
            assert isinstance(out, Translated)
            ports.append(out.external[1])
            last_sample = at
        else:
            sends.append((at, "hard", s))
    probe = parse_probe(make_probe("c1", ports, delta, int(last_sample * 1000), HARD_IP))
    expected = churn * late if known_churn else None
    window = predict_window(
        probe,
        expected_churn=expected,
        max_ports=max_ports,
        jitter=jitter,
        port_range=(40000, 40999),
    )
    # The predicting side hears the probe after the STUN round trip plus one control-stream hop.
    begin = last_sample + late + 0.1
    sends += [(begin + s.t_offset, "easy", s) for s in predicting_schedule(HARD_IP, window)]
    sends.sort(key=lambda x: x[0])
    arrivals: list[tuple[float, int, str, Address, Address]] = []
    seq = 0
    i = 0
    while i < len(sends) or arrivals:
        if arrivals and (i >= len(sends) or arrivals[0][0] <= sends[i][0]):
            now, _, to, src, dst = heapq.heappop(arrivals)
            nat = easy if to == "easy" else hard
            if isinstance(nat.inbound(now, src, dst[1]), Admitted):
                return True
            continue
        now, who, s = sends[i]
        i += 1
        if who == "hard":
            out = hard.outbound(now, fresh, s.dest)
        else:
            out = easy.outbound(now, EASY_MAIN, s.dest)
        if isinstance(out, Translated):
            seq += 1
            heapq.heappush(
                arrivals,
                (now + OWD, seq, "easy" if who == "hard" else "hard", out.external, s.dest),
            )
    return False


@pytest.mark.parametrize("delta", [1, 2, -1])
@pytest.mark.parametrize("churn", [0.0, 1.0, 5.0, 10.0])
def test_prediction_burst_hits(delta: int, churn: float) -> None:
    """Burst-then-target: churn has milliseconds to move the target; nearly every trial hits."""
    trials = 100
    hits = sum(_prediction_trial(seed, delta, churn) for seed in range(trials))
    lo, hi = wilson_interval(hits, trials)
    print(f"prediction burst delta={delta} churn={churn}/s: {hits}/{trials} [{lo:.3f}, {hi:.3f}]")
    assert hits >= 95


@pytest.mark.parametrize(("churn", "late", "width"), [(5.0, 0.5, 1), (5.0, 0.5, 3), (10.0, 0.5, 8)])
def test_prediction_late_target_matches_poisson(churn: float, late: float, width: int) -> None:
    """A late target drifts by Poisson(churn * late) allocations: a window of ``width`` steps
    hits exactly when the drift stays below it."""
    trials = 300
    hits = sum(
        _prediction_trial(
            seed, 1, churn, late=late, max_ports=width, jitter=False, known_churn=True
        )
        for seed in range(trials)
    )
    mean = churn * late
    window = predict_window(
        parse_probe(make_probe("c", [40000, 40001, 40002], 1, 0, HARD_IP)),
        expected_churn=mean,
        max_ports=width,
        jitter=False,
    )
    # The window holds the `width` most likely churn counts (0..width-1 around the mode).
    counts = [p - 40002 - 1 for p in window.ports]
    expected = sum(poisson_cdf(c, mean) - poisson_cdf(c - 1, mean) for c in counts)
    assert expected == pytest.approx(window.coverage)
    lo, hi = wilson_interval(hits, trials)
    print(
        f"prediction late={late}s churn={churn}/s width={width}: {hits}/{trials} "
        f"[{lo:.3f}, {hi:.3f}] expected {expected:.3f}"
    )
    assert lo <= expected <= hi
