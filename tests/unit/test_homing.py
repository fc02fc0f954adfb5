"""The sans-IO home-relay policy: ranking, dead home, sustained loss, hysteresis."""

from __future__ import annotations

import pytest

from punchthrough.endpoint.homing import HomePolicy, HomingSettings


def fed(policy: HomePolicy, rtts: dict[str, float], t0: float, t1: float, step: float) -> float:
    """Every relay answers with its RTT every ``step`` from ``t0`` to ``t1``; returns ``t1``."""
    t = t0
    while t < t1:
        for r, rtt in rtts.items():
            policy.rtt(r, rtt, t)
        t += step
    return t1


def test_initial_choice_is_the_nearest_and_ranking_follows_srtt() -> None:
    p = HomePolicy(["a", "b", "c", "d"])
    assert p.decide(0).to == "a"  # nothing measured yet: the given order  # type: ignore[union-attr]
    p.rtt("a", 0.080, 0)
    p.rtt("b", 0.020, 0)
    p.rtt("c", 0.050, 0)
    assert p.ranked() == ["b", "c", "a", "d"]  # d never answered: last
    decision = p.decide(0)
    assert decision is not None and decision.to == "b" and decision.urgent


def test_dead_home_moves_at_once_to_the_next_best() -> None:
    p = HomePolicy(["a", "b", "c"])
    fed(p, {"a": 0.01, "b": 0.03, "c": 0.02}, 0, 1, 0.25)
    p.homed("a", 1)
    assert p.decide(1) is None
    p.loss("a", 1.25)
    p.loss("a", 1.5)
    assert p.decide(1.5) is None  # two misses: not yet (could be a burst)
    p.loss("a", 1.75)
    d = p.decide(1.75)
    assert d is not None and d.to == "c" and d.urgent and "down" in d.reason


def test_closed_registration_is_down_until_a_probe_answers() -> None:
    p = HomePolicy(["a", "b"])
    fed(p, {"a": 0.01, "b": 0.03}, 0, 1, 0.25)
    p.homed("a", 1)
    p.down("a", 1.1)  # drained or crashed
    d = p.decide(1.1)
    assert d is not None and d.to == "b" and d.urgent
    p.homed("b", 1.2)
    assert "a" not in p.ranked()
    p.rtt("a", 0.01, 2)  # back
    assert p.ranked()[0] == "a"


def test_no_flapping_on_a_short_rtt_spike_but_sustained_improvement_moves() -> None:
    s = HomingSettings(sustain=10.0, min_dwell=30.0)
    p = HomePolicy(["a", "b"], s)
    t = fed(p, {"a": 0.050, "b": 0.055}, 0, 40, 0.25)
    p.homed("a", 0)
    assert p.decide(t) is None  # b is a bit worse
    # b becomes much better for 5 s, then back: no move
    t = fed(p, {"a": 0.050, "b": 0.010}, t, t + 5, 0.25)
    assert p.decide(t) is None
    t = fed(p, {"a": 0.050, "b": 0.055}, t, t + 5, 0.25)
    assert p.decide(t) is None
    # b much better for longer than `sustain`: move (not urgent)
    start = t
    decision = None
    while decision is None and t < start + 30:
        t = fed(p, {"a": 0.050, "b": 0.010}, t, t + 0.25, 0.25)
        decision = p.decide(t)
    assert decision is not None and decision.to == "b" and not decision.urgent
    assert 10 <= t - start <= 13  # srtt needs a few samples to cross the ratio, then 10 s


def test_small_absolute_gains_never_move_even_when_the_ratio_says_so() -> None:
    p = HomePolicy(["a", "b"], HomingSettings(sustain=1.0, min_dwell=0.0))
    t = fed(p, {"a": 0.005, "b": 0.002}, 0, 60, 0.25)  # 60 % better, but only 3 ms
    p.homed("a", 0)
    assert p.decide(t) is None


def test_min_dwell_holds_a_voluntary_move_but_not_an_urgent_one() -> None:
    p = HomePolicy(["a", "b"], HomingSettings(sustain=1.0, min_dwell=30.0))
    p.homed("a", 0)
    t = fed(p, {"a": 0.100, "b": 0.010}, 0, 20, 0.25)
    assert p.decide(t) is None  # better for 20 s > sustain, but we moved at 0
    t = fed(p, {"a": 0.100, "b": 0.010}, t, 31, 0.25)
    d = p.decide(t)
    assert d is not None and d.to == "b"
    for i in range(3):
        p.loss("a", t + i)
    assert p.decide(t + 3) is not None and p.decide(t + 3).urgent  # type: ignore[union-attr]


def test_sustained_loss_moves_to_a_calmer_relay() -> None:
    p = HomePolicy(["a", "b"])
    p.homed("a", 0)
    t = 0.0
    for i in range(20):  # 40 % loss on a, never 3 in a row; b clean
        if i % 5 in (1, 3):
            p.loss("a", t)
        else:
            p.rtt("a", 0.01, t)
        p.rtt("b", 0.03, t)
        t += 0.25
    d = p.decide(t)
    assert d is not None and d.to == "b" and not d.urgent and "lost 40%" in d.reason


def test_a_dead_home_with_no_alternative_stays() -> None:
    p = HomePolicy(["a"])
    p.homed("a", 0)
    p.down("a", 1)
    assert p.decide(1) is None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        HomingSettings(better_ratio=1.5)
    with pytest.raises(ValueError):
        HomePolicy([])
