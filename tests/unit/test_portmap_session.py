"""Sans-IO NAT-PMP and PCP sessions driven with a fake clock (no sockets, no loop)."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punchthrough.portmap import errors as E
from punchthrough.portmap import natpmp_wire as pmp
from punchthrough.portmap import pcp_wire as pcp
from punchthrough.portmap.natpmp import NatPmpSession
from punchthrough.portmap.pcp import PcpSession, route
from punchthrough.portmap.session import (
    Deleted,
    EpochTracker,
    Expired,
    Failed,
    GatewayReset,
    Mapped,
    NatPmpSchedule,
    Operation,
    PcpSchedule,
    Probed,
    State,
)

PORT = 5000
EXT_IP = "203.0.113.1"
CLIENT = "10.0.1.2"
NONCE = bytes(range(12))


Firing = tuple[float, int, list[object]]


def run_timers(s: NatPmpSession | PcpSession, until: float) -> list[Firing]:
    """Fire the session's timer until ``until``: (time, datagrams sent, events) per firing."""
    out: list[Firing] = []
    while (t := s.timer()) is not None and t <= until:
        events = s.handle_timer(t)
        out.append((t, len(s.datagrams_to_send()), list(events)))
    return out


# -- NAT-PMP ------------------------------------------------------------------------------------


def natpmp_addr(epoch: int, ip: str = EXT_IP, result: int = 0) -> bytes:
    return pmp.encode_response(pmp.ExternalAddressResponse(result, epoch, ip))


def natpmp_map(
    epoch: int, external: int, lifetime: int, result: int = 0, internal: int = PORT
) -> bytes:
    return pmp.encode_response(
        pmp.MapResponse(pmp.OP_MAP_UDP, result, epoch, internal, external, lifetime)
    )


def mapped_natpmp(lifetime: int = 100, external: int = 6000) -> NatPmpSession:
    s = NatPmpSession(PORT, lifetime=lifetime)
    s.probe(0.0, 1.0)
    s.datagrams_to_send()
    assert s.receive(natpmp_addr(1000), 0.001) == [Probed(EXT_IP, 1000)]
    s.map(0.002, 2.0)
    req = pmp.decode_request(s.datagrams_to_send()[0])
    assert req == pmp.MapRequest(pmp.OP_MAP_UDP, PORT, PORT, lifetime)
    events = s.receive(natpmp_map(1000, external, lifetime), 0.003)
    assert events == [Mapped((EXT_IP, external), lifetime, 1000, False)]
    return s


def test_natpmp_retransmission_schedule_rfc6886() -> None:
    s = NatPmpSession(PORT)
    s.probe(0.0, 1000.0)
    assert len(s.datagrams_to_send()) == 1
    firings = run_timers(s, 1000.0)
    times = [t for t, _, _ in firings]
    # sends at 0, .25, .75, 1.75, ... (250 ms doubling), nine in all, then 64 s of waiting
    assert times[:8] == [0.25 * (2**k - 1) for k in range(1, 9)]
    assert [n for _, n, _ in firings[:8]] == [1] * 8
    assert times[8] == 0.25 * (2**9 - 1)  # 127.75 s
    last = firings[8][2]
    assert len(last) == 1 and isinstance(last[0], Failed)
    assert isinstance(last[0].error, E.PortMapTimeout) and last[0].operation is Operation.PROBE
    assert s.stats["sent"] == 9 and s.stats["retransmits"] == 8
    assert s.timer() is None


def test_probe_deadline_caps_the_schedule() -> None:
    s = NatPmpSession(PORT)
    s.probe(10.0, 0.5)
    s.datagrams_to_send()
    firings = run_timers(s, 100.0)
    assert [(t, n) for t, n, _ in firings] == [(10.25, 1), (10.5, 0)]
    assert isinstance(firings[-1][2][0], Failed)


def test_pcp_retransmission_schedule_rfc6887() -> None:
    sched = PcpSchedule(random.Random(1))
    rts = [sched.first()]
    for _ in range(12):
        rts.append(sched.next(rts[-1]))
    assert 2.7 <= rts[0] <= 3.3
    for prev, cur in itertools.pairwise(rts):
        assert 0.9 * min(2 * prev, 1024) <= cur <= 1.1 * min(2 * prev, 1024)
    assert max(rts) <= 1024 * 1.1 and rts[-1] >= 1024 * 0.9  # MRT reached
    assert sched.max_attempts is None  # MRC = 0: only the deadline ends a PCP request


def test_natpmp_renews_at_half_lifetime_with_the_same_port() -> None:
    s = mapped_natpmp(lifetime=100)
    assert s.timer() == pytest.approx(50.003)
    assert s.handle_timer(50.0) == [] and s.datagrams_to_send() == []
    assert s.handle_timer(50.003) == []
    req = pmp.decode_request(s.datagrams_to_send()[0])
    assert req == pmp.MapRequest(pmp.OP_MAP_UDP, PORT, 6000, 100)  # suggests what it has
    assert s.busy is Operation.RENEW and s.stats["renewals"] == 1
    events = s.receive(natpmp_map(1050, 6000, 100), 50.01)
    assert events == [Mapped((EXT_IP, 6000), 100, 1050, True)]
    assert s.timer() == pytest.approx(100.01)


def test_unanswered_renewal_ends_in_expiry() -> None:
    s = mapped_natpmp(lifetime=100)
    firings = run_timers(s, 200.0)
    events = [e for _, _, ev in firings for e in ev]
    assert isinstance(events[0], Failed) and events[0].operation is Operation.RENEW
    assert events[1] == Expired((EXT_IP, 6000))
    assert firings[-1][0] == pytest.approx(100.003)  # exactly at expiry, not later
    assert s.state is State.IDLE and s.external is None and s.timer() is None


def test_natpmp_delete_and_late_answers() -> None:
    s = mapped_natpmp()
    assert s.delete(1.0, 1.0)
    req = pmp.decode_request(s.datagrams_to_send()[0])
    assert req == pmp.MapRequest(pmp.OP_MAP_UDP, PORT, 0, 0)  # RFC 6886 3.4
    assert s.receive(natpmp_map(1001, 6000, 100), 1.01) == []  # a late map answer
    assert s.stats["stale"] == 1
    assert s.receive(natpmp_map(1001, 0, 0), 1.02) == [Deleted()]
    assert s.state is State.IDLE and s.timer() is None
    assert not s.delete(2.0, 1.0)  # nothing left to delete: nothing sent
    assert s.datagrams_to_send() == []


def test_natpmp_answers_for_other_ports_are_dropped() -> None:
    s = NatPmpSession(PORT)
    s.probe(0.0, 1.0)
    s.receive(natpmp_addr(5), 0.0)
    s.map(0.0, 1.0)
    assert s.receive(natpmp_map(5, 7000, 100, internal=PORT + 1), 0.01) == []
    assert s.stats["stale"] == 1 and s.busy is Operation.MAP


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (pmp.RESULT_UNSUPPORTED_VERSION, E.PortMapUnsupported),
        (pmp.RESULT_NOT_AUTHORIZED, E.PortMapNotAuthorized),
        (pmp.RESULT_NETWORK_FAILURE, E.PortMapNetworkFailure),
        (pmp.RESULT_OUT_OF_RESOURCES, E.PortMapNoResources),
        (pmp.RESULT_UNSUPPORTED_OPCODE, E.PortMapUnsupported),
        (99, E.PortMapRefused),
    ],
)
def test_natpmp_result_codes_are_typed_errors(code: int, cls: type[E.PortMapError]) -> None:
    s = NatPmpSession(PORT)
    s.probe(0.0, 1.0)
    s.receive(natpmp_addr(5), 0.0)
    s.map(0.0, 1.0)
    events = s.receive(natpmp_map(5, 0, 0, result=code), 0.01)
    assert len(events) == 1 and isinstance(events[0], Failed)
    err = events[0].error
    assert type(err) is cls and err.code == code and err.protocol == E.NAT_PMP
    assert s.state is State.IDLE and s.busy is None


def test_natpmp_epoch_going_back_triggers_remap() -> None:
    s = mapped_natpmp(lifetime=100)
    # an unsolicited address announcement 40 s later whose epoch restarted near 0 (reboot)
    events = s.receive(natpmp_addr(3), 40.0)
    assert len(events) == 1 and isinstance(events[0], GatewayReset)
    assert s.stats["epoch_resets"] == 1 and s.busy is Operation.MAP
    req = pmp.decode_request(s.datagrams_to_send()[0])
    assert req.lifetime == 100
    events = s.receive(natpmp_map(3, 6100, 100), 40.01)
    assert events == [Mapped((EXT_IP, 6100), 100, 3, False)]  # a new mapping, new port


def test_natpmp_epoch_within_tolerance_is_not_a_reset() -> None:
    s = mapped_natpmp(lifetime=100)
    # 40 s later the server counted only 35 (7/8 rule with 2 s slack): fine
    assert s.receive(natpmp_addr(1035), 40.0) == []
    assert s.stats["epoch_resets"] == 0 and s.busy is None


def test_natpmp_map_before_probe_is_a_caller_bug() -> None:
    with pytest.raises(RuntimeError):
        NatPmpSession(PORT).map(0.0, 1.0)


# -- PCP ------------------------------------------------------------------------------------------


def pcp_map_resp(
    epoch: int,
    external: int,
    lifetime: int,
    *,
    result: int = 0,
    nonce: bytes = NONCE,
    internal: int = PORT,
) -> bytes:
    m = pcp.MapData(nonce, pcp.PROTO_UDP, internal, external, EXT_IP)
    return pcp.encode_response(pcp.PcpResponse(pcp.OP_MAP, result, lifetime, epoch, m))


def mapped_pcp(lifetime: int = 100) -> PcpSession:
    s = PcpSession(
        PORT, CLIENT, lifetime=lifetime, nonce=NONCE, schedule=PcpSchedule(random.Random(0))
    )
    s.probe(0.0, 1.0)
    req = pcp.decode_request(s.datagrams_to_send()[0])
    assert (req.opcode, req.client_ip) == (pcp.OP_ANNOUNCE, CLIENT)
    announce = pcp.encode_response(pcp.PcpResponse(pcp.OP_ANNOUNCE, 0, 0, 500))
    assert s.receive(announce, 0.001) == [Probed(None, 500)]
    s.map(0.002, 2.0)
    req = pcp.decode_request(s.datagrams_to_send()[0])
    assert req.map == pcp.MapData(NONCE, pcp.PROTO_UDP, PORT, PORT, "0.0.0.0")
    assert req.lifetime == lifetime
    assert s.receive(pcp_map_resp(500, 7000, lifetime), 0.003) == [
        Mapped((EXT_IP, 7000), lifetime, 500, False)
    ]
    return s


def test_pcp_nonce_mismatch_is_dropped_and_counted() -> None:
    s = PcpSession(PORT, CLIENT, nonce=NONCE)
    s.probe(0.0, 1.0)
    s.map(0.0, 2.0)
    forged = pcp_map_resp(500, 7000, 100, nonce=b"\xff" * 12)
    assert s.receive(forged, 0.01) == []
    assert s.stats["nonce_mismatch"] == 1 and s.busy is Operation.MAP
    # a forged error with a wrong nonce cannot kill the request either
    assert (
        s.receive(pcp_map_resp(500, 0, 30, result=pcp.NOT_AUTHORIZED, nonce=b"\x01" * 12), 0.02)
        == []
    )
    assert s.stats["nonce_mismatch"] == 2 and s.busy is Operation.MAP
    assert s.receive(pcp_map_resp(500, 7000, 100), 0.03)[0] == Mapped(
        (EXT_IP, 7000), 100, 500, False
    )


def test_pcp_renew_and_delete_reuse_nonce_and_port() -> None:
    s = mapped_pcp(lifetime=120)
    assert s.timer() == pytest.approx(60.003)
    s.handle_timer(60.003)
    req = pcp.decode_request(s.datagrams_to_send()[0])
    assert req.map == pcp.MapData(NONCE, pcp.PROTO_UDP, PORT, 7000, EXT_IP)
    assert s.receive(pcp_map_resp(560, 7000, 120), 60.01) == [
        Mapped((EXT_IP, 7000), 120, 560, True)
    ]
    assert s.delete(61.0, 1.0)
    req = pcp.decode_request(s.datagrams_to_send()[0])
    assert req.lifetime == 0 and req.map is not None and req.map.nonce == NONCE
    assert s.receive(pcp_map_resp(561, 0, 0), 61.01) == [Deleted()]


def test_pcp_epoch_jump_forward_is_a_reset_too() -> None:
    s = mapped_pcp(lifetime=100)
    s.handle_timer(50.003)
    s.datagrams_to_send()
    # 50 s of client time but the server epoch moved by 5000 s: state was lost (RFC 6887 8.5)
    events = s.receive(pcp_map_resp(5500, 7100, 100), 50.01)
    assert isinstance(events[0], GatewayReset)
    assert events[1] == Mapped((EXT_IP, 7100), 100, 5500, False)  # not a plain renewal
    assert s.stats["epoch_resets"] == 1


def test_pcp_unsolicited_announce_with_reset_epoch_remaps() -> None:
    s = mapped_pcp(lifetime=100)
    announce = pcp.encode_response(pcp.PcpResponse(pcp.OP_ANNOUNCE, 0, 0, 0))
    events = s.receive(announce, 30.0)
    assert len(events) == 1 and isinstance(events[0], GatewayReset)
    req = pcp.decode_request(s.datagrams_to_send()[0])
    assert req.opcode == pcp.OP_MAP and req.lifetime == 100


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (pcp.UNSUPP_VERSION, E.PortMapUnsupported),
        (pcp.NOT_AUTHORIZED, E.PortMapNotAuthorized),
        (pcp.MALFORMED_REQUEST, E.PortMapRefused),
        (pcp.UNSUPP_OPCODE, E.PortMapUnsupported),
        (pcp.UNSUPP_OPTION, E.PortMapRefused),
        (pcp.MALFORMED_OPTION, E.PortMapRefused),
        (pcp.NETWORK_FAILURE, E.PortMapNetworkFailure),
        (pcp.NO_RESOURCES, E.PortMapNoResources),
        (pcp.UNSUPP_PROTOCOL, E.PortMapRefused),
        (pcp.USER_EX_QUOTA, E.PortMapNoResources),
        (pcp.CANNOT_PROVIDE_EXTERNAL, E.PortMapRefused),
        (pcp.ADDRESS_MISMATCH, E.PortMapAddressMismatch),
        (pcp.EXCESSIVE_REMOTE_PEERS, E.PortMapRefused),
    ],
)
def test_pcp_result_codes_are_typed_errors(code: int, cls: type[E.PortMapError]) -> None:
    s = PcpSession(PORT, CLIENT, nonce=NONCE)
    s.map(0.0, 2.0)
    events = s.receive(pcp_map_resp(1, 0, 30, result=code), 0.01)
    assert len(events) == 1 and isinstance(events[0], Failed)
    err = events[0].error
    assert type(err) is cls and err.code == code and err.lifetime == 30
    assert err.protocol == E.PCP


def test_pcp_header_only_error_counts_only_while_a_map_is_pending() -> None:
    s = PcpSession(PORT, CLIENT, nonce=NONCE)
    bare = pcp.encode_response(pcp.PcpResponse(pcp.OP_MAP, pcp.NO_RESOURCES, 30, 1))
    assert s.receive(bare, 0.0) == [] and s.stats["stale"] == 1
    s.map(0.0, 2.0)
    events = s.receive(bare, 0.01)
    assert isinstance(events[0], Failed)
    assert isinstance(events[0].error, E.PortMapNoResources)


def test_cross_protocol_unsupported_version() -> None:
    """Each protocol learns "not here" from the other protocol's unsupported-version reply."""
    natpmp_only = pmp.encode_response(pmp.ErrorResponse(0, pmp.RESULT_UNSUPPORTED_VERSION, 9))
    pcp_only = pcp.encode_response(pcp.PcpResponse(0, pcp.UNSUPP_VERSION, 30, 9))
    assert route(natpmp_only) == "pcp" and route(pcp_only) == "nat-pmp"
    assert route(natpmp_addr(1)) == "nat-pmp" and route(pcp_map_resp(1, 1, 1)) == "pcp"
    assert route(b"\x01\x80\x00\x00") is None and route(b"\x00") is None
    p = PcpSession(PORT, CLIENT, nonce=NONCE)
    p.probe(0.0, 1.0)
    (ev,) = p.receive(natpmp_only, 0.01)
    assert isinstance(ev, Failed) and isinstance(ev.error, E.PortMapUnsupported)
    n = NatPmpSession(PORT)
    n.probe(0.0, 1.0)
    (ev,) = n.receive(pcp_only, 0.01)
    assert isinstance(ev, Failed) and isinstance(ev.error, E.PortMapUnsupported)


# -- robustness ---------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=64), max_size=10))
@settings(max_examples=300, deadline=None)
def test_garbage_never_raises_and_is_counted(datagrams: list[bytes]) -> None:
    for session in (mapped_natpmp(), mapped_pcp()):
        for i, d in enumerate(datagrams):
            events = session.receive(d, 1.0 + i)
            # no delete was asked for, so nothing can confirm one
            assert all(not isinstance(e, Deleted) for e in events)
        assert session.stats["received"] == len(datagrams) + 2


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x80\x00",
        natpmp_addr(1)[:11],
        b"\x02" * 23,
        b"\x02\x81" + b"\x00" * 23,
        b"\x07" * 24,
    ],
)
def test_malformed_answers_are_dropped_and_counted(data: bytes) -> None:
    n = mapped_natpmp()
    p = mapped_pcp()
    assert n.receive(data, 1.0) == [] and p.receive(data, 1.0) == []
    dropped = sum(n.stats[k] + p.stats[k] for k in ("malformed", "stale"))
    assert dropped == 2
    assert n.state is State.MAPPED and p.state is State.MAPPED


def test_epoch_tracker_rules() -> None:
    t = EpochTracker(pcp=True)
    assert t.observe(100, 0.0) is None
    assert t.observe(110, 10.0) is None
    assert t.observe(108, 11.0) is not None  # backwards by more than 1
    t = EpochTracker(pcp=True)
    t.observe(100, 0.0)
    assert t.observe(99, 0.5) is None  # 1 s of rounding is allowed
    t = EpochTracker(pcp=False)
    t.observe(100, 0.0)
    assert t.observe(100 + 87, 100.0) is None  # 7/8 of elapsed minus 2 s slack is enough
    t = EpochTracker(pcp=False)
    t.observe(100, 0.0)
    assert t.observe(100 + 80, 100.0) is not None
    assert NatPmpSchedule().max_attempts == 9
