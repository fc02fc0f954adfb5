"""Birthday attack plans: schedules, budgets, stop rules, the start message, the statistics."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from punchthrough.signal import decode, encode
from punchthrough.signal.messages import HardNatBirthdayStart
from punchthrough.traversal.hardnat.birthday import (
    MAX_START_LEAD,
    BirthdayError,
    EasySidePlan,
    HardSidePlan,
    State,
    make_birthday_start,
    parse_birthday_start,
    scan_range,
)
from punchthrough.traversal.hardnat.stats import (
    poisson_cdf,
    poisson_quantile,
    success_probability,
    success_probability_exact,
    wilson_interval,
)

EASY = ("198.51.100.50", 6000)


def drain(plan: HardSidePlan | EasySidePlan, until: float) -> list:
    out = []
    while (t := plan.next_deadline()) is not None and t <= until:
        out += plan.poll(t)
    return out


def test_hard_plan_opens_each_socket_once_then_refreshes() -> None:
    hp = HardSidePlan(EASY, start=10.0, sockets=256, refresh_interval=5.0, max_duration=12.0)
    opens = [s for s in hp.schedule if s.purpose == "open"]
    assert sorted(s.socket for s in opens) == list(range(1, 257))
    assert {s.dest for s in hp.schedule} == {EASY}
    refresh = [s for s in hp.schedule if s.purpose == "refresh"]
    assert len(refresh) == 2 * 256  # at 5 s and 10 s, inside the 12 s budget
    assert hp.easy_start_offset >= max(s.t_offset for s in opens)
    sent = drain(hp, 10.0 + 12.0)
    assert len(sent) == len(hp.schedule)
    assert hp.poll(22.0) == [] and hp.state is State.EXPIRED
    assert hp.sockets_to_close() == list(range(1, 257))


def test_hard_plan_success_closes_all_but_winner_and_cancels_sends() -> None:
    hp = HardSidePlan(EASY, start=0.0, sockets=16)
    drain(hp, 0.5)
    closed = hp.on_success(7)
    assert closed == [s for s in range(1, 17) if s != 7]
    assert hp.state is State.SUCCEEDED and hp.winner == 7
    assert hp.poll(100.0) == [] and hp.next_deadline() is None and hp.pending > 0
    # A second success report changes nothing.
    assert hp.on_success(3) == closed


def test_call_ended_stops_everything() -> None:
    hp = HardSidePlan(EASY, start=0.0, sockets=4)
    assert hp.on_call_ended() == [1, 2, 3, 4] and hp.state is State.CANCELLED
    assert hp.poll(1.0) == []
    ep = EasySidePlan("203.0.113.9", (1024, 65535), start=0.0, rng=random.Random(1), probes=10)
    ep.on_call_ended()
    assert ep.poll(5.0) == [] and ep.state is State.CANCELLED


def test_hard_caps() -> None:
    with pytest.raises(BirthdayError):
        HardSidePlan(EASY, start=0.0, sockets=0)
    with pytest.raises(BirthdayError):
        HardSidePlan(EASY, start=0.0, sockets=5000)
    with pytest.raises(BirthdayError):
        HardSidePlan(EASY, start=0.0, sockets=1).on_success(2)


def test_easy_plan_distinct_ports_paced_in_range_deterministic() -> None:
    a = EasySidePlan("203.0.113.9", (20000, 29999), start=3.0, rng=random.Random(5), probes=1024)
    b = EasySidePlan("203.0.113.9", (20000, 29999), start=3.0, rng=random.Random(5), probes=1024)
    assert a.ports == b.ports and len(set(a.ports)) == 1024
    assert all(20000 <= p <= 29999 for p in a.ports)
    gaps = {round(y.t_offset - x.t_offset, 9) for x, y in itertools.pairwise(a.schedule)}
    assert gaps == {round(1 / 150, 9)}
    assert a.poll(2.99) == []  # nothing before start_at
    assert len(a.poll(3.0 + 1.0)) == 151  # probes at 0, 1/150, ..., 150/150 s
    assert {s.socket for s in a.schedule} == {0}  # the main socket: its one public endpoint


def test_easy_budgets() -> None:
    rng = random.Random(0)
    # Duration cap: 2 s at 100/s -> 200 probes.
    ep = EasySidePlan("203.0.113.9", (1024, 65535), start=0, rng=rng, rate=100, max_duration=2)
    assert len(ep.ports) == 200
    # A range smaller than the probe count: each port once.
    small = EasySidePlan("203.0.113.9", (5000, 5099), start=0, rng=rng, probes=1024)
    assert sorted(small.ports) == list(range(5000, 5100))
    with pytest.raises(BirthdayError):
        EasySidePlan("203.0.113.9", (1, 2), start=0, rng=rng, rate=1000)
    with pytest.raises(BirthdayError):
        EasySidePlan("203.0.113.9", (1, 2), start=0, rng=rng, probes=100_000)
    ep2 = EasySidePlan("203.0.113.9", (1024, 65535), start=0, rng=rng, probes=50)
    drain(ep2, 0.1)
    assert ep2.on_success() == [] and ep2.state is State.SUCCEEDED and ep2.poll(9.0) == []


def test_scan_range() -> None:
    assert scan_range((30000, 40000), 1024) == (30000, 40000)
    lo, hi = scan_range((30000, 30010), 1024)
    assert hi - lo + 1 >= 1024 and lo <= 30000 and hi >= 30010
    assert scan_range((1, 5), 1024)[0] == 1
    assert scan_range(None, 1024) == (1024, 65535)


def test_birthday_start_message_round_trip() -> None:
    hp = HardSidePlan(EASY, start=100.0, sockets=256)
    msg = make_birthday_start("call-9", hp, now=100.0, local_ports=tuple(range(40000, 40256)))
    back = decode(encode(msg))
    assert isinstance(back, HardNatBirthdayStart) and back.acceptor_port_count == 256
    lead = (back.start_at_ms - (back.sent_at_ms or 0)) / 1000
    assert lead == pytest.approx(hp.easy_start_offset, abs=1e-3)
    bs = parse_birthday_start(back, now=50.0, one_way_delay=0.03)
    assert bs.sockets == 256 and bs.start == pytest.approx(50.0 + lead - 0.03)
    # A start already due (lead < one-way delay) starts now, never in the past.
    assert parse_birthday_start(back, now=50.0, one_way_delay=5.0).start == 50.0


def test_birthday_start_too_far_ahead_is_refused() -> None:
    msg = HardNatBirthdayStart(
        call_id="c",
        acceptor_port_count=4,
        start_at_ms=int((MAX_START_LEAD + 1) * 1000),
        sent_at_ms=0,
    )
    with pytest.raises(BirthdayError):
        parse_birthday_start(msg, now=0.0, one_way_delay=0.0)


# -- statistics ---------------------------------------------------------------------------------


def test_success_probability_formula() -> None:
    assert success_probability(256, 1024, 65536) == pytest.approx(1 - math.exp(-4))
    assert success_probability(0, 1024, 65536) == 0.0
    exact = success_probability_exact(256, 1024, 65536)
    assert success_probability(256, 1024, 65536) <= exact <= 1.0
    assert success_probability_exact(10, 10, 15) == 1.0
    with pytest.raises(ValueError):
        success_probability(1, 1, 0)


def test_wilson_interval_known_values() -> None:
    # Reference: Wilson interval for 81/263 (Wikipedia "Binomial proportion confidence interval").
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=1e-3) and hi == pytest.approx(0.3662, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and 0.05 < hi < 0.08
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and 0.92 < lo < 0.95
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_poisson_helpers() -> None:
    assert poisson_cdf(0, 2.0) == pytest.approx(math.exp(-2))
    assert poisson_cdf(-1, 2.0) == 0.0 and poisson_cdf(3, 0.0) == 1.0
    assert poisson_quantile(0.99, 0.0) == 0
    k = poisson_quantile(0.99, 5.0)
    assert poisson_cdf(k, 5.0) >= 0.99 > poisson_cdf(k - 1, 5.0)
