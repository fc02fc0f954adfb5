"""The one NAT classifier: netcheck's summary, the endpoint's planning rule, the filtering wait."""

from __future__ import annotations

import pytest

from punchthrough.nat import (
    Behavior,
    NatObservations,
    NatSummary,
    Purpose,
    Sample,
    classify_nat,
    filter_wait,
)
from punchthrough.nat.filtering import (
    FILTER_WAIT_RTTS,
    MIN_FILTER_WAIT,
    RETRY_WAIT_RTTS,
    gather_filter_wait,
)
from punchthrough.nat.probe import PROBE_RTO
from punchthrough.scenario.netcheck import netcheck_world
from punchthrough.sim import PROFILES

APD, AD, EI = "address-and-port-dependent", "address-dependent", "endpoint-independent"


@pytest.mark.parametrize("nat", list(PROFILES))
def test_netcheck_summary_is_what_its_json_reads_back_as(nat: str) -> None:
    """The classifier and the netcheck JSON converter agree on every profile."""
    report = netcheck_world(nat, seed=3)
    assert report.summary is not None
    assert report.summary == NatSummary.from_netcheck_json(report.to_json())


def test_plan_takes_any_difference_as_address_and_port_dependent() -> None:
    # Two destinations on one IP agree, another IP differs: RFC 5780 logic says AD; with only
    # different IPs differing it cannot tell. The plan assumes the stricter APD either way.
    ad = [
        Sample(("198.51.100.1", 3478), ("203.0.113.1", 20001)),
        Sample(("198.51.100.1", 3479), ("203.0.113.1", 20001)),
        Sample(("198.51.100.2", 3478), ("203.0.113.1", 20777)),
    ]
    report = classify_nat(NatObservations(ad, udp=True), Purpose.REPORT)
    plan = classify_nat(NatObservations(ad, udp=True), Purpose.PLAN)
    assert (report.mapping, plan.mapping) == (AD, APD)
    two_ips = [ad[0], ad[2]]
    assert classify_nat(NatObservations(two_ips, udp=True), Purpose.REPORT).mapping == "unknown"
    assert classify_nat(NatObservations(two_ips, udp=True), Purpose.PLAN).mapping == APD


def test_plan_keeps_only_the_allocations_a_stage_acts_on() -> None:
    same = [Sample((f"198.51.100.{i}", 3478), ("203.0.113.1", 40000)) for i in range(1, 5)]
    report = classify_nat(NatObservations(same, udp=True), Purpose.REPORT)
    plan = classify_nat(NatObservations(same, udp=True), Purpose.PLAN)
    assert (report.mapping, report.allocation) == (EI, "port-preserving")
    assert (plan.mapping, plan.allocation, plan.delta) == (EI, "unknown", None)
    seq = [Sample((f"198.51.100.{i}", 3478), ("203.0.113.1", 40000 + 2 * i)) for i in range(5)]
    plan = classify_nat(NatObservations(seq, udp=True), Purpose.PLAN)
    assert (plan.mapping, plan.allocation, plan.delta) == (APD, "sequential", 2)
    assert plan.port_range == (40000, 40008) and plan.public_ip == "203.0.113.1"


def test_no_udp_knows_no_behaviour_and_one_sample_no_mapping() -> None:
    blocked = classify_nat(
        NatObservations([], udp=False, filtering=Behavior.ENDPOINT_INDEPENDENT), Purpose.PLAN
    )
    assert blocked == NatSummary(udp=False)
    one = [Sample(("198.51.100.1", 3478), ("203.0.113.1", 5000))]
    summary = classify_nat(NatObservations(one, udp=True, local_port=5000), Purpose.PLAN)
    assert (summary.mapping, summary.preserves_port) == ("unknown", True)


def test_filter_wait_is_sized_from_round_trips() -> None:
    assert filter_wait([], 3.0) == 3.0
    assert filter_wait([0.01], 3.0) == MIN_FILTER_WAIT
    assert filter_wait([0.01, 0.3], 3.0) == pytest.approx(FILTER_WAIT_RTTS * 0.3)
    assert filter_wait([0.3], 1.0) == 1.0


def test_gathers_filter_wait_leaves_room_for_one_retransmission_only() -> None:
    """The endpoint's own test: one retransmission (at the RTO) and its answer fit, nothing
    more: 0.25 + 2 * 0.04 = 0.33 s at the simulator's 40 ms, not the 0.5 s floor."""
    assert gather_filter_wait([], 1.0) == 1.0
    assert gather_filter_wait([0.04], 1.0) == pytest.approx(PROBE_RTO + RETRY_WAIT_RTTS * 0.04)
    assert gather_filter_wait([0.04], 1.0) < MIN_FILTER_WAIT
    # the resend's answer arrives at rto + rtt: always inside the wait
    for rtt in (0.0001, 0.04, 0.2):
        assert gather_filter_wait([rtt], 5.0) > PROBE_RTO + rtt
    assert gather_filter_wait([0.3], 5.0) == pytest.approx(FILTER_WAIT_RTTS * 0.3)
    assert gather_filter_wait([0.3], 1.0) == 1.0
