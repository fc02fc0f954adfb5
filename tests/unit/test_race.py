"""``Race`` driven directly with scripted inputs, as ``test_traversal_checks`` drives the check
engine: every stage's start, skip, win, beaten, retry with back-off, fallback and late summary.
No event loop, no sockets: the race takes ``now`` and returns actions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from punchthrough.nat.summary import APD, EI, NatSummary
from punchthrough.netio import Address
from punchthrough.signal import CheckStart, HardNatBirthdayStart
from punchthrough.traversal.checks import CandidatePair
from punchthrough.traversal.hardnat.plan import Budget
from punchthrough.traversal.hardnat.prediction import make_probe
from punchthrough.traversal.race import (
    HARD_START_DELAY,
    MAX_ATTEMPTS,
    PACING_GUARD,
    PUNCH_GRACE,
    RETRY_DEAD,
    RETRY_FAILED,
    START_MARGIN,
    DeliverProbe,
    KeepWinner,
    LocalView,
    ProbeNow,
    Race,
    Reason,
    SendControl,
    Stage,
    StartBirthdayEasy,
    StartBirthdayHard,
    StartMutual,
    StartPredicted,
    StartPredicting,
    StartRound,
    Status,
    StopAttempt,
    SwitchPath,
    Why,
)

BASE: Address = ("10.0.1.2", 5000)
EXTRA: Address = ("10.0.1.2", 6001)
SERVERS: tuple[Address, ...] = (
    ("198.51.100.1", 3478),
    ("198.51.100.2", 3478),
    ("198.51.100.3", 3478),
)
EASY_IP, HARD_IP = "203.0.113.1", "203.0.113.2"
PEER_SRFLX: Address = (EASY_IP, 4000)
OWD = 0.02

CONE = NatSummary(udp=True, mapping=EI, filtering=EI, public_ip=EASY_IP)
EASY = NatSummary(udp=True, mapping=EI, filtering=APD, public_ip=EASY_IP)
RANDOM = NatSummary(
    udp=True,
    mapping=APD,
    filtering=APD,
    allocation="random",
    port_range=(1024, 65535),
    ports=(1500, 9000, 30000, 64000),
    public_ip=HARD_IP,
)
SEQ = NatSummary(
    udp=True, mapping=APD, filtering=APD, allocation="sequential", delta=1, public_ip=HARD_IP
)


def race(local: NatSummary, *, controlling: bool = True, budget: Budget | None = None) -> Race:
    r = Race(
        controlling=controlling,
        budget=budget or Budget(),
        base=BASE,
        call_id="cdialer",
        round_id="rme",
    )
    r.local = LocalView(summary=local, sample_servers=SERVERS)
    return r


def pair(remote: Address, kind: str = "srflx", local: Address = BASE) -> CandidatePair:
    return CandidatePair(local, remote, kind, 1)


def connected(r: Race, remote: NatSummary | None, now: float = 1.0) -> list[object]:
    """The peer's candidates (srflx at PEER_SRFLX or the hard IP) and summary arrived."""
    srflx = {PEER_SRFLX if remote is None or remote.mapping == EI else (HARD_IP, 4000)}
    if remote is not None:
        r.nat_report(remote, now)
    return list(r.remote_candidates(now, srflx, set(), update=False, owd=OWD))


def start_round(r: Race, now: float = 1.0, n_pairs: int = 2) -> float:
    """Propose (dialer) and run the round; returns when the hard stages are due."""
    due = r.next_deadline()
    assert due == pytest.approx(now + OWD + START_MARGIN)
    assert r.poll(due - 0.001, n_pairs=n_pairs, owd=OWD) == []
    out = r.poll(due, n_pairs=n_pairs, owd=OWD)
    assert out == [StartRound(1, reset=True)]
    return due + n_pairs * PACING_GUARD + HARD_START_DELAY


# -- the hole punch -----------------------------------------------------------------------------
def test_dialer_agrees_a_start_and_the_plan_skips_what_cannot_help() -> None:
    r = race(CONE)
    out = connected(r, CONE)
    assert len(out) == 1 and isinstance(out[0], SendControl)
    msg = out[0].msg
    assert isinstance(msg, CheckStart) and msg.generation == 1 and msg.stage == "hole-punch"
    assert msg.start_at_ms - msg.sent_at_ms == int((OWD + START_MARGIN) * 1000)
    start_round(r)
    wf = r.waterfall
    assert wf[Stage.HOLE_PUNCH].status is Status.STARTED
    assert wf[Stage.PORT_MAPPING].status is Status.SKIPPED
    assert wf[Stage.PORT_MAPPING].why.code is Why.NO_PORT_MAPPING
    for s in (Stage.PORT_PREDICTION, Stage.BIRTHDAY):
        assert wf[s].status is Status.SKIPPED and wf[s].why.code is Why.PUNCH_SUFFICES
    assert r.next_deadline() is None  # nothing hard to start


@pytest.mark.parametrize("blocked", ["local", "remote"])
def test_udp_blocked_on_a_side_skips_every_direct_stage_and_sends_no_check(blocked: str) -> None:
    no_udp = NatSummary(udp=False)
    r = race(no_udp if blocked == "local" else CONE)
    connected(r, no_udp if blocked == "remote" else CONE)
    due = r.next_deadline()
    assert due is not None
    assert r.poll(due, n_pairs=2, owd=OWD) == []  # no StartRound: no check is sent
    for s in (Stage.PORT_MAPPING, Stage.HOLE_PUNCH, Stage.PORT_PREDICTION, Stage.BIRTHDAY):
        assert r.waterfall[s].status is Status.SKIPPED, s
        assert r.waterfall[s].why.code is Why.UDP_BLOCKED, s
    assert f"UDP is blocked on the {blocked} side" in r.waterfall[Stage.HOLE_PUNCH].why.text
    assert r.next_deadline() is None


def test_acceptor_maps_the_dialers_moment_and_ignores_stale_rounds() -> None:
    r = race(CONE, controlling=False)
    assert connected(r, CONE) == []  # the acceptor waits for CheckStart
    msg = CheckStart(
        call_id="rx", stage="hole-punch", generation=1, start_at_ms=1100, sent_at_ms=1000
    )
    r.check_start(msg, 2.0, OWD)
    assert r.next_deadline() == pytest.approx(2.0 + 0.1 - OWD)
    assert r.poll(2.08, n_pairs=1, owd=OWD) == [StartRound(1, reset=True)]
    r.check_start(msg, 3.0, OWD)  # the same generation again
    assert r.stats["stale_check_start"] == 1 and r.next_deadline() is None


def test_the_dialer_starts_at_once_when_the_acceptor_says_it_checks_already() -> None:
    """The acceptor had our early offer and checks since half a round trip: its CheckStart
    makes our proposed round start now instead of one one-way delay ahead."""
    r = race(CONE)
    connected(r, CONE, now=1.0)
    assert r.next_deadline() == pytest.approx(1.0 + OWD + START_MARGIN)
    stale = CheckStart(call_id="ra", stage="hole-punch", generation=2, start_at_ms=0, sent_at_ms=0)
    r.check_start(stale, 1.001, OWD)  # not the round we proposed: ignored
    assert r.next_deadline() == pytest.approx(1.0 + OWD + START_MARGIN)
    ours = CheckStart(call_id="ra", stage="hole-punch", generation=1, start_at_ms=0, sent_at_ms=0)
    r.check_start(ours, 1.001, OWD)
    assert r.next_deadline() == pytest.approx(1.001)
    assert r.poll(1.001, n_pairs=2, owd=OWD) == [StartRound(1, reset=True)]
    r.check_start(ours, 1.002, OWD)  # nothing pending any more: nothing happens
    assert r.next_deadline() is None


def test_a_hole_punch_win_switches_and_skips_the_pending_hard_stages() -> None:
    r = race(RANDOM)
    connected(r, EASY)
    start_round(r)  # the birthday attack is planned, due 70 ms later
    assert r.waterfall[Stage.BIRTHDAY].status is Status.PENDING
    p = pair(PEER_SRFLX)
    out = r.pair_succeeded(p, 1.04)
    assert out == [SwitchPath(p, Stage.HOLE_PUNCH, "check succeeded")]
    wf = r.waterfall
    assert wf.strategy is Stage.HOLE_PUNCH and wf.direct_at == 1.04
    assert wf[Stage.HOLE_PUNCH].status is Status.SUCCEEDED
    bd = wf[Stage.BIRTHDAY]
    assert bd.status is Status.SKIPPED and bd.why.code is Why.DIRECT_FOUND
    assert wf[Stage.PORT_PREDICTION].why.code is Why.NOTHING_TO_PREDICT  # planned skip stays
    assert r.on_direct and r.direct_pair is p and r.upgrades == 1
    assert r.next_deadline() is None  # the pending start is cancelled


def test_a_port_mapped_pair_is_the_port_mappings_win() -> None:
    r = race(replace(CONE, port_mapping=("pcp",)))
    connected(r, CONE)
    start_round(r)
    assert r.waterfall[Stage.PORT_MAPPING].status is Status.STARTED
    out = r.pair_succeeded(pair((EASY_IP, 5555), kind="mapped"), 1.2)
    assert isinstance(out[-1], SwitchPath) and out[-1].strategy is Stage.PORT_MAPPING
    assert r.waterfall[Stage.PORT_MAPPING].status is Status.SUCCEEDED


def test_a_failed_round_says_what_the_pair_needs_and_the_dialer_retries_later() -> None:
    r = race(RANDOM)
    connected(r, RANDOM)  # both random: nothing can work
    start_round(r)
    assert r.round_failed(5.0, "no answer from 2 pairs") == []
    hp = r.waterfall[Stage.HOLE_PUNCH]
    assert hp.status is Status.FAILED and hp.why.code is Why.ROUND_UNANSWERED
    assert hp.reason.startswith("no answer from 2 pairs; ") and "staying on the relay" in hp.reason
    assert r.next_deadline() == 5.0 + RETRY_FAILED[0]
    out = r.poll(5.0 + RETRY_FAILED[0], n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], SendControl)  # a new CheckStart


# -- birthday -----------------------------------------------------------------------------------
def _birthday_hard(r: Race) -> StartBirthdayHard:
    connected(r, EASY)
    due = start_round(r)
    assert r.waterfall[Stage.BIRTHDAY].status is Status.PENDING
    assert r.waterfall[Stage.BIRTHDAY].needed
    out = r.poll(due, n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], StartBirthdayHard)
    assert out[0].easy == PEER_SRFLX and out[0].plan.role == "hard"
    assert r.waterfall[Stage.BIRTHDAY].status is Status.STARTED
    assert r.waterfall[Stage.BIRTHDAY].attempts == 1
    return out[0]


def test_birthday_hard_side_wins_on_a_pinhole_and_beats_the_punch() -> None:
    r = race(RANDOM)
    start = _birthday_hard(r)
    r.socket_opened(start.attempt, EXTRA)
    assert r.peer_seen(EXTRA, PEER_SRFLX) == [KeepWinner(start.attempt, EXTRA)]
    p = pair(PEER_SRFLX, kind="prflx", local=EXTRA)
    out = r.pair_succeeded(p, 3.0)
    assert out == [SwitchPath(p, Stage.BIRTHDAY, "check succeeded")]
    wf = r.waterfall
    assert wf.strategy is Stage.BIRTHDAY and wf[Stage.BIRTHDAY].status is Status.SUCCEEDED
    hp = wf[Stage.HOLE_PUNCH]
    assert hp.status is Status.BEATEN and hp.beaten_by is Stage.BIRTHDAY
    assert hp.why.code is Why.BEATEN
    assert wf[Stage.PORT_PREDICTION].status is Status.SKIPPED


def test_a_running_birthday_beaten_by_the_punch_is_stopped_at_once() -> None:
    r = race(RANDOM)
    start = _birthday_hard(r)
    out = r.pair_succeeded(pair(("192.0.2.9", 4000), kind="host"), 2.0)
    assert out[0] == StopAttempt(start.attempt, Stage.HOLE_PUNCH)
    assert isinstance(out[1], SwitchPath) and out[1].strategy is Stage.HOLE_PUNCH
    bd = r.waterfall[Stage.BIRTHDAY]
    assert bd.status is Status.BEATEN and bd.beaten_by is Stage.HOLE_PUNCH and bd.at == 2.0
    # its executor's late report changes nothing
    r.attempt_ended(start.attempt, Reason(Why.UNANSWERED, "no probe hit"), 9.0)
    assert bd.status is Status.BEATEN and r.next_deadline() is None


def test_birthday_retries_with_back_off_up_to_its_attempt_cap() -> None:
    r = race(RANDOM, controlling=False)  # the acceptor: no dialer rounds in between
    assert connected(r, EASY) == []
    msg = CheckStart(
        call_id="rx", stage="hole-punch", generation=1, start_at_ms=1050, sent_at_ms=1000
    )
    r.check_start(msg, 1.0, OWD)
    assert r.poll(1.03, n_pairs=2, owd=OWD) == [StartRound(1, reset=True)]
    out = r.poll(r.next_deadline() or 0.0, n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], StartBirthdayHard)
    attempt, now, delays = out[0].attempt, 10.0, []
    for k in range(MAX_ATTEMPTS):
        r.attempt_ended(attempt, Reason(Why.UNANSWERED, "no probe hit"), now)
        bd = r.waterfall[Stage.BIRTHDAY]
        assert bd.status is Status.FAILED and bd.why.code is Why.UNANSWERED
        due = r.next_deadline()
        assert due is not None
        delays.append(due - now)
        out = r.poll(due, n_pairs=2, owd=OWD)
        now = due + 1.0
        if k < MAX_ATTEMPTS - 1:
            assert len(out) == 1 and isinstance(out[0], StartBirthdayHard)
            assert r.waterfall[Stage.BIRTHDAY].attempts == k + 2
            attempt = out[0].attempt
        else:
            assert out == []  # the cap: each attempt costs hundreds of sockets
    assert delays == [RETRY_FAILED[0], 2 * RETRY_FAILED[0], 4 * RETRY_FAILED[0]]


def test_birthday_easy_side_starts_on_the_peers_start_and_refuses_strangers() -> None:
    r = race(EASY, controlling=False)
    connected(r, RANDOM)
    msg = HardNatBirthdayStart(
        call_id="cdialer", acceptor_port_count=256, start_at_ms=1100, sent_at_ms=1000
    )
    wrong = HardNatBirthdayStart(
        call_id="cother", acceptor_port_count=256, start_at_ms=1100, sent_at_ms=1000
    )
    assert r.birthday_start(wrong, 2.0, OWD) == []
    assert r.stats["hardnat_wrong_call_id"] == 1
    out = r.birthday_start(msg, 2.0, OWD)
    assert len(out) == 1 and isinstance(out[0], StartBirthdayEasy)
    assert out[0].hard.public_ip == HARD_IP and out[0].sockets == 256
    assert out[0].start == pytest.approx(2.0 + 0.1 - OWD)
    assert r.birthday_start(msg, 2.1, OWD) == []  # one at a time
    assert r.stats["birthday_start_refused"] == 1
    # the main socket's pairs to the hard IP are the attack's while it runs
    assert r.stage_of(BASE, (HARD_IP, 40000), "srflx") is Stage.BIRTHDAY
    assert r.stage_of(BASE, ("203.0.113.9", 40000), "srflx") is None


def test_a_side_the_plan_does_not_make_easy_refuses_the_attack() -> None:
    r = race(CONE, controlling=False)
    connected(r, CONE)
    msg = HardNatBirthdayStart(
        call_id="cdialer", acceptor_port_count=8, start_at_ms=1100, sent_at_ms=1000
    )
    assert r.birthday_start(msg, 2.0, OWD) == []
    assert r.stats["birthday_start_refused"] == 1


# -- port prediction ----------------------------------------------------------------------------
def test_predicted_side_samples_servers_other_than_the_peer() -> None:
    r = race(SEQ)
    r.local = replace(r.local, sample_servers=(*SERVERS, PEER_SRFLX))
    connected(r, EASY)
    due = start_round(r)
    out = r.poll(due, n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], StartPredicted)
    assert out[0].peer == PEER_SRFLX and out[0].servers == SERVERS and out[0].delta == 1
    assert r.waterfall[Stage.PORT_PREDICTION].status is Status.STARTED
    assert r.waterfall[Stage.BIRTHDAY].why.code is Why.PREDICTION_CHEAPER


def test_predicting_side_checks_the_window_once_per_probe() -> None:
    r = race(EASY, controlling=False)
    connected(r, SEQ)
    probe = make_probe("cdialer", [31000, 31001, 31002], 1, 1000, HARD_IP)
    out = r.hard_probe(probe, 2.0)
    assert len(out) == 1 and isinstance(out[0], StartPredicting)
    assert out[0].peer_ip == HARD_IP and 31003 in out[0].window.ports
    assert r.hard_probe(probe, 2.1) == []
    assert r.stats["prediction_probe_refused"] == 1


def test_mutual_prediction_starts_on_the_peers_probe_or_takes_it_while_running() -> None:
    probe = make_probe("cdialer", [31000, 31001, 31002], 1, 1000, HARD_IP)
    # the peer's probe first: it starts our attempt, carrying it
    r = race(SEQ, controlling=False)
    connected(r, SEQ)
    out = r.hard_probe(probe, 2.0)
    assert len(out) == 1 and isinstance(out[0], StartMutual) and out[0].peer_probe is not None
    # ours first: the probe is delivered to it, once
    r = race(SEQ)
    connected(r, SEQ)
    due = start_round(r)
    out = r.poll(due, n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], StartMutual) and out[0].peer_probe is None
    attempt = out[0].attempt
    delivered = r.hard_probe(probe, due + 0.5)
    assert len(delivered) == 1 and isinstance(delivered[0], DeliverProbe)
    assert delivered[0].attempt == attempt and delivered[0].probe.external_ip == HARD_IP
    assert r.stats["prediction_probe_refused"] == 0
    assert r.hard_probe(probe, due + 0.6) == []
    assert r.stats["prediction_probe_refused"] == 1


# -- late summary, fallback ---------------------------------------------------------------------
def test_a_late_summary_replans_and_starts_the_stage_it_now_needs() -> None:
    """The summary that completes the plan starts the stage at once once the round's first
    checks are out: no fixed delay after it (it used to wait HARD_START_DELAY more)."""
    r = race(RANDOM)
    connected(r, None)  # the peer has not reported yet
    due = start_round(r)
    assert r.poll(due, n_pairs=2, owd=OWD) == []  # mapping unknown: nothing chosen
    r.nat_report(EASY, 2.0)
    assert r.waterfall[Stage.BIRTHDAY].status is Status.PENDING
    assert r.next_deadline() == pytest.approx(2.0)
    out = r.poll(2.0, n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], StartBirthdayHard)


def test_a_summary_during_the_punchs_first_checks_waits_until_they_are_out() -> None:
    """A sequential NAT must not take the hard stage's samples while the punch's first checks
    still open new flows: a summary arriving then starts the stage when they are out."""
    r = race(RANDOM)
    connected(r, None)
    start = r.next_deadline()
    assert start is not None
    due = start_round(r, now=1.0, n_pairs=2)  # start + 2 pacing gaps + the margin
    r.nat_report(EASY, start + 0.001)
    assert r.next_deadline() == pytest.approx(due)
    assert r.poll(due - 0.001, n_pairs=2, owd=OWD) == []
    assert isinstance(r.poll(due, n_pairs=2, owd=OWD)[0], StartBirthdayHard)


def _acceptor_round(local: NatSummary, remote: NatSummary) -> Race:
    """An acceptor with ``remote``'s summary whose round started at 1.01 (2 pairs)."""
    r = race(local, controlling=False)
    connected(r, remote)
    msg = CheckStart(
        call_id="r", stage="hole-punch", generation=1, start_at_ms=1030, sent_at_ms=1000
    )
    r.check_start(msg, 1.0, OWD)
    assert r.poll(1.01, n_pairs=2, owd=OWD) == [StartRound(1, reset=True)]
    return r


#: When the acceptor's round (started at 1.01, 2 pairs) has given the punch its chance.
CHANCE_ENDS = 1.01 + 2 * PACING_GUARD + PUNCH_GRACE + 2 * OWD


def test_a_first_summary_without_filtering_starts_prediction_but_not_the_birthday() -> None:
    """The peer's first summary says EIM with its filtering test still running. Prediction
    (cheap) starts with the punch's guard, not after the test; the birthday (256 sockets) waits
    for the filtering verdict, and starts as soon as the final summary says APDF."""
    partial = replace(EASY, filtering="unknown")
    # the sequential side: predicted role, started right after the punch's first checks
    r = _acceptor_round(SEQ, partial)
    due = 1.01 + 2 * PACING_GUARD + HARD_START_DELAY
    assert r.next_deadline() == pytest.approx(due)
    out = r.poll(due, n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], StartPredicted)
    assert not r.waterfall[Stage.PORT_PREDICTION].needed  # the punch may still suffice
    # the random side: the birthday waits (for the verdict, at most for the punch's chance)
    r = _acceptor_round(RANDOM, partial)
    assert r.next_deadline() == pytest.approx(CHANCE_ENDS)  # not before
    assert r.poll(CHANCE_ENDS - 0.001, n_pairs=2, owd=OWD) == []
    assert r.waterfall[Stage.BIRTHDAY].status is Status.PENDING
    assert r.waterfall[Stage.BIRTHDAY].why.code is Why.STAGE_RUNS
    verdict = CHANCE_ENDS - 0.05
    r.nat_report(EASY, verdict)  # the filtering verdict: APDF, starts it at once
    assert r.next_deadline() == pytest.approx(verdict)
    out = r.poll(verdict, n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], StartBirthdayHard)
    assert r.poll(CHANCE_ENDS, n_pairs=2, owd=OWD) == []  # running: not started twice
    # and a final summary saying EIF makes the pending birthday unnecessary: never started
    r = _acceptor_round(RANDOM, partial)
    r.nat_report(CONE, verdict)
    assert r.poll(CHANCE_ENDS, n_pairs=2, owd=OWD) == []
    assert r.waterfall[Stage.BIRTHDAY].status is Status.SKIPPED
    assert r.waterfall[Stage.BIRTHDAY].why.code is Why.PUNCH_SUFFICES


def test_a_stage_planned_after_the_punch_starts_when_the_punch_had_its_chance() -> None:
    """The easy side's filtering stays unknown (its STUN servers lack RFC 5780): the birthday
    is planned after the punch. It starts once the punch's first checks, two retransmissions
    and a relayed round trip went unanswered, not at the round's 5 s timeout; a new round is a
    new chance; and a punch answer that comes late still wins and stops it."""
    unknown = replace(EASY, filtering="unknown")
    r = _acceptor_round(RANDOM, unknown)
    assert r.next_deadline() == pytest.approx(CHANCE_ENDS)
    out = r.poll(CHANCE_ENDS, n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], StartBirthdayHard)
    assert r.waterfall[Stage.HOLE_PUNCH].status is Status.STARTED  # still checking
    assert r.next_deadline() is None
    # (not to the easy side's srflx: from the main socket that flow is the attack's own)
    late = r.pair_succeeded(pair((EASY_IP, 4001), "prflx"), CHANCE_ENDS + 0.2)
    assert StopAttempt(out[0].attempt, Stage.HOLE_PUNCH) in late
    assert r.waterfall[Stage.BIRTHDAY].status is Status.BEATEN
    # a punch that answers within its chance: nothing else starts
    r = _acceptor_round(RANDOM, unknown)
    r.pair_succeeded(pair(PEER_SRFLX), CHANCE_ENDS - 0.01)
    assert r.next_deadline() is None
    assert r.poll(CHANCE_ENDS, n_pairs=2, owd=OWD) == []
    assert r.waterfall[Stage.BIRTHDAY].status is Status.SKIPPED
    # a pair the punch is expected to connect arms no such timer
    assert _acceptor_round(RANDOM, EASY).next_deadline() != pytest.approx(CHANCE_ENDS)
    assert _acceptor_round(CONE, CONE).next_deadline() is None


def test_a_dead_direct_path_brings_back_the_dialers_round_with_back_off() -> None:
    r = race(CONE)
    connected(r, CONE)
    start_round(r)
    p = pair(PEER_SRFLX)
    r.pair_succeeded(p, 1.5)
    r.path_dead(4.0)
    assert r.fallbacks == 1 and not r.on_direct
    assert r.next_deadline() == 4.0 + RETRY_DEAD[0]
    out = r.poll(4.0 + RETRY_DEAD[0], n_pairs=2, owd=OWD)
    assert len(out) == 1 and isinstance(out[0], SendControl)
    r.poll(r.next_deadline() or 0.0, n_pairs=2, owd=OWD)  # the round starts
    assert r.pair_nominated(p, 6.0) == [SwitchPath(p, Stage.HOLE_PUNCH, "pair nominated")]
    r.path_dead(7.0)  # a path that worked again reset the back-off
    assert r.next_deadline() == 7.0 + RETRY_DEAD[0]
    r.poll(8.0, n_pairs=2, owd=OWD)  # proposes
    r.poll(r.next_deadline() or 0.0, n_pairs=2, owd=OWD)  # the round starts
    r.round_failed(9.0, "no answer")  # nothing answers: the next try waits twice as long
    assert r.next_deadline() == 9.0 + 2 * RETRY_DEAD[0]
    # a network change on a direct path checks it at once
    r.pair_nominated(p, 8.0)
    r.on_direct = True
    assert r.local_candidates_changed(8.5, OWD) == [ProbeNow()]


# -- attribution --------------------------------------------------------------------------------
def test_the_hard_sides_main_socket_hit_stays_the_birthdays_after_it_won() -> None:
    r = race(RANDOM)
    start = _birthday_hard(r)
    assert r.stage_of(BASE, PEER_SRFLX, "srflx") is Stage.BIRTHDAY
    assert r.stage_of(BASE, (EASY_IP, 4001), "prflx") is None  # not the target
    assert r.stage_of(("10.0.1.2", 6000), PEER_SRFLX, "srflx") is None  # not our main socket
    assert r.peer_seen(BASE, PEER_SRFLX) == [KeepWinner(start.attempt, BASE)]
    # the switch asks again after the attempt is done: the answer must not change
    assert r.stage_of(BASE, PEER_SRFLX, "srflx") is Stage.BIRTHDAY
    # a probe's own kind always names its stage
    assert r.stage_of(BASE, (HARD_IP, 1), "port-prediction") is Stage.PORT_PREDICTION


def test_a_lost_attempt_stops_claiming_pairs() -> None:
    r = race(RANDOM)
    start = _birthday_hard(r)
    r.attempt_ended(start.attempt, Reason(Why.UNANSWERED, "no probe hit"), 9.0)
    assert r.stage_of(BASE, PEER_SRFLX, "srflx") is None
    r.socket_opened(start.attempt, EXTRA)
    r.socket_closed(EXTRA)
    assert r.stage_of(EXTRA, PEER_SRFLX, "prflx") is None
