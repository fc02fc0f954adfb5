"""Port-allocation classifier and predictor: the cases the issue names, plus properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punchthrough.nat import PortAllocation, classify_port_allocation, predict_ports

SEQ = PortAllocation.SEQUENTIAL


def test_too_few_samples_is_unknown_not_a_guess() -> None:
    for ports in ([], [5000], [5000, 5001]):
        r = classify_port_allocation(ports)
        assert r.kind is PortAllocation.UNKNOWN
        assert r.delta is None
        assert r.confidence == 0.0


def test_same_port_everywhere_is_port_preserving() -> None:
    r = classify_port_allocation([40000] * 5)
    assert r.kind is PortAllocation.PORT_PRESERVING
    assert r.confidence == pytest.approx(1.0)
    assert r.port_range == (40000, 40000)


def test_plain_sequential() -> None:
    r = classify_port_allocation([40000, 40001, 40002, 40003, 40004])
    assert (r.kind, r.delta) == (SEQ, 1)
    assert r.confidence > 0.9


@pytest.mark.parametrize("delta", [-1, -2, 2, 3, 7, -16, 100])
def test_any_signed_delta(delta: int) -> None:
    ports = [30000 + delta * k for k in range(6)]
    r = classify_port_allocation(ports)
    assert (r.kind, r.delta) == (SEQ, delta)


def test_wrap_around_at_top_of_range() -> None:
    ports = [65533, 65534, 65535, 1024, 1025]
    r = classify_port_allocation(ports)
    assert (r.kind, r.delta) == (SEQ, 1)


def test_wrap_around_inside_a_custom_range() -> None:
    r = classify_port_allocation([40998, 40999, 40000, 40001, 40002], port_range=(40000, 40999))
    assert (r.kind, r.delta) == (SEQ, 1)


def test_plus_minus_one_jitter() -> None:
    r = classify_port_allocation([1000, 1002, 1004, 1007, 1008, 1010, 1012, 1014])
    assert (r.kind, r.delta) == (SEQ, 2)


def test_churn_gaps_are_still_sequential() -> None:
    # other hosts took 2 and 4 ports between our samples
    r = classify_port_allocation([50000, 50001, 50004, 50005, 50006, 50011])
    assert (r.kind, r.delta) == (SEQ, 1)


def test_churn_with_delta_two_prefers_two_over_one() -> None:
    r = classify_port_allocation([2000, 2002, 2006, 2008, 2010])
    assert (r.kind, r.delta) == (SEQ, 2)


def test_majority_rule_tolerates_one_outlier() -> None:
    r = classify_port_allocation([40000, 40001, 40002, 12345, 12346, 12347])
    assert (r.kind, r.delta) == (SEQ, 1)
    assert r.confidence < 1.0


def test_mostly_same_port_is_preserving() -> None:
    r = classify_port_allocation([7000, 7000, 7000, 7000, 9999])
    assert r.kind is PortAllocation.PORT_PRESERVING
    assert 0.5 < r.confidence < 1.0


def test_random_ports_are_random() -> None:
    rng = random.Random(7)
    for _ in range(200):
        ports = [rng.randint(1024, 65535) for _ in range(6)]
        r = classify_port_allocation(ports)
        assert r.kind is PortAllocation.RANDOM, ports
        assert r.port_range == (min(ports), max(ports))


def test_three_scattered_ports_are_unknown() -> None:
    r = classify_port_allocation([1500, 40000, 22222])
    assert r.kind is PortAllocation.UNKNOWN


def test_coincidental_multiple_is_not_read_as_a_huge_delta() -> None:
    # seen in the lab on the ADM NAT: 2728 == 11 * 248 must not make "delta 248 with churn"
    r = classify_port_allocation([20450, 23178, 20825, 21073, 20450, 23178])
    assert r.kind is PortAllocation.RANDOM


def test_churn_is_bounded_in_ports_not_steps() -> None:
    # 8 skipped steps of delta 100 would mean 700 ports taken by others in milliseconds
    r = classify_port_allocation([10000, 10800, 11600, 11700, 12500])
    assert r.kind is not PortAllocation.SEQUENTIAL or r.delta != 100


def test_address_dependent_pairs_are_not_sequential() -> None:
    # ADM: two samples per server IP share a port; IPs get hashed ports
    # repeated ports are reused mappings, not allocations: three new ports are too few to judge
    r = classify_port_allocation([21000, 21000, 23456, 23456, 20007])
    assert r.kind is PortAllocation.UNKNOWN
    r = classify_port_allocation([21000, 21000, 23456, 23456, 20007, 29876])
    assert r.kind is PortAllocation.RANDOM


def test_json_shape() -> None:
    j = classify_port_allocation([10, 11, 12]).to_json()
    assert j == {
        "kind": "sequential",
        "delta": 1,
        "ports": [10, 11, 12],
        "confidence": pytest.approx(j["confidence"]),
        "port_range": [10, 12],
    }


@given(
    start=st.integers(1024, 65535),
    delta=st.integers(-8, 8).filter(lambda d: d != 0),
    n=st.integers(5, 12),
    gaps=st.lists(st.integers(0, 3), min_size=12, max_size=12),
)
@settings(max_examples=300, deadline=None)
def test_property_sequential_with_churn_is_sequential_in_the_right_direction(
    start: int, delta: int, n: int, gaps: list[int]
) -> None:
    lo, hi = 1024, 65535
    span = hi - lo + 1
    ports, p = [], start
    for i in range(n):
        ports.append(lo + (p - lo) % span)
        p += delta * (1 + gaps[i])
    r = classify_port_allocation(ports)
    assert r.kind is SEQ
    assert r.delta is not None and (r.delta > 0) == (delta > 0)
    # When churn hit a minority of steps the delta itself is identifiable. (When every step
    # skipped ports, "delta 1 with churn" and "delta 2" are the same data: no rule can tell.)
    if sum(1 for g in gaps[: n - 1] if g == 0) * 2 > n - 1 and abs(delta) > 1:
        assert r.delta == delta
    elif sum(1 for g in gaps[: n - 1] if g == 0) * 2 > n - 1:
        assert abs(r.delta - delta) <= 1 and r.delta != 0


# --- prediction ------------------------------------------------------------------------------


def test_predict_centre_first_then_neighbours() -> None:
    assert predict_ports(40000, 1, offset=1, spread=2) == [40001, 40002, 40000, 40003, 39999]


def test_predict_negative_delta_leans_down() -> None:
    assert predict_ports(40000, -2, offset=2, spread=1) == [39996, 39995, 39997]


def test_predict_wraps_in_range() -> None:
    assert predict_ports(65535, 1, offset=1, spread=1, port_range=(1024, 65535)) == [
        1024,
        1025,
        65535,
    ]


def test_predict_window_wider_than_range_has_no_duplicates() -> None:
    out = predict_ports(10, 1, spread=10, port_range=(10, 13))
    assert sorted(out) == [10, 11, 12, 13]


def test_predict_below_the_assumed_range_widens_it_instead_of_wrapping() -> None:
    assert predict_ports(100, 1, spread=1) == [101, 102, 100]


def test_predict_rejects_bad_range() -> None:
    with pytest.raises(ValueError, match="port_range"):
        predict_ports(1, 1, port_range=(10, 5))


@given(
    last=st.integers(1024, 65535),
    delta=st.integers(-20, 20),
    offset=st.integers(0, 20),
    spread=st.integers(0, 30),
)
def test_property_prediction_in_range_unique_and_contains_centre(
    last: int, delta: int, offset: int, spread: int
) -> None:
    out = predict_ports(last, delta, offset, spread)
    assert len(out) == len(set(out)) == 2 * spread + 1
    assert all(1024 <= p <= 65535 for p in out)
    assert out[0] == 1024 + (last + delta * offset - 1024) % (65535 - 1024 + 1)
