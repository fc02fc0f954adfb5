"""Pure aggregation of the NAT pair matrix: trial extraction, percentiles, cells, pairs."""

from __future__ import annotations

from typing import Any

import pytest

from punchthrough.matrix.model import (
    SEED_STRIDE,
    BirthdayAttempt,
    TrialResult,
    aggregate,
    aggregate_cell,
    all_pairs,
    matrix_json,
    parse_pair,
    parse_pairs,
    percentile,
    profiles_of,
    trial_error,
    trial_from_call,
    trial_seed,
    winning_strategy,
)
from punchthrough.matrix.profiles import default_profiles, known_profiles
from punchthrough.traversal.hardnat.stats import wilson_interval


def _call(path: str = "relay", **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "path": path,
        "frames_sent": 100,
        "frames_lost": 0,
        "connected_ms": 80.0,
        "path_changes": [],
        "traversal": {"stages": []},
    }
    return base | extra


def _trial(a: str, b: str, k: int, path: str = "relay", **kw: Any) -> TrialResult:
    strategy = kw.pop("strategy", "hole-punch" if path == "direct" else "relay")
    return TrialResult(a, b, k, path, kw.pop("direct_ms", None), strategy, kw.pop("lost", 0))


# -- one trial ---------------------------------------------------------------------------------


def test_direct_trial_prefers_explicit_direct_ms_and_strategy() -> None:
    call = _call(
        "direct",
        direct_ms=140.0,
        strategy="birthday",
        path_changes=[{"t_ms": 999.0, "from": "relay", "to": "direct"}],
        traversal={"strategy": "hole-punch", "direct_ms": 500.0},
    )
    t = trial_from_call("eim-apdf", "apdm-random", 3, call, seed=7)
    assert (t.path, t.direct, t.direct_ms, t.strategy) == ("direct", True, 140.0, "birthday")
    assert (t.trial, t.seed, t.frames_sent, t.connected_ms) == (3, 7, 100, 80.0)


def test_direct_time_falls_back_to_first_change_to_direct_then_traversal() -> None:
    changes = [
        {"t_ms": 90.0, "from": "relay", "to": "relay"},
        {"t_ms": 150.0, "from": "relay", "to": "direct"},
        {"t_ms": 400.0, "from": "relay", "to": "direct"},
    ]
    call = _call("direct", path_changes=changes, traversal={"strategy": "hole-punch"})
    t = trial_from_call("a", "b", 0, call)
    assert t.direct_ms == 150.0 and t.strategy == "hole-punch"
    only_report = _call("direct", traversal={"direct_ms": 210.0})
    t2 = trial_from_call("a", "b", 0, only_report)
    assert t2.direct_ms == 210.0
    assert t2.strategy == "direct"  # direct, but nobody named the strategy


def test_a_call_that_fell_back_to_the_relay_is_not_direct() -> None:
    call = _call(
        "relay",
        strategy="hole-punch",
        frames_lost=3,
        path_changes=[
            {"t_ms": 150.0, "from": "relay", "to": "direct"},
            {"t_ms": 900.0, "from": "direct", "to": "relay"},
        ],
    )
    t = trial_from_call("a", "b", 0, call)
    assert not t.direct and t.strategy == "relay" and t.direct_ms is None
    assert t.frames_lost == 3


def test_error_results_and_ill_typed_fields_never_raise() -> None:
    t = trial_from_call("a", "b", 1, {"error": "connection failed: timeout"})
    assert t.strategy == "error" and t.error == "connection failed: timeout" and not t.direct
    t = trial_from_call("a", "b", 1, {})
    assert t.strategy == "error" and t.error
    hostile = {
        "path": "direct",
        "direct_ms": "soon",
        "frames_lost": True,
        "frames_sent": -5,
        "connected_ms": float("nan"),
        "path_changes": "nope",
        "traversal": ["not", "a", "dict"],
        "strategy": 42,
    }
    t = trial_from_call("a", "b", 1, hostile)
    assert (t.direct_ms, t.frames_lost, t.frames_sent, t.connected_ms) == (None, 0, 0, None)
    assert t.strategy == "direct" and t.birthday is None


def test_birthday_attempt_read_from_the_traversal_report() -> None:
    stages = [
        {"stage": "hole-punch", "status": "failed"},
        {
            "stage": "birthday",
            "status": "succeeded",
            "sockets": 256,
            "probes_sent": 300,
            "range_size": 64512,
        },
    ]
    t = trial_from_call("a", "b", 0, _call("direct", traversal={"stages": stages}))
    assert t.birthday == BirthdayAttempt(256, 300, 64512, success=True)
    assert t.stages == ("hole-punch: failed", "birthday: succeeded")
    skipped = [{"stage": "birthday", "status": "skipped", "sockets": 256, "probes": 9}]
    assert trial_from_call("a", "b", 0, _call(traversal={"stages": skipped})).birthday is None
    no_numbers = [{"stage": "birthday", "status": "failed"}]
    assert trial_from_call("a", "b", 0, _call(traversal={"stages": no_numbers})).birthday is None
    alt_names = [{"stage": "birthday", "status": "failed", "n": 64, "m": 512}]
    got = trial_from_call("a", "b", 0, _call(traversal={"stages": alt_names})).birthday
    assert got == BirthdayAttempt(64, 512, None, success=False)


def test_trial_json_round_trips_the_facts() -> None:
    t = trial_error("a", "b", 2, "lab did not build", seed=5, wall_s=1.23456)
    j = t.to_json()
    assert j["strategy"] == "error" and j["error"] == "lab did not build" and j["wall_s"] == 1.235


def test_trial_seeds_are_deterministic_and_distinct() -> None:
    assert trial_seed(1, 0) == trial_seed(1, 0) == SEED_STRIDE
    seeds = {trial_seed(s, k) for s in range(3) for k in range(200)}
    assert len(seeds) == 600
    with pytest.raises(ValueError):
        trial_seed(1, SEED_STRIDE)
    with pytest.raises(ValueError):
        trial_seed(1, -1)


# -- percentiles and cells ---------------------------------------------------------------------


def test_percentile_interpolates_linearly_between_order_statistics() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert percentile(range(101), 0.95) == pytest.approx(95.0)
    assert percentile([1.0, 2.0], 0.0) == 1.0 and percentile([1.0, 2.0], 1.0) == 2.0
    with pytest.raises(ValueError):
        percentile([1.0], 1.5)


def test_cell_aggregates_rate_wilson_times_strategies_and_losses() -> None:
    trials = [
        _trial("x", "y", 0, "direct", direct_ms=100.0, lost=1),
        _trial("x", "y", 1, "direct", direct_ms=300.0),
        _trial("x", "y", 2, "direct", direct_ms=200.0, strategy="birthday"),
        _trial("x", "y", 3, "relay", lost=4),
        trial_error("x", "y", 4, "boom"),
    ]
    cell = aggregate_cell("x", "y", trials)
    assert (cell.trials, cell.direct, cell.success_rate) == (5, 3, 0.6)
    assert cell.ci95 == wilson_interval(3, 5)
    assert (cell.p50_direct_ms, cell.p95_direct_ms) == (200.0, 290.0)
    # most common first, then by name
    assert list(cell.strategies.items()) == [
        ("hole-punch", 2),
        ("birthday", 1),
        ("error", 1),
        ("relay", 1),
    ]
    assert cell.frames_lost == 5
    assert cell.winning_strategy == "hole-punch"


def test_relay_only_cell_has_no_times_and_a_wilson_upper_bound() -> None:
    cell = aggregate_cell("p", "q", [_trial("p", "q", k) for k in range(4)])
    j = cell.to_json()
    assert j["direct"] == 0 and j["success_rate"] == 0.0
    assert j["p50_direct_ms"] is None and j["p95_direct_ms"] is None
    assert j["ci95"][0] == 0.0 and 0.4 < j["ci95"][1] < 0.6
    assert j["strategies"] == {"relay": 4}


def test_cell_refuses_trials_of_another_pair() -> None:
    with pytest.raises(ValueError):
        aggregate_cell("a", "b", [_trial("b", "a", 0)])


def test_aggregate_keeps_pair_order_and_gives_empty_pairs_a_cell() -> None:
    trials = [
        _trial("b", "b", 0),
        _trial("a", "b", 0, "direct", direct_ms=1.0),
        _trial("z", "z", 0),
    ]
    cells = aggregate([("a", "b"), ("b", "b"), ("c", "c")], trials)
    assert [(c.a, c.b, c.trials, c.direct) for c in cells] == [
        ("a", "b", 1, 1),
        ("b", "b", 1, 0),
        ("c", "c", 0, 0),
    ]
    assert cells[2].ci95 == (0.0, 1.0)


def test_matrix_json_has_exactly_the_issue_schema() -> None:
    cells = aggregate([("a", "b")], [_trial("a", "b", 0, "direct", direct_ms=5.0)])
    doc = matrix_json("sim", 1, 40.0, cells)
    assert set(doc) == {"backend", "trials", "rtt_ms", "cells"}
    assert set(doc["cells"][0]) == {
        "a",
        "b",
        "trials",
        "direct",
        "success_rate",
        "ci95",
        "p50_direct_ms",
        "p95_direct_ms",
        "strategies",
        "frames_lost",
    }
    assert doc["cells"][0]["ci95"] == [round(x, 4) for x in wilson_interval(1, 1)]


def test_winning_strategy_prefers_direct_strategies_on_ties() -> None:
    assert winning_strategy({}) is None
    assert winning_strategy({"relay": 2, "hole-punch": 2}) == "hole-punch"
    assert winning_strategy({"relay": 3, "hole-punch": 2}) == "relay"
    assert winning_strategy({"error": 1, "relay": 1}) == "error"  # alphabetical among non-direct


# -- profiles and pairs ------------------------------------------------------------------------


def test_default_matrix_is_every_unordered_pair_of_udp_profiles() -> None:
    for backend in ("sim", "lab"):
        profiles = default_profiles(backend)
        assert "udp-blocked" not in profiles and "udp-blocked" in known_profiles(backend)
        assert {"open", "eim-apdf", "apdm-random", "apdm-sequential"} <= set(profiles)
        pairs = all_pairs(profiles)
        n = len(profiles)
        assert len(pairs) == n * (n + 1) // 2 == len(set(pairs))
        assert ("eim-apdf", "eim-apdf") in pairs
        assert not any((b, a) in pairs for a, b in pairs if a != b)


def test_parse_pairs_keeps_order_splits_commas_and_drops_duplicates() -> None:
    known = ["eim-apdf", "apdm-random", "open"]
    assert parse_pair(" apdm-random:eim-apdf ", known) == ("apdm-random", "eim-apdf")
    got = parse_pairs(["eim-apdf:apdm-random,open:open", "eim-apdf:apdm-random"], known)
    assert got == [("eim-apdf", "apdm-random"), ("open", "open")]
    for bad in ("eim-apdf", "eim-apdf:", "a:b:c", "eim-apdf:nope"):
        with pytest.raises(ValueError):
            parse_pair(bad, known)
    with pytest.raises(ValueError, match="apdm-random"):
        parse_pair("x:open", known)


def test_profiles_of_follows_the_given_order() -> None:
    pairs = [("c", "a"), ("z", "z")]
    assert profiles_of(pairs, ["a", "b", "c"]) == ["a", "c", "z"]
