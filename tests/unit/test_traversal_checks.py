"""The sans-IO traversal cores: check credentials, candidates, the check engine, the monitor,
the stage plan. Two engines are wired back to back through a tiny in-memory "network" that can
drop packets (a NAT that has not opened its pinhole yet) and rewrite source addresses (a NAT)."""

from __future__ import annotations

from typing import TypeVar

import pytest

from punchthrough.nat.summary import NatSummary
from punchthrough.netio import Address
from punchthrough.signal import Candidate
from punchthrough.stun import (
    Message,
    MessageClass,
    Method,
    RawAttribute,
    StunDecodeError,
    Username,
    decode_message,
    encode,
    ice_attributes,
)
from punchthrough.traversal import (
    CheckEngine,
    DirectMonitor,
    PairNominated,
    PairState,
    PairSucceeded,
    RemoteCandidate,
    RoundFailed,
    Transmit,
    Verdict,
    Waterfall,
    candidate_priority,
    derive_credentials,
    make_candidates,
    pair_priority,
    remote_candidates,
)
from punchthrough.traversal.checks import MAX_PAIRS, MAX_TRANSACTIONS, Action
from punchthrough.traversal.hardnat.plan import plan_stages
from punchthrough.traversal.monitor import (
    KEEPALIVE,
    KEEPALIVE_MAX,
    KEEPALIVE_MIN,
    RX_STREAM_PACKETS,
    keepalive_for_lifetime,
)

A = TypeVar("A")
BINDING = bytes(range(32))
A_LOCAL: Address = ("10.0.1.2", 5000)
B_LOCAL: Address = ("10.0.2.2", 6000)
A_PUBLIC: Address = ("203.0.113.1", 5000)
B_PUBLIC: Address = ("203.0.113.2", 6000)


def engines() -> tuple[CheckEngine, CheckEngine]:
    a = CheckEngine(derive_credentials(BINDING, is_dialer=True), controlling=True)
    b = CheckEngine(derive_credentials(BINDING, is_dialer=False), controlling=False)
    a.add_base(A_LOCAL)
    b.add_base(B_LOCAL)
    return a, b


def test_credentials_mirror_each_other_and_never_repeat_across_sessions() -> None:
    a = derive_credentials(BINDING, is_dialer=True)
    b = derive_credentials(BINDING, is_dialer=False)
    assert a.key == b.key and len(a.key) == 32
    assert a.request_username == b.expected_username
    assert b.request_username == a.expected_username
    assert a.local_ufrag != b.local_ufrag  # a reflected check is not a check for its sender
    other = derive_credentials(bytes(32), is_dialer=True)
    assert other.key != a.key and other.local_ufrag != a.local_ufrag
    assert "key" not in repr(a) and a.key.hex() not in repr(a)


def test_priorities_follow_rfc_8445() -> None:
    assert candidate_priority("host") == (126 << 24) + (65535 << 8) + 255
    assert candidate_priority("mapped") > candidate_priority("srflx")
    assert candidate_priority("prflx") > candidate_priority("mapped")
    g, d = 10, 20
    assert pair_priority(g, d) == (10 << 32) + 40
    assert pair_priority(d, g) == (10 << 32) + 40 + 1


def test_candidates_are_deduplicated_ordered_and_skip_loopback_when_possible() -> None:
    cands = make_candidates(
        5000,
        host_ips=["127.0.0.1", "10.0.1.2", "0.0.0.0"],
        srflx=[(A_PUBLIC, "198.51.100.20"), (A_PUBLIC, "198.51.100.21")],
        mapped=("203.0.113.1", 7000),
    )
    assert [(c.kind, c.address, c.port) for c in cands] == [
        ("host", "10.0.1.2", 5000),
        ("mapped", "203.0.113.1", 7000),
        ("srflx", "203.0.113.1", 5000),
    ]
    assert make_candidates(5000, host_ips=["127.0.0.1"])[0].address == "127.0.0.1"
    remote = remote_candidates(
        [
            *cands,
            Candidate(kind="relay", address="198.51.100.20", port=3478, priority=1, foundation="r"),
            Candidate(kind="prflx", address="10.0.1.2", port=5000, priority=2**31, foundation="p"),
        ]
    )
    assert [r.address for r in remote] == [("10.0.1.2", 5000), ("203.0.113.1", 7000), A_PUBLIC]
    assert remote[0].kind == "prflx"  # the best kind of a duplicate address is kept


def test_ice_attributes_are_interpreted_only_on_request() -> None:
    msg = decode_message(
        encode(
            Message(
                Method.BINDING,
                MessageClass.REQUEST,
                attributes=[
                    RawAttribute(0x0024, (7).to_bytes(4, "big")),
                    RawAttribute(0x0025, b""),
                    RawAttribute(0x802A, (9).to_bytes(8, "big")),
                ],
            )
        )
    )
    ice = ice_attributes(msg.attributes)
    assert (ice.priority, ice.use_candidate, ice.controlling, ice.controlled) == (7, True, 9, None)
    with pytest.raises(StunDecodeError):
        ice_attributes([RawAttribute(0x0024, b"\x00")])


class Wire:
    """Delivers Transmit actions between two engines, with NAT-like rewriting and dropping."""

    def __init__(self, a: CheckEngine, b: CheckEngine) -> None:
        self.a, self.b = a, b
        self.now = 0.0
        self.events: list[tuple[str, Action]] = []
        #: (from engine name, destination) -> source address the receiver sees; absent: drop.
        self.routes: dict[tuple[str, Address], Address] = {
            ("a", B_PUBLIC): A_PUBLIC,
            ("b", A_PUBLIC): B_PUBLIC,
        }
        self.closed_until: dict[str, float] = {}  # receiver name -> drop inbound until then

    def deliver(self, who: str, actions: list[Action]) -> None:
        queue = [(who, act) for act in actions]
        while queue:
            sender, act = queue.pop(0)
            if not isinstance(act, Transmit):
                self.events.append((sender, act))
                continue
            src = self.routes.get((sender, act.remote))
            if src is None:
                continue
            to = "b" if sender == "a" else "a"
            if self.now < self.closed_until.get(to, -1.0):
                continue
            engine, local = (self.b, B_LOCAL) if to == "b" else (self.a, A_LOCAL)
            queue += [(to, x) for x in engine.handle_datagram(act.data, local, src, self.now)]

    def run(self, until: float, step: float = 0.01) -> None:
        while self.now < until:
            self.deliver("a", self.a.poll(self.now))
            self.deliver("b", self.b.poll(self.now))
            self.now = round(self.now + step, 6)

    def of(self, who: str, kind: type[A]) -> list[A]:
        return [e for w, e in self.events if w == who and isinstance(e, kind)]


def _rc(addr: Address, kind: str = "srflx") -> RemoteCandidate:
    return RemoteCandidate(addr, kind, candidate_priority(kind))


def test_simultaneous_checks_punch_and_nominate() -> None:
    a, b = engines()
    a.set_remote_candidates([_rc(B_PUBLIC), _rc(B_LOCAL, "host")], 0.0)
    b.set_remote_candidates([_rc(A_PUBLIC), _rc(A_LOCAL, "host")], 0.0)
    wire = Wire(a, b)
    # each side's NAT drops the other's checks until its own first check has gone out
    wire.closed_until = {"a": 0.02, "b": 0.02}
    a.start_round(0.0)
    b.start_round(0.0)
    wire.run(1.0)
    (succ_a,) = wire.of("a", PairSucceeded)
    assert succ_a.pair.remote == B_PUBLIC and succ_a.pair.mapped == A_PUBLIC
    assert wire.of("b", PairSucceeded)
    (nom_a,) = wire.of("a", PairNominated)
    (nom_b,) = wire.of("b", PairNominated)
    assert nom_a.pair.remote == B_PUBLIC and nom_b.pair.remote == A_PUBLIC
    assert a.nominated is not None and a.nominated.nominated
    # the unreachable host pair stops being checked once a pair is nominated
    assert a.pairs[(A_LOCAL, B_LOCAL)].state is PairState.FAILED
    assert not wire.of("a", RoundFailed)


def test_address_dependent_peer_is_reached_through_a_peer_reflexive_pair() -> None:
    a, b = engines()
    a.set_remote_candidates([_rc(B_PUBLIC)], 0.0)
    b.set_remote_candidates([_rc(A_PUBLIC)], 0.0)
    wire = Wire(a, b)
    # A's NAT maps its flow to B to a new port; B's checks to A's announced port die there.
    a_new: Address = ("203.0.113.1", 41000)
    wire.routes = {("a", B_PUBLIC): a_new, ("b", a_new): B_PUBLIC}
    a.start_round(0.0)
    b.start_round(0.0)
    wire.run(1.0)
    assert b.stats["prflx_learned"] == 1 and b.stats["triggered"] == 1
    (nom_b,) = wire.of("b", PairNominated)
    assert nom_b.pair.remote == a_new and nom_b.pair.remote_kind == "prflx"
    assert b.pairs[(B_LOCAL, A_PUBLIC)].state is not PairState.SUCCEEDED


def test_round_fails_when_nothing_answers_and_reports_why() -> None:
    a, b = engines()
    a.set_remote_candidates([_rc(B_PUBLIC)], 0.0)
    wire = Wire(a, b)
    wire.routes = {}
    a.start_round(0.0)
    wire.run(6.0, step=0.05)
    (failed,) = wire.of("a", RoundFailed)
    assert "no answer on any of 1 candidate pairs" in failed.reason
    sends = a.stats["sent_check"]
    assert 10 <= sends <= 20  # retransmitted, paced, bounded


def test_unverifiable_input_is_dropped_and_counted_never_raised() -> None:
    a, b = engines()
    a.set_remote_candidates([_rc(B_PUBLIC)], 0.0)
    a.start_round(0.0)
    (tx,) = [x for x in a.poll(0.0) if isinstance(x, Transmit)]
    req = decode_message(tx.data)
    # wrong key
    forged = encode(req, integrity_key=b"x" * 32, fingerprint=True)
    assert b.handle_datagram(forged, B_LOCAL, A_PUBLIC, 0.0) == []
    assert b.stats["dropped_bad_integrity"] == 1
    # no integrity at all / unknown username
    bare = encode(Message(Method.BINDING, MessageClass.REQUEST, attributes=[req.attributes[0]]))
    assert b.handle_datagram(bare, B_LOCAL, A_PUBLIC, 0.0) == []
    other = Message(Method.BINDING, MessageClass.REQUEST, attributes=[Username("zz:yy")])
    assert (
        b.handle_datagram(encode(other, integrity_key=a.credentials.key), B_LOCAL, A_PUBLIC, 0.0)
        == []
    )
    assert b.stats["dropped_no_integrity"] == 1 and b.stats["dropped_unknown_username"] == 1
    # garbage and a stray response
    assert b.handle_datagram(b"\x00\x01\x00", B_LOCAL, A_PUBLIC, 0.0) == []
    stray = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE)
    assert (
        a.handle_datagram(encode(stray, integrity_key=a.credentials.key), A_LOCAL, B_PUBLIC, 0.0)
        == []
    )
    assert a.stats["dropped_unknown_transaction"] == 1
    # the genuine request verifies; its answer from the wrong address does not count
    answer = next(
        x for x in b.handle_datagram(tx.data, B_LOCAL, A_PUBLIC, 0.0) if isinstance(x, Transmit)
    )
    assert a.handle_datagram(answer.data, A_LOCAL, ("192.0.2.66", 1), 0.0) == []
    assert a.stats["dropped_asymmetric"] == 1
    assert any(
        isinstance(x, PairSucceeded)
        for x in a.handle_datagram(answer.data, A_LOCAL, B_PUBLIC, 0.01)
    )


def test_a_peer_claiming_our_role_gets_487() -> None:
    a, _ = engines()
    twin = CheckEngine(derive_credentials(BINDING, is_dialer=False), controlling=True)
    twin.add_base(B_LOCAL)
    twin.set_remote_candidates([_rc(A_PUBLIC)], 0.0)
    twin.start_round(0.0)
    (tx,) = [x for x in twin.poll(0.0) if isinstance(x, Transmit)]
    (resp,) = a.handle_datagram(tx.data, A_LOCAL, B_PUBLIC, 0.0)
    assert isinstance(resp, Transmit)
    assert decode_message(resp.data).message_class is MessageClass.ERROR_RESPONSE
    assert a.stats["role_conflicts"] == 1


def test_monitor_probes_suspects_then_declares_death_but_never_for_an_idle_call() -> None:
    m = DirectMonitor()
    m.reset(0.0, rtt=0.04)
    assert m.poll(10.0) is Verdict.OK  # nothing sent: nothing can be unanswered
    assert m.want_probe(10.0)  # but the keepalive is due
    m.probed(10.0)
    m.heard(10.04)
    m.sent(11.0)
    assert not m.want_probe(11.05)
    assert m.want_probe(11.0 + m.probe_threshold)
    assert m.poll(11.0 + m.suspect_threshold) is Verdict.SUSPECT
    assert m.heard(11.2)  # a suspicion cleared
    m.sent(12.0)
    assert m.poll(12.0 + m.dead_threshold) is Verdict.DEAD
    assert m.dead_threshold < 0.5  # "within a few hundred milliseconds" at a 40 ms RTT
    assert m.next_deadline(12.5) > 12.5


def test_a_receive_only_side_probes_when_a_streaming_peer_goes_quiet() -> None:
    """It sends nothing of its own, so only the receive-side rule can notice the silence."""
    m = DirectMonitor()
    m.reset(0.0, rtt=0.002)
    t = 0.0
    for _ in range(RX_STREAM_PACKETS + 2):  # a 50 pps stream
        t += 0.02
        m.heard(t)
    assert m.streaming and m.rx_gap == pytest.approx(0.02)
    assert m.rx_threshold == pytest.approx(0.08)  # 4 frame gaps, at least the probe threshold
    assert not m.want_probe(t + 0.07)
    assert m.next_deadline(t + 0.01) == pytest.approx(t + 0.08)
    assert m.want_probe(t + 0.08)
    m.probed(t + 0.08)
    assert m.rx_probes == 1 and m.unanswered_since == pytest.approx(t + 0.08)
    # unanswered: the usual escalation from the probe on
    assert m.poll(t + 0.08 + m.suspect_threshold + 1e-9) is Verdict.SUSPECT
    assert m.poll(t + 0.08 + m.dead_threshold + 1e-9) is Verdict.DEAD


def test_a_peer_that_merely_paused_costs_one_probe() -> None:
    m = DirectMonitor()
    m.reset(0.0, rtt=0.04)
    t = 0.0
    for _ in range(RX_STREAM_PACKETS):
        t += 0.02
        m.heard(t)
    due = m.rx_deadline()
    assert due is not None
    m.probed(due)
    assert m.heard(due + 0.04) is False  # answered: no suspicion to clear
    assert not m.streaming and m.rx_deadline() is None  # the peer is idle: no more rx probes
    assert not m.want_probe(due + 1.0)
    assert m.want_probe(due + KEEPALIVE)  # only the keepalive from now on
    # an idle peer (gaps longer than RX_STREAM_GAP) never counts as streaming
    m.reset(10.0)
    for i in range(1, 20):
        m.heard(10.0 + i * 0.5)
    assert not m.streaming


def test_keepalive_interval_rule() -> None:
    assert keepalive_for_lifetime(3.0) == pytest.approx(KEEPALIVE)  # the default: lab's 3 s
    assert keepalive_for_lifetime(30.0) == pytest.approx(20.0)  # Linux unreplied UDP flow
    assert keepalive_for_lifetime(120.0) == KEEPALIVE_MAX
    assert keepalive_for_lifetime(0.1) == KEEPALIVE_MIN
    with pytest.raises(ValueError):
        keepalive_for_lifetime(0)
    from punchthrough.endpoint import EndpointConfig

    assert EndpointConfig().nat_keepalive == KEEPALIVE
    with pytest.raises(ValueError):
        EndpointConfig(nat_keepalive=0)
    with pytest.raises(ValueError):
        EndpointConfig(nat_keepalive=60.0)  # not below the idle timeout


def test_waterfall_records_the_planners_choice() -> None:
    easy = NatSummary(
        udp=True, mapping="endpoint-independent", filtering="address-and-port-dependent"
    )
    rnd = NatSummary(udp=True, mapping="address-and-port-dependent", allocation="random")
    w = Waterfall()
    w.apply(plan_stages(easy, rnd))
    assert w["birthday"].status == "pending" and w["birthday"].needed
    assert "pinholes" in w["birthday"].reason
    assert (
        w["port-prediction"].status == "skipped"
        and "nothing to predict" in w["port-prediction"].reason
    )
    assert w.needed == ["birthday"]
    w2 = Waterfall()
    w2.apply(plan_stages(rnd, rnd))
    assert w2.needed == [] and "relay" in w2["birthday"].reason
    w.start("birthday", 0.5)
    assert w["birthday"].attempts == 1
    w.start("hole-punch", 1.0)
    w.succeed("hole-punch", 1.2, "pair")
    w.fail("hole-punch", 2.0, "late")  # success is final
    assert w["hole-punch"].status == "succeeded" and w["hole-punch"].at == 1.2


def test_probes_are_one_shot_and_an_answered_probe_is_a_pair() -> None:
    """A hard stage's check to an address nobody offered: sent once, no retransmission; the
    peer answers it (it arrived on a base of the peer); the answer makes a succeeded pair."""
    a, b = engines()
    b.add_probe_base(("10.0.2.2", 7000))
    t = a.probe(A_LOCAL, ("10.0.2.2", 7000), 0.0, "birthday")
    assert a.next_deadline() is None  # nothing scheduled: no retransmission
    out = b.handle_datagram(t.data, ("10.0.2.2", 7000), A_LOCAL, 0.01)
    resp = next(x for x in out if isinstance(x, Transmit) and x.remote == A_LOCAL)
    got = a.handle_datagram(resp.data, A_LOCAL, ("10.0.2.2", 7000), 0.02)
    ok = [x for x in got if isinstance(x, PairSucceeded)]
    assert ok and ok[0].pair.remote_kind == "birthday"
    assert (A_LOCAL, ("10.0.2.2", 7000)) in a.pairs
    # A probe base accepts checks but is never paired with every remote candidate.
    assert all(k[0] != ("10.0.2.2", 7000) for k in b.pairs if b.pairs[k].remote_kind != "prflx")


def test_a_triggered_check_from_a_probed_address_keeps_the_probes_stage() -> None:
    """The birthday's easy side probes the hard side's port P; the hard side's answer is lost
    (or late) but its own triggered check from P arrives first: the pair it creates is the
    birthday's success, not a peer-reflexive hole punch (the lab reported that race)."""
    a, b = engines()
    hard_port: Address = ("203.0.113.2", 31818)
    a.probe(A_LOCAL, hard_port, 0.0, "birthday")
    req = b._request(use_candidate=False)[1]
    data = encode(req, integrity_key=b.credentials.key, fingerprint=True)
    a.handle_datagram(data, A_LOCAL, hard_port, 0.01)
    assert a.pairs[(A_LOCAL, hard_port)].remote_kind == "birthday"
    assert a.stats["prflx_learned"] == 1
    # an address nobody probed stays peer-reflexive
    other: Address = ("203.0.113.2", 40000)
    req = b._request(use_candidate=False)[1]
    a.handle_datagram(
        encode(req, integrity_key=b.credentials.key, fingerprint=True), A_LOCAL, other, 0.02
    )
    assert a.pairs[(A_LOCAL, other)].remote_kind == "prflx"


def test_raised_limits_stay_bounded_and_remove_base_forgets_its_pairs() -> None:
    a, _ = engines()
    a.raise_limits(10**9, 10**9)
    assert MAX_PAIRS < a.max_pairs <= 8192 and MAX_TRANSACTIONS < a.max_transactions <= 8192
    a.raise_limits(1, 1)
    assert a.max_pairs == MAX_PAIRS and a.max_transactions == MAX_TRANSACTIONS
    extra: Address = ("10.0.1.2", 5001)
    a.add_probe_base(extra)
    for port in range(2000, 2100):
        a.probe(extra, ("203.0.113.9", port), 0.0, "birthday")
    assert len(a._tx) == 100
    a.remove_base(extra)
    assert not a._tx and extra not in a.probe_bases
    assert not any(k[0] == extra for k in a.probed)
