"""``Race``: the waterfall as one sans-IO state machine (the design's ``race()``).

Inputs are method calls with ``now`` (candidates, NAT summaries, control messages, check
results, sockets opened and closed, stage attempts ending, a dead path, the timer); outputs are
typed actions (:mod:`.actions`) and :meth:`Race.next_deadline`. Every decision of the waterfall
is taken here and nowhere else: which stages run or are skipped and why, when a round of checks
starts, when a hard stage starts and is retried (back-off, :data:`MAX_ATTEMPTS`), which stage a
verified pair belongs to, who won, who was beaten (stopped at once: no polling), re-planning on
a late NAT summary, and the dialer's retry after a failed round or a dead path.

Two facts belong to the executor and are refreshed by it before each input: :attr:`on_direct`
(the path manager's current path is direct) and :attr:`local` (what the endpoint knows of its
own NAT, which a re-gather changes under the call).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Final

from punchthrough.netio import Address
from punchthrough.signal import CheckStart, HardNatBirthdayStart, HardNatProbe
from punchthrough.traversal.checks import CandidatePair
from punchthrough.traversal.hardnat.birthday import BirthdayError, parse_birthday_start
from punchthrough.traversal.hardnat.plan import Budget, StagePlan, plan_stages
from punchthrough.traversal.hardnat.prediction import (
    PredictionError,
    SequentialProbe,
    parse_probe,
    predict_window,
)
from punchthrough.traversal.hardnat.summary import APD, NatSummary
from punchthrough.traversal.race.actions import (
    Action,
    DeliverProbe,
    KeepWinner,
    ProbeNow,
    SendControl,
    StartBirthdayEasy,
    StartBirthdayHard,
    StartMutual,
    StartPredicted,
    StartPredicting,
    StartRound,
    StopAttempt,
    SwitchPath,
)
from punchthrough.traversal.race.records import HARD, Reason, Stage, Status, Waterfall
from punchthrough.traversal.reasons import Why

log = logging.getLogger(__name__)

#: Margin added to the one-way delay when agreeing a start moment (scheduling slack).
START_MARGIN: Final = 0.010
#: Retry back-off after the direct path died (seconds): first, cap.
RETRY_DEAD: Final = (1.0, 30.0)
#: Retry back-off after a round in which nothing answered, and after a hard stage failed (the
#: pair may need another stage; networks also change): first, cap.
RETRY_FAILED: Final = (30.0, 300.0)
#: Hard stages start after the hole punch's first checks: one pacing gap (checks.PACING) per
#: pair, plus this margin (a sequential NAT's burst must not interleave with new punch flows).
PACING_GUARD: Final = 0.010
HARD_START_DELAY: Final = 0.05
#: Attempts of one hard stage per connection (each one costs sockets and probes).
MAX_ATTEMPTS: Final = 3
#: A peer's mutual-prediction probe that arrived before our own attempt began is used this long.
MUTUAL_PROBE_FRESH: Final = 2.0


@dataclass
class LocalView:
    """What the endpoint knows of its own side (the executor keeps it current)."""

    summary: NatSummary = field(default_factory=lambda: NatSummary(udp=True))
    #: Our port-mapped endpoint, if the gateway gave one.
    mapped: Address | None = None
    #: Why there is no mapped candidate (for the report).
    port_mapping_note: str = "no port-mapping gateway configured"
    #: STUN servers a hard stage may take fresh samples from.
    sample_servers: tuple[Address, ...] = ()


@dataclass
class Attempt:
    """One run of one role of a hard stage (what the race needs to attribute and stop it)."""

    id: int
    stage: Stage
    role: str
    started: float
    #: Birthday hard side: the easy side's public endpoint every pinhole points at.
    target: Address | None = None
    #: Birthday easy side: the hard side's public IP every probe goes to.
    target_ip: str | None = None
    locals: set[Address] = field(default_factory=set)
    done: bool = False
    #: The main socket won (its own flow to the target was hit).
    main_won: bool = False
    has_peer_probe: bool = False


def _backoff(previous: float | None, policy: tuple[float, float]) -> float:
    first, cap = policy
    return first if previous is None else min(previous * 2, cap)


class Race:
    """The waterfall of one connection (module docstring)."""

    def __init__(
        self, *, controlling: bool, budget: Budget, base: Address, call_id: str, round_id: str
    ) -> None:
        self.controlling = controlling
        self.budget = budget
        self.base = base
        #: Both sides know it (the dialer's ufrag): hard-stage messages carry it.
        self.call_id = call_id
        self._round_id = round_id
        self.waterfall = Waterfall()
        self.stats: Counter[str] = Counter()
        # -- facts the executor refreshes before every input --
        self.on_direct = False
        self.local = LocalView()
        # -- the peer --
        self.remote_summary: NatSummary | None = None
        self.remote_srflx: set[Address] = set()
        self.remote_mapped: set[Address] = set()
        self.have_remote = False
        #: Evidence from the peer's checks that it maps endpoint-dependently (prflx ports).
        self._remote_dependent = False
        self._remote_port_mapping = False
        # -- rounds and timers --
        self.round = 0  # the check engine's round number
        self._pending_round = 0
        self._round_start: float | None = None
        self._retry_at: float | None = None
        self._retry_delay: float | None = None
        self._hard_start_at: float | None = None
        self._hard_backoff: float | None = None
        # -- hard stages --
        self._attempts: dict[Stage, Attempt] = {}
        self._next_attempt = 1
        self._extra: dict[Address, Stage] = {}
        self._early_probe: tuple[SequentialProbe, float] | None = None
        # -- outcome --
        self.direct_pair: CandidatePair | None = None
        self.upgrades = 0
        self.fallbacks = 0

    # -- the plan ------------------------------------------------------------------------------
    def local_summary(self) -> NatSummary:
        s = self.local.summary
        if self.waterfall[Stage.PORT_MAPPING].status is Status.FAILED:
            s = s.without_port_mapping()
        return s

    def remote_view(self) -> NatSummary:
        r = self.remote_summary or NatSummary(udp=True)
        if self._remote_dependent and r.mapping == "unknown":
            r = replace(r, mapping=APD)
        if self._remote_port_mapping and not r.port_mapping:
            r = replace(r, port_mapping=("pcp",))
        if self.waterfall[Stage.PORT_MAPPING].status is Status.FAILED:
            r = r.without_port_mapping()
        return r

    def plan(self) -> dict[Stage, StagePlan]:
        """The stages for this pair, from both NAT summaries (:func:`plan_stages`)."""
        plans = plan_stages(self.local_summary(), self.remote_view(), budget=self.budget)
        return {Stage(p.stage): p for p in plans}

    def remote_public_endpoint(self) -> Address | None:
        """The peer's server-reflexive endpoint (what its endpoint-independent NAT shows all)."""
        srflx = sorted(self.remote_srflx)
        return srflx[0] if srflx else None

    def active(self, stage: Stage) -> bool:
        a = self._attempts.get(stage)
        return a is not None and not a.done

    # -- the timer -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        times = (self._round_start, self._retry_at, self._hard_start_at)
        return min((t for t in times if t is not None), default=None)

    def poll(self, now: float, *, n_pairs: int, owd: float) -> list[Action]:
        """Whatever is due: a round's start, the dialer's retry, the hard stages' start."""
        out: list[Action] = []
        if self._round_start is not None and now >= self._round_start:
            out += self._start_round(now, n_pairs)
        if self._retry_at is not None and now >= self._retry_at and self.controlling:
            self._retry_at = None
            if not self.on_direct and self.have_remote:
                out += self._propose(now, owd)
        if self._hard_start_at is not None and now >= self._hard_start_at:
            self._hard_start_at = None
            failed = self.waterfall[Stage.HOLE_PUNCH].status is Status.FAILED
            out += self._start_hard(now, punch_failed=failed)
        return out

    # -- candidates and rounds -----------------------------------------------------------------
    def remote_candidates(
        self, now: float, srflx: set[Address], mapped: set[Address], *, update: bool, owd: float
    ) -> list[Action]:
        """The peer's candidates (first set or a newer generation)."""
        self.remote_srflx, self.remote_mapped = srflx, mapped
        self._remote_port_mapping = bool(mapped)
        self.have_remote = True
        if self.controlling and not self.on_direct:
            self._retry_delay = None
            return self._propose(now, owd)
        if update and self.on_direct:
            return [ProbeNow()]  # the peer's network changed under the call: still there?
        return []

    def local_candidates_changed(self, now: float, owd: float) -> list[Action]:
        """We re-gathered (network change): check the direct path now, or start a new round."""
        if self.on_direct:
            return [ProbeNow()]
        if self.controlling and self.have_remote:
            self._retry_delay = None
            return self._propose(now, owd)
        return []

    def _propose(self, now: float, owd: float) -> list[Action]:
        """Dialer: agree a start moment one one-way delay ahead and schedule the round."""
        delay = owd + START_MARGIN
        self._pending_round = self.round + 1
        sent_ms = int(now * 1000)
        msg = CheckStart(
            call_id=self._round_id,
            stage=Stage.HOLE_PUNCH.value,
            generation=self._pending_round,
            start_at_ms=sent_ms + int(delay * 1000),
            sent_at_ms=sent_ms,
        )
        self._round_start = now + delay
        self._retry_at = None
        self.stats["rounds_proposed"] += 1
        return [SendControl(msg)]

    def check_start(self, msg: CheckStart, now: float, owd: float) -> None:
        """Acceptor: the dialer's start moment, mapped onto our clock (no clock sync needed)."""
        if msg.stage != Stage.HOLE_PUNCH.value or self.controlling:
            return
        if msg.generation <= self.round:
            self.stats["stale_check_start"] += 1
            return
        ahead = max(0.0, (msg.start_at_ms - msg.sent_at_ms) / 1000.0 - owd)
        self._pending_round = msg.generation
        self._round_start = now + ahead

    def _start_round(self, now: float, n_pairs: int) -> list[Action]:
        self._round_start = None
        action = StartRound(self._pending_round, reset=not self.on_direct)
        self.round = max(self.round, self._pending_round - 1) + 1
        wf, p = self.waterfall, self.plan()
        pm = p[Stage.PORT_MAPPING]
        if pm.runs:
            wf.start(Stage.PORT_MAPPING, now)
        else:
            note = f"{pm.reason} (ours: {self.local.port_mapping_note})"
            wf.skip(Stage.PORT_MAPPING, Reason(pm.code, note))
        wf.start(Stage.HOLE_PUNCH, now)
        wf.apply(p.values())
        if any(p[s].runs and not p[s].after for s in HARD):
            self._hard_start_at = now + n_pairs * PACING_GUARD + HARD_START_DELAY
        self.stats["rounds"] += 1
        return [action]

    def round_failed(self, now: float, reason: str) -> list[Action]:
        """The round's checks all went unanswered: say why, start what the plan needs now."""
        wf = self.waterfall
        if wf[Stage.PORT_MAPPING].status is Status.STARTED:
            why = Reason(Why.NO_MAPPED_ANSWER, "no port-mapped candidate answered")
            wf.fail(Stage.PORT_MAPPING, now, why)
        p = self.plan()  # without the failed port mapping now
        needed = [s for s in HARD if p[s].needed]
        if needed:
            reason += f"; needed: {' / '.join(needed)}"
        elif p[Stage.RELAY].code is Why.STAYS_ON_RELAY:
            reason += "; " + p[Stage.BIRTHDAY].reason
        elif self.local_summary().mapping == "unknown" or self.remote_view().mapping == "unknown":
            reason += "; NAT mapping unknown on a side (give STUN servers to learn it)"
        wf.fail(Stage.HOLE_PUNCH, now, Reason(Why.ROUND_UNANSWERED, reason))
        for stage in HARD:
            if wf[stage].status is Status.SKIPPED and wf[stage].why.code is Why.DIRECT_FOUND:
                wf.reopen(stage)
        wf.apply(p.values())
        out = self._start_hard(now, punch_failed=True)
        if self.controlling and self._retry_at is None and not self.on_direct:
            self._retry_delay = _backoff(self._retry_delay, RETRY_FAILED)
            self._retry_at = now + self._retry_delay
        return out

    # -- NAT summaries -------------------------------------------------------------------------
    def nat_report(self, summary: NatSummary, now: float) -> None:
        """The peer's NAT summary. After the round started (the peer's filtering test runs
        behind the call) it re-plans, and schedules the hard stages the plan now runs."""
        self.remote_summary = summary
        if self.waterfall[Stage.HOLE_PUNCH].status is Status.PENDING or self.on_direct:
            return
        p = self.plan()
        self.waterfall.apply(p.values())
        failed = self.waterfall[Stage.HOLE_PUNCH].status is Status.FAILED
        if self._hard_start_at is None and any(
            p[s].runs and (failed or not p[s].after) and not self.active(s) for s in HARD
        ):
            self._hard_start_at = now + HARD_START_DELAY

    # -- hard stages: starting -----------------------------------------------------------------
    def _start_hard(self, now: float, *, punch_failed: bool) -> list[Action]:
        """Start our initiating role of every hard stage the plan runs now."""
        if self.on_direct or not self.have_remote:
            return []
        if self.remote_summary is None:
            self._hard_start_at = now + HARD_START_DELAY  # its report is on the way
            return []
        p = self.plan()
        out: list[Action] = []
        for stage in HARD:
            sp = p[stage]
            if sp.runs and (punch_failed or not sp.after):
                out += self._initiate(sp, now)
        return out

    def _new_attempt(self, stage: Stage, role: str, now: float) -> Attempt:
        a = Attempt(self._next_attempt, stage, role, now)
        self._next_attempt += 1
        self._attempts[stage] = a
        self.waterfall.start(stage, now)
        return a

    def _initiate(self, sp: StagePlan, now: float) -> list[Action]:
        """Our role of ``sp`` that starts on its own (birthday hard, predicted, mutual)."""
        stage = Stage(sp.stage)
        rec = self.waterfall[stage]
        if self.active(stage) or rec.attempts >= MAX_ATTEMPTS or rec.status is Status.SUCCEEDED:
            return []
        delta = self.local_summary().delta
        if stage is Stage.BIRTHDAY and sp.role == "hard":
            easy = self.remote_public_endpoint()
            if easy is None:
                return []
            a = self._new_attempt(stage, "hard", now)
            a.target = easy
            return [StartBirthdayHard(a.id, sp, easy)]
        if stage is Stage.PORT_PREDICTION and sp.role == "predicted":
            peer = self.remote_public_endpoint()
            servers = tuple(s for s in self.local.sample_servers if s != peer)
            if peer is None or len(servers) < 2 or not delta:
                return []
            a = self._new_attempt(stage, "predicted", now)
            return [StartPredicted(a.id, peer, servers, delta)]
        if stage is Stage.PORT_PREDICTION and sp.role == "mutual":
            servers = self.local.sample_servers
            if len(set(servers)) < 2 or not delta:
                return []
            a = self._new_attempt(stage, "mutual", now)
            early, self._early_probe = self._early_probe, None
            probe = early[0] if early is not None and now - early[1] <= MUTUAL_PROBE_FRESH else None
            a.has_peer_probe = probe is not None
            return [StartMutual(a.id, servers, delta, probe)]
        return []

    def birthday_start(self, msg: HardNatBirthdayStart, now: float, owd: float) -> list[Action]:
        """The hard side began its attack: we are the easy side (if the plan agrees)."""
        if self.on_direct:
            return []
        if msg.call_id != self.call_id:
            self.stats["hardnat_wrong_call_id"] += 1
            return []
        sp = self.plan()[Stage.BIRTHDAY]
        hard = self.remote_summary
        if not sp.runs or sp.role != "easy" or self.active(Stage.BIRTHDAY):
            self.stats["birthday_start_refused"] += 1
            return []
        if hard is None or hard.public_ip is None:
            self.stats["birthday_start_refused"] += 1
            return []
        try:
            start = parse_birthday_start(msg, now, owd)
        except BirthdayError as exc:
            self.stats["birthday_start_refused"] += 1
            log.info("birthday start refused: %s", exc)
            return []
        a = self._new_attempt(Stage.BIRTHDAY, "easy", now)
        a.target_ip = hard.public_ip
        return [StartBirthdayEasy(a.id, hard, start.start, start.sockets)]

    def hard_probe(self, msg: HardNatProbe, now: float) -> list[Action]:
        """The peer's fresh port samples: we predict its port (or, both sequential, both do)."""
        if self.on_direct:
            return []
        if msg.call_id != self.call_id:
            self.stats["hardnat_wrong_call_id"] += 1
            return []
        sp = self.plan()[Stage.PORT_PREDICTION]
        if not sp.runs or sp.role not in ("mutual", "predicting"):
            self.stats["prediction_probe_refused"] += 1
            return []
        try:
            probe = parse_probe(msg)
        except PredictionError as exc:
            self.stats["prediction_probe_refused"] += 1
            log.info("prediction probe refused: %s", exc)
            return []
        a = self._attempts.get(Stage.PORT_PREDICTION)
        running = a is not None and not a.done
        if sp.role == "mutual":
            if a is not None and running and a.role == "mutual":
                if a.has_peer_probe:
                    self.stats["prediction_probe_refused"] += 1
                    return []
                a.has_peer_probe = True
                return [DeliverProbe(a.id, probe)]
            # Ours has not begun: these samples start it (the peer waits for ours).
            self._early_probe = (probe, now)
            return self._initiate(sp, now)
        if running:
            self.stats["prediction_probe_refused"] += 1
            return []
        a = self._new_attempt(Stage.PORT_PREDICTION, "predicting", now)
        return [StartPredicting(a.id, probe.external_ip, predict_window(probe))]

    # -- hard stages: sockets and outcomes -----------------------------------------------------
    def socket_opened(self, attempt: int, local: Address) -> None:
        """An attempt's extra socket: a pair on it belongs to its stage."""
        a = self._attempt(attempt)
        if a is not None:
            a.locals.add(local)
            self._extra[local] = a.stage

    def socket_closed(self, local: Address) -> None:
        self._extra.pop(local, None)

    def note(self, attempt: int, **details: object) -> None:
        """Figures of a running attempt for the report (sockets, probes sent, samples...)."""
        a = self._attempt(attempt)
        if a is not None:
            self.waterfall[a.stage].details.update(details)

    def attempt_ended(self, attempt: int, why: Reason, now: float) -> None:
        """An attempt's executor finished without a win (its grace is over, or it could not
        start): a failure, unless it already won or was beaten; then retry with back-off."""
        a = self._attempt(attempt)
        if a is None or a.done:
            return
        a.done = True
        if self.waterfall[a.stage].status is not Status.STARTED:
            return
        self.waterfall.fail(a.stage, now, why)
        if not self.on_direct:
            self._hard_backoff = _backoff(self._hard_backoff, RETRY_FAILED)
            self._hard_start_at = now + self._hard_backoff

    def _attempt(self, attempt: int) -> Attempt | None:
        return next((a for a in self._attempts.values() if a.id == attempt), None)

    def stage_of(self, local: Address, remote: Address, kind: str) -> Stage | None:
        """Which hard stage found the pair ``local -> remote`` (None: not a hard stage's)."""
        if local in self._extra:
            return self._extra[local]
        if kind in (Stage.BIRTHDAY, Stage.PORT_PREDICTION):
            return Stage(kind)
        a = self._attempts.get(Stage.BIRTHDAY)
        if a is None or local != self.base or (a.done and not a.main_won):
            return None
        # The main socket's own flow to the easy side is one more pinhole of the attack: a
        # probe that lands on it (an ADM NAT gives it one port for the easy side's IP) is the
        # birthday's hit, though the pair looks like the hole punch's.
        if a.role == "hard" and a.target == remote:
            return Stage.BIRTHDAY
        # The easy side's view of the same: while it attacks, a pair from its main socket to the
        # hard side's IP can only have been opened by one of the attack's pinholes (that NAT
        # maps endpoint-dependently, so the plain punch cannot reach it). A kernel NAT may give a
        # pinhole the port of a srflx candidate the punch is checking (Linux `fully-random`).
        if a.role == "easy" and a.target_ip == remote[0]:
            return Stage.BIRTHDAY
        return None

    def _won(self, stage: Stage, local: Address) -> list[Action]:
        a = self._attempts.get(stage)
        if a is None or a.done:
            return []
        a.done = True
        a.main_won = local not in a.locals and local == self.base
        return [KeepWinner(a.id, local)]

    def _beat_others(self, winner: Stage, now: float) -> list[Action]:
        """Every other running attempt stops now: ``winner`` found the path."""
        out: list[Action] = []
        for a in self._attempts.values():
            if a.stage is not winner and not a.done:
                a.done = True
                self.waterfall.beat(a.stage, now, winner)
                out.append(StopAttempt(a.id, winner))
        return out

    # -- check results -------------------------------------------------------------------------
    def peer_seen(self, local: Address, remote: Address) -> list[Action]:
        """A verified check from the peer at ``remote``, on our socket ``local``."""
        announced = self.remote_srflx | self.remote_mapped
        new_port = remote not in announced and any(remote[0] == a[0] for a in announced)
        if self.remote_srflx and new_port:
            # Same public IP, another port than any it announced: its NAT mapped its checks
            # to us anew, i.e. it maps endpoint-dependently.
            self._remote_dependent = True
        stage = self.stage_of(local, remote, "")
        return [] if stage is None else self._won(stage, local)

    def strategy_of(self, pair: CandidatePair) -> Stage:
        stage = self.stage_of(pair.local, pair.remote, pair.remote_kind)
        if stage is not None:
            return stage
        if pair.remote_kind == "mapped" or pair.remote in self.remote_mapped:
            return Stage.PORT_MAPPING
        if self.local.mapped is not None and pair.mapped == self.local.mapped:
            return Stage.PORT_MAPPING
        return Stage.HOLE_PUNCH

    def pair_succeeded(self, pair: CandidatePair, now: float) -> list[Action]:
        """A verified answer on ``pair``: record who won, stop who lost, move the call."""
        wf = self.waterfall
        strategy = self.strategy_of(pair)
        out: list[Action] = []
        hp, pm = Stage.HOLE_PUNCH, Stage.PORT_MAPPING
        if strategy in HARD:
            wf.succeed(strategy, now, pair.describe())
            out += self._won(strategy, pair.local)
            wf.beat(hp, now, strategy)
            for other in HARD:
                if other is not strategy and wf[other].status is Status.PENDING:
                    text = f"not needed: the {strategy} stage found a path"
                    wf.skip(other, Reason(Why.OTHER_STAGE_FOUND, text))
        elif strategy is pm:
            wf.succeed(pm, now, pair.describe())
            wf.skip(hp, Reason(Why.PORT_MAPPING_FIRST, "port mapping answered first"))
            if wf[hp].status is Status.STARTED:
                wf.succeed(hp, now, pair.describe())
        else:
            wf.succeed(hp, now, pair.describe())
            wf.beat(pm, now, hp)
        for stage in HARD:
            if wf[stage].status is Status.PENDING:
                wf.skip(stage, Reason(Why.DIRECT_FOUND, "not needed: a direct path was found"))
        out += self._beat_others(strategy, now)
        if not self.on_direct:
            out += self._switch(pair, now, strategy, "check succeeded")
        return out

    def pair_nominated(self, pair: CandidatePair, now: float) -> list[Action]:
        self.stats["nominated"] += 1
        if self.direct_pair is not pair or not self.on_direct:
            return self._switch(pair, now, self.strategy_of(pair), "pair nominated")
        return []

    def _switch(self, pair: CandidatePair, now: float, strategy: Stage, why: str) -> list[Action]:
        self.direct_pair = pair
        self._retry_delay = self._retry_at = None
        if self.waterfall.direct_at is None:
            self.waterfall.direct_at = now
            self.waterfall.strategy = strategy
        self._hard_start_at = None
        self.upgrades += 1
        self.on_direct = True
        return [SwitchPath(pair, strategy, why)]

    def path_dead(self, now: float) -> None:
        """The direct path died and the call is back on the relay: the dialer retries soon."""
        self.fallbacks += 1
        self.on_direct = False
        if self.controlling:
            self._retry_delay = _backoff(self._retry_delay, RETRY_DEAD)
            self._retry_at = now + self._retry_delay

    def close(self) -> None:
        """The call is over: no attempt is running any more."""
        for a in self._attempts.values():
            a.done = True
        self._round_start = self._retry_at = self._hard_start_at = None
