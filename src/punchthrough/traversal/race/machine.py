"""``Race``: the waterfall as one sans-IO state machine (the design's ``race()``).

Inputs are method calls with ``now`` (candidates, NAT summaries, control messages, check
results, sockets, attempts ending, a dead path, the timer); outputs are typed actions
(:mod:`.actions`) and :meth:`Race.next_deadline`. Every decision of the waterfall is taken here:
which stages run or are skipped and why, when a round or a hard stage starts and is retried,
which stage a verified pair belongs to, who won and who was beaten, re-planning on a late NAT
summary, and the dialer's retry after a failed round or a dead path.

Two facts belong to the executor and are refreshed by it before each input: :attr:`on_direct`
(the path manager's current path is direct) and :attr:`local` (what the endpoint knows of its
own NAT, which a re-gather changes under the call).
"""

from __future__ import annotations

import logging
from collections import Counter

import punchthrough.traversal.race.actions as act
import punchthrough.traversal.race.views as views
from punchthrough.nat.summary import NatSummary
from punchthrough.netio import Address
from punchthrough.signal import CheckStart, HardNatBirthdayStart, HardNatProbe
from punchthrough.traversal.checks import CandidatePair
from punchthrough.traversal.hardnat.birthday import BirthdayError, parse_birthday_start
from punchthrough.traversal.hardnat.plan import Budget, StagePlan, plan_stages, relay_only
from punchthrough.traversal.hardnat.prediction import (
    PredictionError,
    SequentialProbe,
    parse_probe,
    predict_window,
)
from punchthrough.traversal.local import LocalView
from punchthrough.traversal.race.attempts import Attempt, Attempts
from punchthrough.traversal.race.policy import (
    HARD_START_DELAY,
    MAX_ATTEMPTS,
    MUTUAL_PROBE_FRESH,
    PACING_GUARD,
    RETRY_DEAD,
    RETRY_FAILED,
    START_MARGIN,
    backoff,
)
from punchthrough.traversal.race.punch import PunchChance
from punchthrough.traversal.race.records import HARD, Reason, Stage, Status, Waterfall
from punchthrough.traversal.reasons import Why

log = logging.getLogger(__name__)


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
        #: False when the peer offers only families we have no candidate in (set with them).
        self.common_family = True
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
        #: When the round's first checks (new flows on our NAT) have all left, plus the margin.
        self._punch_sent_at = 0.0
        self.punch = PunchChance()  # when stages planned after the punch may start
        self._hard_backoff: float | None = None
        # -- hard stages --
        self.attempts = Attempts(base)
        self._early_probe: tuple[SequentialProbe, float] | None = None
        # -- outcome --
        self.direct_pair: CandidatePair | None = None
        self.upgrades = 0
        self.fallbacks = 0

    # -- the plan ------------------------------------------------------------------------------
    def local_summary(self) -> NatSummary:
        failed = self.waterfall[Stage.PORT_MAPPING].status is Status.FAILED
        return views.local_view(self.local.summary, mapping_failed=failed)

    def remote_view(self) -> NatSummary:
        failed = self.waterfall[Stage.PORT_MAPPING].status is Status.FAILED
        dep, pm = self._remote_dependent, self._remote_port_mapping
        return views.remote_view(
            self.remote_summary, dependent=dep, port_mapping=pm, mapping_failed=failed
        )

    def plan(self) -> dict[Stage, StagePlan]:
        """The stages for this pair, from both NAT summaries (:func:`plan_stages`)."""
        plans = plan_stages(self.local_summary(), self.remote_view(), budget=self.budget)
        if not self.common_family:
            plans = relay_only(plans)
        return {Stage(p.stage): p for p in plans}

    # -- the timer -----------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        times = (self._round_start, self._retry_at, self._hard_start_at, self.punch.due)
        return min((t for t in times if t is not None), default=None)

    def poll(self, now: float, *, n_pairs: int, owd: float) -> list[act.Action]:
        """Whatever is due: a round's start, the dialer's retry, the hard stages' start."""
        out: list[act.Action] = []
        if self._round_start is not None and now >= self._round_start:
            out += self._start_round(now, n_pairs, owd)
        if self._retry_at is not None and now >= self._retry_at and self.controlling:
            self._retry_at = None
            if not self.on_direct and self.have_remote:
                out += self._propose(now, owd)
        if self.punch.fire(now):
            out += self._start_hard(now, punch_failed=True)
        if self._hard_start_at is not None and now >= self._hard_start_at:
            self._hard_start_at = None
            out += self._start_hard(now, punch_failed=self._punch_out())
        return out

    def _punch_out(self) -> bool:
        """The punch failed, or had its chance: a stage planned "after" it may start."""
        return self.punch.over or self.waterfall[Stage.HOLE_PUNCH].status is Status.FAILED

    # -- candidates and rounds -----------------------------------------------------------------
    def remote_candidates(
        self, now: float, srflx: set[Address], mapped: set[Address], *, update: bool, owd: float
    ) -> list[act.Action]:
        """The peer's candidates (first set or a newer generation)."""
        self.remote_srflx, self.remote_mapped = srflx, mapped
        self._remote_port_mapping = bool(mapped)
        self.have_remote = True
        if self.controlling and not self.on_direct:
            self._retry_delay = None
            return self._propose(now, owd)
        if update and self.on_direct:
            return [act.ProbeNow()]  # the peer's network changed under the call: still there?
        return []

    def local_candidates_changed(self, now: float, owd: float) -> list[act.Action]:
        """We re-gathered (network change): check the direct path now, or start a new round."""
        if self.on_direct:
            return [act.ProbeNow()]
        if self.controlling and self.have_remote:
            self._retry_delay = None
            return self._propose(now, owd)
        return []

    def _propose(self, now: float, owd: float) -> list[act.Action]:
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
        return [act.SendControl(msg)]

    def check_start(self, msg: CheckStart, now: float, owd: float) -> None:
        """Acceptor: the dialer's start moment, mapped onto our clock (no clock sync needed)."""
        if msg.stage != Stage.HOLE_PUNCH.value:
            return
        if self.controlling:  # the acceptor checks already (it had our early offer): go now
            if msg.generation == self._pending_round and self._round_start is not None:
                self._round_start = min(self._round_start, now)
            return
        if msg.generation <= self.round:
            self.stats["stale_check_start"] += 1
            return
        ahead = max(0.0, (msg.start_at_ms - msg.sent_at_ms) / 1000.0 - owd)
        self._pending_round = msg.generation
        self._round_start = now + ahead

    def _start_round(self, now: float, n_pairs: int, owd: float) -> list[act.Action]:
        self._round_start = None
        action = act.StartRound(self._pending_round, reset=not self.on_direct)
        self.round = max(self.round, self._pending_round - 1) + 1
        wf, p = self.waterfall, self.plan()
        pm = p[Stage.PORT_MAPPING]
        if pm.runs:
            wf.start(Stage.PORT_MAPPING, now)
        else:
            note = f"{pm.reason} (ours: {self.local.port_mapping_note})"
            wf.skip(Stage.PORT_MAPPING, Reason(pm.code, note))
        if p[Stage.HOLE_PUNCH].code is not Why.UDP_BLOCKED:  # UDP blocked: the plan skips it
            wf.start(Stage.HOLE_PUNCH, now)
        wf.apply(p.values())
        self._punch_sent_at = now + n_pairs * PACING_GUARD + HARD_START_DELAY
        self.punch.round_started(now, n_pairs, owd, (p[s] for s in HARD))
        if any(p[s].runs and not p[s].after for s in HARD):
            self._hard_start_at = self._punch_sent_at
        self.stats["rounds"] += 1
        return [] if p[Stage.HOLE_PUNCH].code is Why.UDP_BLOCKED else [action]  # no checks

    def round_failed(self, now: float, reason: str) -> list[act.Action]:
        """The round's checks all went unanswered: say why, start what the plan needs now."""
        wf = self.waterfall
        if wf[Stage.PORT_MAPPING].status is Status.STARTED:
            why = Reason(Why.NO_MAPPED_ANSWER, "no port-mapped candidate answered")
            wf.fail(Stage.PORT_MAPPING, now, why)
        p = self.plan()  # without the failed port mapping now
        reason += views.failure_note(p, self.local_summary(), self.remote_view())
        wf.fail(Stage.HOLE_PUNCH, now, Reason(Why.ROUND_UNANSWERED, reason))
        for stage in HARD:
            if wf[stage].status is Status.SKIPPED and wf[stage].why.code is Why.DIRECT_FOUND:
                wf.reopen(stage)
        wf.apply(p.values())
        out = self._start_hard(now, punch_failed=True)
        if self.controlling and self._retry_at is None and not self.on_direct:
            self._retry_delay = backoff(self._retry_delay, RETRY_FAILED)
            self._retry_at = now + self._retry_delay
        return out

    # -- NAT summaries -------------------------------------------------------------------------
    def nat_report(self, summary: NatSummary, now: float) -> None:
        """The peer's NAT summary (its first may lack the filtering: that test runs behind the
        call). After the round started it re-plans, and starts the hard stages the plan now
        runs as soon as the round's first checks are out (no fixed delay: at once, later)."""
        self.remote_summary = summary
        if self.waterfall[Stage.HOLE_PUNCH].status is Status.PENDING or self.on_direct:
            return
        p = self.plan()
        self.waterfall.apply(p.values())
        failed = self._punch_out()
        if self._hard_start_at is None and any(
            p[s].runs and (failed or not p[s].after) and not self.attempts.active(s) for s in HARD
        ):
            self._hard_start_at = max(now, self._punch_sent_at)
        self.punch.arm(p[s] for s in HARD if not self.attempts.active(s))

    # -- hard stages: starting -----------------------------------------------------------------
    def _start_hard(self, now: float, *, punch_failed: bool) -> list[act.Action]:
        """Start our initiating role of every hard stage the plan runs now."""
        if self.on_direct or not self.have_remote:
            return []
        if self.remote_summary is None:
            self._hard_start_at = now + HARD_START_DELAY  # its report is on the way
            return []
        p = self.plan()
        out: list[act.Action] = []
        for stage in HARD:
            sp = p[stage]
            if sp.runs and (punch_failed or not sp.after):
                out += self._initiate(sp, now)
        return out

    def _new_attempt(self, stage: Stage, role: str, now: float) -> Attempt:
        a = self.attempts.new(stage, role, now)
        self.waterfall.start(stage, now)
        return a

    def _initiate(self, sp: StagePlan, now: float) -> list[act.Action]:
        """Our role of ``sp`` that starts on its own (birthday hard, predicted, mutual)."""
        stage = Stage(sp.stage)
        rec, running = self.waterfall[stage], self.attempts.active(stage)
        if running or rec.attempts >= MAX_ATTEMPTS or rec.status is Status.SUCCEEDED:
            return []
        delta = self.local_summary().delta
        if stage is Stage.BIRTHDAY and sp.role == "hard":
            easy = views.public_endpoint(self.remote_srflx)
            if easy is None:
                return []
            a = self._new_attempt(stage, "hard", now)
            a.target = easy
            return [act.StartBirthdayHard(a.id, sp, easy)]
        if stage is Stage.PORT_PREDICTION and sp.role == "predicted":
            peer = views.public_endpoint(self.remote_srflx)
            servers = tuple(s for s in self.local.sample_servers if s != peer)
            if peer is None or len(servers) < 2 or not delta:
                return []
            a = self._new_attempt(stage, "predicted", now)
            return [act.StartPredicted(a.id, peer, servers, delta)]
        if stage is Stage.PORT_PREDICTION and sp.role == "mutual":
            servers = self.local.sample_servers
            if len(set(servers)) < 2 or not delta:
                return []
            a = self._new_attempt(stage, "mutual", now)
            early, self._early_probe = self._early_probe, None
            probe = early[0] if early is not None and now - early[1] <= MUTUAL_PROBE_FRESH else None
            a.has_peer_probe = probe is not None
            return [act.StartMutual(a.id, servers, delta, probe)]
        return []

    def birthday_start(self, msg: HardNatBirthdayStart, now: float, owd: float) -> list[act.Action]:
        """The hard side began its attack: we are the easy side (if the plan agrees)."""
        if self.on_direct:
            return []
        if msg.call_id != self.call_id:
            self.stats["hardnat_wrong_call_id"] += 1
            return []
        sp = self.plan()[Stage.BIRTHDAY]
        hard = self.remote_summary
        if not sp.runs or sp.role != "easy" or self.attempts.active(Stage.BIRTHDAY):
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
        return [act.StartBirthdayEasy(a.id, hard, start.start, start.sockets)]

    def hard_probe(self, msg: HardNatProbe, now: float) -> list[act.Action]:
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
        a = self.attempts.latest(Stage.PORT_PREDICTION)
        running = a is not None and not a.done
        if sp.role == "mutual":
            if a is not None and running and a.role == "mutual":
                if a.has_peer_probe:
                    self.stats["prediction_probe_refused"] += 1
                    return []
                a.has_peer_probe = True
                return [act.DeliverProbe(a.id, probe)]
            # Ours has not begun: these samples start it (the peer waits for ours).
            self._early_probe = (probe, now)
            return self._initiate(sp, now)
        if running:
            self.stats["prediction_probe_refused"] += 1
            return []
        a = self._new_attempt(Stage.PORT_PREDICTION, "predicting", now)
        return [act.StartPredicting(a.id, probe.external_ip, predict_window(probe))]

    # -- hard stages: sockets and outcomes -----------------------------------------------------
    def socket_opened(self, attempt: int, local: Address) -> None:
        """An attempt's extra socket: a pair on it belongs to its stage."""
        self.attempts.socket_opened(attempt, local)

    def socket_closed(self, local: Address) -> None:
        self.attempts.socket_closed(local)

    def stage_of(self, local: Address, remote: Address, kind: str) -> Stage | None:
        return self.attempts.stage_of(local, remote, kind)

    def note(self, attempt: int, **details: object) -> None:
        """Figures of a running attempt for the report (sockets, probes sent, samples...)."""
        a = self.attempts.get(attempt)
        if a is not None:
            self.waterfall[a.stage].details.update(details)

    def attempt_ended(self, attempt: int, why: Reason, now: float) -> None:
        """An attempt's executor finished without a win (its grace is over, or it could not
        start): a failure, unless it already won or was beaten; then retry with back-off."""
        a = self.attempts.get(attempt)
        if a is None or a.done:
            return
        a.done = True
        if self.waterfall[a.stage].status is not Status.STARTED:
            return
        self.waterfall.fail(a.stage, now, why)
        if not self.on_direct:
            self._hard_backoff = backoff(self._hard_backoff, RETRY_FAILED)
            self._hard_start_at = now + self._hard_backoff

    def _won(self, stage: Stage, local: Address) -> list[act.Action]:
        a = self.attempts.won(stage, local)
        return [] if a is None else [act.KeepWinner(a.id, local)]

    def _beat_others(self, winner: Stage, now: float) -> list[act.Action]:
        """Every other running attempt stops now: ``winner`` found the path."""
        out: list[act.Action] = []
        for a in self.attempts.running():
            if a.stage is not winner:
                a.done = True
                self.waterfall.beat(a.stage, now, winner)
                out.append(act.StopAttempt(a.id, winner))
        return out

    # -- check results -------------------------------------------------------------------------
    def peer_seen(self, local: Address, remote: Address) -> list[act.Action]:
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

    def pair_succeeded(self, pair: CandidatePair, now: float) -> list[act.Action]:
        """A verified answer on ``pair``: record who won, stop who lost, move the call."""
        wf = self.waterfall
        strategy = self.strategy_of(pair)
        out: list[act.Action] = []
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

    def pair_nominated(self, pair: CandidatePair, now: float) -> list[act.Action]:
        self.stats["nominated"] += 1
        if self.direct_pair is not pair or not self.on_direct:
            return self._switch(pair, now, self.strategy_of(pair), "pair nominated")
        return []

    def _switch(
        self, pair: CandidatePair, now: float, strategy: Stage, why: str
    ) -> list[act.Action]:
        self.direct_pair = pair
        self._retry_delay = self._retry_at = None
        if self.waterfall.direct_at is None:
            self.waterfall.direct_at = now
            self.waterfall.strategy = strategy
        self._hard_start_at = self.punch.due = None
        self.upgrades += 1
        self.on_direct = True
        return [act.SwitchPath(pair, strategy, why)]

    def path_dead(self, now: float) -> None:
        """The direct path died and the call is back on the relay: the dialer retries soon."""
        self.fallbacks += 1
        self.on_direct = False
        if self.controlling:
            self._retry_delay = backoff(self._retry_delay, RETRY_DEAD)
            self._retry_at = now + self._retry_delay

    def close(self) -> None:
        """The call is over: no attempt is running any more."""
        self.attempts.stop_all()
        self._round_start = self._retry_at = self._hard_start_at = self.punch.due = None
