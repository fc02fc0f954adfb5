"""Port prediction planning: windows, churn accounting, send schedules and their caps."""

from __future__ import annotations

import pytest

from punchthrough.signal import decode, encode
from punchthrough.signal.messages import HardNatProbe
from punchthrough.traversal.hardnat.prediction import (
    BURST_GAP,
    MAX_CHECKS,
    PredictionError,
    SequentialProbe,
    churn_per_gap,
    churned_steps,
    estimate_churn,
    make_probe,
    mutual_schedule,
    parse_probe,
    predict_window,
    predicted_burst,
    predicting_schedule,
)

IP = "203.0.113.7"


def probe(ports: list[int], delta: int = 1) -> SequentialProbe:
    return parse_probe(make_probe("call-1", ports, delta, 1234, IP))


def test_probe_round_trip_most_recent_first() -> None:
    msg = make_probe("call-1", [40000, 40002, 40004], 2, 5000, IP)
    assert msg.port_sequence == (40004, 40002, 40000) and msg.allocation == "sequential:2"
    back = decode(encode(msg))
    assert isinstance(back, HardNatProbe)
    p = parse_probe(back)
    assert (p.last, p.delta, p.probe_time, p.external_ip) == (40004, 2, 5.0, IP)


@pytest.mark.parametrize("alloc", ["random", "preserving", "unknown"])
def test_non_sequential_probe_is_refused(alloc: str) -> None:
    msg = HardNatProbe(
        call_id="c", port_sequence=(1, 2, 3), allocation=alloc, probe_time_ms=0, external_ip=IP
    )
    with pytest.raises(PredictionError):
        parse_probe(msg)


def test_churn_from_samples() -> None:
    # delta 1: 100 -> 101 -> 104 (2 churned) -> 105: 2 churned over 3 gaps.
    ports = [105, 104, 101, 100]
    assert churned_steps(ports, 1) == 2
    assert churn_per_gap(ports, 1) == pytest.approx(2 / 3)
    assert estimate_churn(ports, 1, 0.5) == pytest.approx(4.0)
    assert estimate_churn(ports, 1, 0.0) is None
    # A negative delta counts steps the same way.
    assert churned_steps([40090, 40094], -2) == 1  # one step of -2 skipped


def test_window_without_churn_centres_on_the_next_allocation() -> None:
    w = predict_window(probe([40000, 40001, 40002]), expected_churn=0.0, max_ports=4)
    assert w.ports[0] == 40003 and w.coverage == pytest.approx(1.0)
    assert set(w.ports) <= {40002, 40003, 40004}  # jitter neighbours only


def test_window_follows_delta_and_offset() -> None:
    w = predict_window(
        probe([40100, 40098, 40096], delta=-2), offset=3, expected_churn=0.0, jitter=False
    )
    assert w.ports == (40090,)


def test_window_orders_by_likelihood_and_covers_churn() -> None:
    w = predict_window(probe([40000, 40001, 40002]), expected_churn=3.0, jitter=False, max_ports=6)
    # Poisson(3): modes 2 and 3, then 4 / 1 ...; ports = last + 1 + c.
    assert w.ports[:2] == (40005, 40006)
    assert 0.8 < w.coverage < 0.95
    wide = predict_window(probe([40000, 40001, 40002]), expected_churn=3.0, max_ports=64)
    assert wide.coverage > 0.99 and len(wide.ports) <= 64


def test_observed_churn_widens_the_window() -> None:
    quiet = predict_window(probe([40000, 40001, 40002, 40003]), churn_rate=0.0)
    busy = predict_window(probe([40000, 40003, 40007, 40009]), churn_rate=0.0)
    assert busy.expected_churn > quiet.expected_churn == 0.0
    assert len(busy.ports) > len(quiet.ports)


def test_burst_targets_first_allocation_after_samples() -> None:
    stun = [("192.0.2.1", 3478), ("192.0.2.2", 3478), ("192.0.2.1", 3479)]
    peer = ("198.51.100.5", 6000)
    sends = predicted_burst(stun, peer, resends=3)
    assert [s.purpose for s in sends] == ["sample"] * 3 + ["target"] * 3
    assert all(s.socket == 1 for s in sends)  # one fresh socket: its flows are ours alone
    times = [s.t_offset for s in sends]
    assert times == sorted(times)
    assert sends[3].t_offset - sends[2].t_offset == pytest.approx(BURST_GAP)
    assert {s.dest for s in sends[3:]} == {peer}  # re-sends reuse the flow: no new port
    with pytest.raises(ValueError):
        predicted_burst([stun[0]], peer)
    with pytest.raises(ValueError):
        predicted_burst([*stun, peer], peer)


def test_predicting_schedule_rounds_and_cap() -> None:
    w = predict_window(probe([40000, 40001, 40002]), expected_churn=1.0, max_ports=8)
    sends = predicting_schedule(IP, w, checks_per_port=3)
    assert len(sends) == 3 * len(w.ports)
    per_port: dict[int, list[float]] = {}
    for s in sends:
        per_port.setdefault(s.dest[1], []).append(s.t_offset)
    for times in per_port.values():
        assert len(times) == 3
        assert times[1] - times[0] >= 0.2 - 1e-9  # a pinhole that opens late is still hit
    assert sends[0].dest == (IP, w.ports[0])  # most likely first
    assert len(predicting_schedule(IP, w, max_checks=5)) == 5


def test_mutual_matched_order_pairs_up() -> None:
    """Both sequential, no churn: A's k-th flow goes where B's k-th flow comes from, and back."""
    a = SequentialProbe((50010, 50009, 50008), 1, 0.0, "203.0.113.1")
    b = SequentialProbe((60020, 60018, 60016), 2, 0.0, "203.0.113.2")
    sa = mutual_schedule(b, peer_churn=0.0, controlling=True, sweeps=1, flows_per_sweep=4)
    sb = mutual_schedule(a, peer_churn=0.0, controlling=False, sweeps=1, flows_per_sweep=4)

    def flows(sends: list, last: int, delta: int) -> list[tuple[int, int]]:
        """(own external port, destination port) per new destination, in send order."""
        seen: list[int] = []
        for s in sends:
            if s.dest[1] not in seen:
                seen.append(s.dest[1])
        return [(last + delta * (k + 1), d) for k, d in enumerate(seen)]

    fa, fb = flows(sa, 50010, 1), flows(sb, 60020, 2)
    assert any((pa, pb) in {(d, s) for s, d in fb} for pa, pb in fa)
    assert len(sa) <= MAX_CHECKS


def test_mutual_sweeps_cover_churn_hypotheses() -> None:
    b = SequentialProbe((60020,), 1, 0.0, "203.0.113.2")
    sends = mutual_schedule(b, peer_churn=0.0, controlling=True, sweeps=3, flows_per_sweep=1)
    ports = list(dict.fromkeys(s.dest[1] for s in sends))
    # Sweep s uses flow index s+1 and hypothesis 0, +1, -1.
    assert ports == [60021, 60023, 60022]


def test_mutual_socket_per_flow_makes_every_flow_one_allocation() -> None:
    """Two sweeps' hypotheses can name the same port; from its own socket each flow is still
    one new allocation, and re-sends of a flow stay on its socket (no new allocation)."""
    b = SequentialProbe((60020,), 1, 0.0, "203.0.113.2")
    sends = mutual_schedule(
        b,
        peer_churn=0.0,
        controlling=True,
        sweeps=3,
        flows_per_sweep=4,
        socket_per_flow=True,
        socket=1,
    )
    by_socket: dict[int, set[tuple[str, int]]] = {}
    for s in sends:
        by_socket.setdefault(s.socket, set()).add(s.dest)
    assert sorted(by_socket) == list(range(1, 13))
    assert all(len(d) == 1 for d in by_socket.values())
    # First sends come in flow order: socket k's first check precedes socket k+1's.
    first = {}
    for s in sends:
        first.setdefault(s.socket, s.t_offset)
    assert [k for k, _ in sorted(first.items(), key=lambda kv: (kv[1], kv[0]))] == list(
        range(1, 13)
    )
    dests = [next(iter(d)) for _, d in sorted(by_socket.items())]
    assert len(set(dests)) < len(dests)  # the collision one shared socket would have hidden
