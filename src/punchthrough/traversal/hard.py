"""The asyncio side of the hard-NAT stages (port prediction, the birthday attack) for one call.

The plans are pure (:mod:`punchthrough.traversal.hardnat`); this module opens their sockets,
turns their time offsets into loop time, sends their checks through the connection's check
engine and closes everything on every path. Five roles, three of which start on their own:

- birthday, ``hard`` side (starts): binds ``n`` sockets (hard cap), adds each as a probe base
  of the engine, opens one pinhole per socket towards the easy side's public endpoint and sends
  ``HardNatBirthdayStart``; the first verified check or response on socket ``i`` wins: every
  other socket is closed at once, socket ``i`` carries the direct path.
- birthday, ``easy`` side (on ``HardNatBirthdayStart``): probes distinct random ports of the
  hard side's IP from the main socket, paced, until a verified answer or the budget ends; then
  records how many probes it sent (only this side knows: the hard side reports its sockets
  and pinhole checks).
- prediction, ``predicted`` side (starts; its NAT is sequential): one fresh socket, STUN
  samples to distinct servers back to back, then the target flow (a check to the peer's public
  endpoint, re-sent on the same flow), then ``HardNatProbe`` with the samples.
- prediction, ``predicting`` side (on ``HardNatProbe``): checks the predicted window of the
  peer's target port from the main socket (its NAT maps endpoint-independently, so its own
  sends move nothing), 3 rounds 200 ms apart.
- prediction, ``mutual`` (both NATs sequential; starts, or on the peer's ``HardNatProbe``):
  fresh STUN samples on a fresh socket, our ``HardNatProbe`` out; with the peer's in, flow k
  (its own fresh socket, one new allocation) checks the peer's predicted port of its flow k
  (:func:`~.hardnat.prediction.mutual_schedule`); caps :data:`MUTUAL_MAX_SOCKETS`,
  :data:`MUTUAL_MAX` seconds.

Every send is a check of the same engine (MESSAGE-INTEGRITY under the call's key): a verified
answer is a pair like any other, and the agent switches the call onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from punchthrough.nat.summary import NatSummary
from punchthrough.netio import Address, DatagramSocket
from punchthrough.signal import HardNatBirthdayStart, HardNatProbe
from punchthrough.stun import StunClient, StunError
from punchthrough.transport.demux import PacketKind, classify
from punchthrough.traversal.hardnat.birthday import (
    BirthdayError,
    EasySidePlan,
    HardSidePlan,
    State,
    make_birthday_start,
    parse_birthday_start,
    scan_range,
)
from punchthrough.traversal.hardnat.plan import StagePlan
from punchthrough.traversal.hardnat.prediction import (
    BURST_GAP,
    PredictionError,
    SequentialProbe,
    Window,
    churn_per_gap,
    make_probe,
    mutual_schedule,
    parse_probe,
    predict_window,
    predicted_burst,
    predicting_schedule,
)

if TYPE_CHECKING:
    from punchthrough.traversal.agent import TraversalAgent

log = logging.getLogger(__name__)

#: STUN sample budget on the predicted side's fresh socket (a server that has not answered by
#: then is left out of the probe).
SAMPLE_TIMEOUT: Final = 1.0
SAMPLE_RTO: Final = 0.25
#: The predicting side gives its window checks this long to be answered before failing.
PREDICTION_GRACE: Final = 1.0
#: The predicted side keeps its target flow (and fresh socket) this long at most.
PREDICTION_MAX: Final = 4.0
#: Mutual prediction (both sides sequential): flows per sweep, sweeps (churn hypotheses 0, +1,
#: -1), so one fresh socket per flow; how long to wait for the peer's probe; the grace after the
#: last check; the hard stop of one attempt (seconds since it began).
MUTUAL_FLOWS_PER_SWEEP: Final = 4
MUTUAL_SWEEPS: Final = 3
MUTUAL_MAX_SOCKETS: Final = 16
MUTUAL_PROBE_WAIT: Final = 3.0
MUTUAL_GRACE: Final = 1.0
MUTUAL_MAX: Final = 8.0
#: A peer's probe that arrived before our own attempt began is used this long.
MUTUAL_PROBE_FRESH: Final = 2.0
#: While waiting for the peer's probe, look this often (loop time).
MUTUAL_POLL: Final = 0.005
#: See :meth:`HardStages._wait`.
TIME_SLACK: Final = 1e-6
#: Attempts of one hard stage per connection (each one costs sockets and probes).
MAX_ATTEMPTS: Final = 3
#: While an attempt waits, it looks this often whether another stage already moved the call
#: onto a direct path (then it stops: its sockets close, its pending sends are cancelled).
STOP_POLL: Final = 0.1


@dataclass
class _Attempt:
    stage: str
    role: str
    sockets: dict[int, DatagramSocket] = field(default_factory=dict)
    by_local: dict[Address, int] = field(default_factory=dict)
    winner: int | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    #: Birthday hard side: the easy side's public endpoint every pinhole points at.
    target: Address | None = None
    #: The main socket won (its own pinhole towards ``target`` was hit, see ``stage_of``).
    main_won: bool = False
    #: Birthday easy side: the hard side's public IP every probe goes to.
    target_ip: str | None = None
    #: Loop time the attempt began.
    started: float = 0.0
    #: Another stage moved the call onto a direct path while this attempt ran: its name.
    beaten_by: str | None = None
    #: Mutual prediction: the peer's fresh samples (its HardNatProbe).
    peer_probe: SequentialProbe | None = None


class HardStages:
    """The hard stages of one connection (see module docstring)."""

    def __init__(self, agent: TraversalAgent) -> None:
        self._agent = agent
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        #: The latest attempt per stage, and every attempt ever made (for closing).
        self._attempts: dict[str, _Attempt] = {}
        self._all: list[_Attempt] = []
        #: Extra sockets' local addresses -> (stage, index).
        self.locals: dict[Address, str] = {}
        self._closed = False
        self._rng = random.Random(random.getrandbits(64))
        #: Mutual prediction: a peer's probe that came before our attempt (loop time received).
        self._early_probe: tuple[SequentialProbe, float] | None = None

    # -- the agent's view --------
    def active(self, stage: str) -> bool:
        a = self._attempts.get(stage)
        return a is not None and not a.done

    def stage_of(self, local: Address, remote: Address, kind: str) -> str | None:
        """Which hard stage found the pair ``local -> remote`` (None: not a hard stage's)."""
        if local in self.locals:
            return self.locals[local]
        if kind in ("birthday", "port-prediction"):
            return kind
        # The main socket's own flow to the easy side is one more pinhole of the attack: a
        # probe that lands on it (an ADM NAT gives it one port for the easy side's IP) is the
        # birthday's hit, though the pair looks like the hole punch's.
        a = self._attempts.get("birthday")
        if (
            a is not None
            and a.role == "hard"
            and a.target == remote
            and local == self._agent.base
            and (not a.done or a.main_won)
        ):
            return "birthday"
        # The easy side's view of the same: while it attacks, a pair from its main socket to the
        # hard side's IP can only have been opened by one of the attack's pinholes (that NAT
        # maps endpoint-dependently, so the plain punch cannot reach it). A pinhole may answer
        # a hole-punch check: a kernel NAT gives a new flow a port already in use towards
        # another remote (the reply tuples differ), so a pinhole can take the port of a server-
        # reflexive candidate the punch is checking. Seen on Linux `masquerade fully-random`.
        if (
            a is not None
            and a.role == "easy"
            and a.target_ip == remote[0]
            and local == self._agent.base
            and (not a.done or a.main_won)
        ):
            return "birthday"
        return None

    def start(self, plan: StagePlan, now: float) -> None:
        """Our role starts on its own (birthday hard side, prediction predicted side)."""
        if self._closed or self.active(plan.stage):
            return
        rec = self._agent.waterfall[plan.stage]
        if rec.attempts >= MAX_ATTEMPTS or rec.status == "succeeded":
            return
        if plan.stage == "birthday" and plan.role == "hard":
            self._spawn(self._birthday_hard(plan))
        elif plan.stage == "port-prediction" and plan.role == "predicted":
            self._spawn(self._predicted(plan))
        elif plan.stage == "port-prediction" and plan.role == "mutual":
            self._spawn(self._mutual(plan))

    def on_birthday_start(self, msg: HardNatBirthdayStart, plan: StagePlan | None) -> None:
        agent = self._agent
        if msg.call_id != agent.call_id:
            agent.stats["hardnat_wrong_call_id"] += 1
            return
        if plan is None or not plan.runs or plan.role != "easy" or self.active("birthday"):
            agent.stats["birthday_start_refused"] += 1
            return
        if self._call_is_direct():
            # a path won while the peer's start was on its way (one of its first pinholes
            # may have answered our hole punch): probing now would only cost
            agent.stats["birthday_start_refused_direct"] += 1
            return
        remote = agent.remote_summary
        if remote is None or remote.public_ip is None:
            agent.stats["birthday_start_refused"] += 1
            return
        try:
            start = parse_birthday_start(msg, self._loop.time(), agent.owd())
        except BirthdayError as exc:
            agent.stats["birthday_start_refused"] += 1
            log.info("birthday start refused: %s", exc)
            return
        self._spawn(self._birthday_easy(plan, remote, start.start, start.sockets))

    def on_probe(self, msg: HardNatProbe, plan: StagePlan | None) -> None:
        agent = self._agent
        if msg.call_id != agent.call_id:
            agent.stats["hardnat_wrong_call_id"] += 1
            return
        if plan is not None and plan.runs and plan.role == "mutual":
            self._on_mutual_probe(msg, plan)
            return
        if plan is None or not plan.runs or plan.role != "predicting":
            agent.stats["prediction_probe_refused"] += 1
            return
        if self._call_is_direct():
            agent.stats["prediction_probe_refused_direct"] += 1
            return
        try:
            probe = parse_probe(msg)
        except PredictionError as exc:
            agent.stats["prediction_probe_refused"] += 1
            log.info("prediction probe refused: %s", exc)
            return
        if self.active("port-prediction"):
            agent.stats["prediction_probe_refused"] += 1
            return
        self._spawn(self._predicting(probe.external_ip, predict_window(probe)))

    def _on_mutual_probe(self, msg: HardNatProbe, plan: StagePlan) -> None:
        """Both sides sequential: the peer's samples. Our running attempt takes them; with
        none running, they start our attempt (the peer waits for our probe)."""
        agent = self._agent
        if self._call_is_direct():
            agent.stats["prediction_probe_refused_direct"] += 1
            return
        try:
            probe = parse_probe(msg)
        except PredictionError as exc:
            agent.stats["prediction_probe_refused"] += 1
            log.info("prediction probe refused: %s", exc)
            return
        a = self._attempts.get("port-prediction")
        if a is not None and not a.done and a.role == "mutual":
            if a.peer_probe is None:
                a.peer_probe = probe
                a.wake.set()
            else:
                agent.stats["prediction_probe_refused"] += 1
            return
        self._early_probe = (probe, self._loop.time())
        self.start(plan, self._loop.time())

    def succeeded(self, stage: str, local: Address) -> None:
        """The agent saw a verified answer for ``stage`` (on ``local``): stop, close losers."""
        a = self._attempts.get(stage)
        if a is None or a.done:
            return
        a.winner = a.by_local.get(local)
        a.main_won = a.winner is None and local == self._agent.base
        self._release(a)
        a.wake.set()

    def _new_attempt(self, stage: str, role: str) -> _Attempt:
        a = _Attempt(stage, role, started=self._loop.time())
        self._attempts[stage] = a
        self._all.append(a)
        return a

    def _release(self, a: _Attempt, *, keep_winner: bool = True) -> None:
        """Stop an attempt and close its sockets (the winner's stays: it carries the path)."""
        a.done = True
        for idx, sock in list(a.sockets.items()):
            if not (keep_winner and idx == a.winner):
                self._close_socket(a, idx, sock)

    def _end_unanswered(self, a: _Attempt, reason: str) -> None:
        """The attempt's checks are out and its grace is over: record why it failed (another
        stage winning first, or ``reason``), unless it already succeeded."""
        if a.beaten_by is not None:
            self._finish(a.stage, False, "")
        elif not a.done:
            self._finish(a.stage, False, reason)

    def ended(self, reason: str) -> None:
        """The call is over (hangup/close): stop every attempt and close every socket."""
        for a in self._all:
            a.winner = None
            self._release(a)
            a.wake.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ended("closed")
        for task in self._tasks:
            task.cancel()
        for a in self._all:  # winners too: the call is over
            self._release(a, keep_winner=False)

    @property
    def open_sockets(self) -> int:
        return sum(len(a.sockets) for a in self._all)

    # -- plumbing --------
    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hard-NAT stage failed", exc_info=task.exception())
            self._agent.stats["hardnat_errors"] += 1

    def _close_socket(self, a: _Attempt, idx: int, sock: DatagramSocket) -> None:
        a.sockets.pop(idx, None)
        local = next((loc for loc, i in a.by_local.items() if i == idx), None)
        if local is not None:
            self.locals.pop(local, None)
            self._agent.forget_socket(local)
        with contextlib.suppress(OSError):
            sock.close()

    async def _bind(self, a: _Attempt, idx: int, client: StunClient | None = None) -> Address:
        agent = self._agent
        host_ip = agent.base[0]
        sock = await agent.network.bind(host_ip, 0)
        a.sockets[idx] = sock
        local = sock.local_address
        a.by_local[local] = idx
        self.locals[local] = a.stage
        sock.set_receiver(self._receiver(local, client))
        agent.adopt_socket(local, sock)
        return local

    def _receiver(
        self, local: Address, client: StunClient | None
    ) -> Callable[[bytes, Address], None]:
        agent = self._agent

        def receive(data: bytes, addr: Address) -> None:
            kind = classify(data)
            if kind is PacketKind.STUN:
                if client is not None and client.handle_datagram(data, addr):
                    return
                agent.handle_stun(data, local, addr)
            elif kind in (PacketKind.QUIC_SHORT, PacketKind.QUIC_LONG):
                agent.quic_on_extra(data, addr)
            else:
                agent.stats["extra_socket_dropped"] += 1

        return receive

    def _call_is_direct(self) -> bool:
        """The call runs on a direct path now (the agent starts our own initiating roles only
        on the relay; the peer's start messages are checked with this)."""
        return self._agent._on_direct()

    def _beaten(self, a: _Attempt) -> str | None:
        """The stage (not ``a``'s) that moved the call onto a direct path since ``a`` began."""
        for name, rec in self._agent.waterfall.records.items():
            if (
                name not in (a.stage, "relay")
                and rec.status == "succeeded"
                and rec.at is not None
                and rec.at >= a.started
            ):
                return name
        return None

    async def _wait(self, a: _Attempt, until: float | None) -> None:
        """Sleep until loop time ``until`` or until the attempt is stopped.

        An attempt another stage has beaten is stopped here (``beaten_by`` set, ``done``): the
        agent tells this object only of hard stages' wins, so a hole punch or port mapping that
        lands while an attack runs is noticed within :data:`STOP_POLL`.
        """
        while not a.done:
            beaten = self._beaten(a)
            if beaten is not None:
                a.beaten_by = beaten
                self._release(a, keep_winner=False)
                return
            # One microsecond of slack: a deadline computed as start + offset may round to just
            # above the loop time that a timer for it fires at.
            left = None if until is None else max(0.0, until - self._loop.time()) + TIME_SLACK
            step = STOP_POLL if left is None else min(STOP_POLL, left)
            a.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(a.wake.wait(), step)
            if step == left:
                return

    def _finish(self, stage: str, ok: bool, reason: str) -> None:
        agent = self._agent
        now = self._loop.time()
        if ok:
            return  # the agent records the success when it switches the call
        a = self._attempts.get(stage)
        if a is not None and a.beaten_by is not None:
            reason = f"the {a.beaten_by} stage answered first"
        if agent.waterfall[stage].status == "started":
            agent.waterfall.fail(stage, now, reason)
            agent.hard_stage_failed(stage, now)

    # -- birthday, hard side --------
    async def _birthday_hard(self, plan: StagePlan) -> None:
        agent = self._agent
        budget = agent.budget
        easy = agent.remote_public_endpoint()
        if easy is None:
            return
        n = budget.birthday_sockets
        a = self._new_attempt("birthday", "hard")
        a.target = easy
        now = self._loop.time()
        agent.waterfall.start("birthday", now)
        rec = agent.waterfall["birthday"]
        rec.details.update(
            role="hard",
            sockets=n,
            range_size=plan.params.get("range_size"),
            probability=plan.probability,
        )
        agent.engine.raise_limits(n * 2 + 64, n * 4 + 64)
        try:
            try:
                for i in range(1, n + 1):
                    local = await self._bind(a, i)
                    agent.engine.add_probe_base(local)
            except OSError as exc:
                self._finish("birthday", False, f"could not open {n} sockets: {exc}")
                return
            if a.done:
                return
            hp = HardSidePlan(
                easy,
                start=self._loop.time(),
                sockets=n,
                max_duration=min(budget.birthday_max_duration, 15.0),
            )
            ports = tuple(loc[1] for loc, _ in sorted(a.by_local.items(), key=lambda x: x[1]))
            agent.send_control(
                make_birthday_start(agent.call_id, hp, self._loop.time(), local_ports=ports)
            )
            local_of = {i: loc for loc, i in a.by_local.items()}
            sent = 0
            while not a.done and hp.state is State.RUNNING:
                for s in hp.poll(self._loop.time()):
                    loc = local_of.get(s.socket)
                    if loc is not None and s.socket in a.sockets:
                        agent.probe(loc, s.dest, "birthday")
                        sent += 1
                await self._wait(a, hp.next_deadline())
            rec.details["pinhole_checks_sent"] = sent
            if a.winner is not None:
                hp.on_success(a.winner)
                self._finish("birthday", True, "")
            else:
                self._finish(
                    "birthday",
                    False,
                    f"no probe hit one of the {n} pinholes within {hp.deadline - hp.start:.0f} s",
                )
        finally:
            self._release(a)

    # -- birthday, easy side --------
    async def _birthday_easy(
        self, plan: StagePlan, hard: NatSummary, start: float, sockets: int
    ) -> None:
        agent = self._agent
        budget = agent.budget
        assert hard.public_ip is not None
        m = budget.birthday_probes
        a = self._new_attempt("birthday", "easy")
        a.target_ip = hard.public_ip
        now = self._loop.time()
        agent.waterfall.start("birthday", now)
        rec = agent.waterfall["birthday"]
        size = hard.range_size()
        span = scan_range(hard.port_range, m)
        ep = EasySidePlan(
            hard.public_ip,
            span,
            start=start,
            rng=self._rng,
            probes=m,
            rate=budget.birthday_rate,
            max_duration=budget.birthday_max_duration,
        )
        rec.details.update(
            role="easy",
            sockets=sockets,
            range_size=size,
            scan_range=list(span),
            probes_sent=0,
            probability=ep.probability(sockets, size),
        )
        agent.engine.raise_limits(len(ep.ports) + 64, len(ep.ports) + 64)
        # Stop a grace period after the last probe: its answer needs a round trip.
        grace = 4 * agent.owd() + 0.5
        last = start + len(ep.ports) / ep.rate + grace
        try:
            while not a.done and ep.state is State.RUNNING:
                now = self._loop.time()
                for s in ep.poll(now):
                    agent.probe(agent.base, s.dest, "birthday")
                rec.details["probes_sent"] = ep.sent
                if ep.pending == 0 and now >= last:
                    break
                nd = ep.next_deadline()
                await self._wait(a, last if ep.pending == 0 else nd)
            ok = agent.waterfall["birthday"].status == "succeeded"
            if ok:
                ep.on_success()
            rec.details["probes_sent"] = ep.sent
            self._finish(
                "birthday",
                ok,
                f"no answer to {ep.sent} probes over ports {span[0]}-{span[1]} of "
                f"{hard.public_ip} (estimated range {size}, {sockets} pinholes)",
            )
        finally:
            a.done = True

    # -- prediction, predicted (sequential) side --------
    async def _predicted(self, plan: StagePlan) -> None:
        agent = self._agent
        peer = agent.remote_public_endpoint()
        servers = [s for s in agent.sample_servers() if s != peer]
        local_summary = agent.local_summary()
        if peer is None or len(servers) < 2 or not local_summary.delta:
            return
        a = self._new_attempt("port-prediction", "predicted")
        now = self._loop.time()
        agent.waterfall.start("port-prediction", now)
        rec = agent.waterfall["port-prediction"]
        rec.details.update(role="predicted", delta=local_summary.delta)
        sock_client: StunClient | None = None
        try:
            try:
                sock = await agent.network.bind(agent.base[0], 0)
            except OSError as exc:
                self._finish("port-prediction", False, f"could not open a socket: {exc}")
                return
            sock_client = StunClient(sock, rto=SAMPLE_RTO)
            a.sockets[1] = sock
            local = sock.local_address
            a.by_local[local] = 1
            self.locals[local] = "port-prediction"
            sock.set_receiver(self._receiver(local, sock_client))
            agent.adopt_socket(local, sock)
            agent.engine.add_probe_base(local)
            burst = predicted_burst(servers, peer)
            t0 = self._loop.time()
            samples: list[asyncio.Task[Address | None]] = []
            client = sock_client

            async def sample(dest: Address) -> Address | None:
                try:
                    res = await client.binding(dest, timeout=SAMPLE_TIMEOUT)
                except (StunError, OSError):
                    return None
                return res.mapped

            last_sample_at = t0
            targets = 0
            for s in burst:
                await self._wait(a, t0 + s.t_offset)
                if a.done:
                    break
                if s.purpose == "sample":
                    samples.append(self._loop.create_task(sample(s.dest)))
                    last_sample_at = self._loop.time()
                    # Let the task send now: send order is allocation order.
                    await asyncio.sleep(0)
                else:
                    agent.probe(local, s.dest, "port-prediction")
                    targets += 1
                    if targets == 1:
                        mapped = await asyncio.gather(*samples)
                        ports = [m[1] for m in mapped if m is not None]
                        ip = next((m[0] for m in mapped if m is not None), None)
                        rec.details["samples"] = ports
                        if len(ports) < 2 or ip is None:
                            self._finish("port-prediction", False, "too few STUN samples answered")
                            return
                        agent.send_control(
                            make_probe(
                                agent.call_id,
                                ports,
                                local_summary.delta,
                                max(0, round(last_sample_at * 1000)),
                                ip,
                            )
                        )
                if self._loop.time() - t0 > PREDICTION_MAX:
                    break
            if not a.done:
                await self._wait(a, t0 + PREDICTION_MAX)
            self._end_unanswered(
                a,
                f"the peer's checks did not reach the predicted port within "
                f"{PREDICTION_MAX:g} s (samples {rec.details.get('samples')})",
            )
        finally:
            if sock_client is not None:
                sock_client.close()
            self._release(a)

    # -- prediction, mutual (both sides sequential) --------
    async def _mutual(self, plan: StagePlan) -> None:
        """Fresh samples on a fresh socket, our HardNatProbe out, the peer's in; then flow k
        (its own fresh socket: one new allocation on our NAT) checks the peer's predicted port
        of its flow k (:func:`mutual_schedule`). The peer does the same the other way round."""
        agent = self._agent
        servers = agent.sample_servers()
        local_summary = agent.local_summary()
        if len(set(servers)) < 2 or not local_summary.delta:
            return
        a = self._new_attempt("port-prediction", "mutual")
        early, self._early_probe = self._early_probe, None
        if early is not None and self._loop.time() - early[1] <= MUTUAL_PROBE_FRESH:
            a.peer_probe = early[0]
        t_begin = self._loop.time()
        agent.waterfall.start("port-prediction", t_begin)
        rec = agent.waterfall["port-prediction"]
        rec.details.update(role="mutual", delta=local_summary.delta)
        flows = min(MUTUAL_FLOWS_PER_SWEEP * MUTUAL_SWEEPS, MUTUAL_MAX_SOCKETS - 1)
        sample_client: StunClient | None = None
        try:
            try:
                # Every socket first (binding allocates nothing): nothing slow may come between
                # the last sample and the first flow.
                sample_sock = await agent.network.bind(agent.base[0], 0)
                a.sockets[0] = sample_sock
                sample_client = StunClient(sample_sock, rto=SAMPLE_RTO)
                sample_sock.set_receiver(self._receiver(sample_sock.local_address, sample_client))
                local_of: dict[int, Address] = {}
                for i in range(1, flows + 1):
                    local_of[i] = await self._bind(a, i)
                    agent.engine.add_probe_base(local_of[i])
            except OSError as exc:
                self._finish("port-prediction", False, f"could not open {flows + 1} sockets: {exc}")
                return
            agent.engine.raise_limits(flows * 4 + 64, flows * 4 + 64)
            if a.done:
                return
            client = sample_client

            async def sample(dest: Address) -> Address | None:
                try:
                    res = await client.binding(dest, timeout=SAMPLE_TIMEOUT)
                except (StunError, OSError):
                    return None
                return res.mapped

            tasks = []
            for dest in dict.fromkeys(servers):
                tasks.append(self._loop.create_task(sample(dest)))
                await asyncio.sleep(0)  # send order is allocation order
            last_sample_at = self._loop.time()
            mapped = await asyncio.gather(*tasks)
            sample_client.close()
            sample_client = None
            self._close_socket(a, 0, sample_sock)
            ports = [m[1] for m in mapped if m is not None]
            ip = next((m[0] for m in mapped if m is not None), None)
            rec.details["samples"] = ports
            if len(ports) < 2 or ip is None or a.done:
                if not a.done:
                    self._finish("port-prediction", False, "too few STUN samples answered")
                return
            agent.send_control(
                make_probe(
                    agent.call_id,
                    ports,
                    local_summary.delta,
                    max(0, round(last_sample_at * 1000)),
                    ip,
                )
            )
            deadline = self._loop.time() + MUTUAL_PROBE_WAIT
            while a.peer_probe is None and not a.done and self._loop.time() < deadline:
                await self._wait(a, min(deadline, self._loop.time() + MUTUAL_POLL))
            peer = a.peer_probe
            if a.done:
                if a.beaten_by is not None:
                    self._finish("port-prediction", False, "")
                return
            if peer is None:
                self._finish(
                    "port-prediction",
                    False,
                    f"no port samples from the peer within {MUTUAL_PROBE_WAIT:g} s",
                )
                return
            sched = mutual_schedule(
                peer,
                peer_churn=churn_per_gap(peer.ports, peer.delta),
                flows_per_sweep=MUTUAL_FLOWS_PER_SWEEP,
                sweeps=MUTUAL_SWEEPS,
                controlling=agent.controlling,
                socket=1,
                socket_per_flow=True,
            )
            rec.details.update(peer_samples=list(peer.ports), flows=flows, peer_delta=peer.delta)
            t0 = self._loop.time()
            stop = t_begin + MUTUAL_MAX
            sent = 0
            for s in sched:
                when = t0 + s.t_offset
                if when > stop:
                    break
                await self._wait(a, when)
                if a.done:
                    break
                loc = local_of.get(s.socket)
                if loc is not None and s.socket in a.sockets:
                    agent.probe(loc, s.dest, "port-prediction")
                    sent += 1
            rec.details["checks_sent"] = sent
            end = t0 + (sched[-1].t_offset if sched else 0.0) + MUTUAL_GRACE
            await self._wait(a, min(end, stop))
            self._end_unanswered(
                a,
                f"no answer to {sent} checks from {flows} fresh flows to the peer's "
                f"predicted ports (our samples {ports}, the peer's {list(peer.ports)})",
            )
        finally:
            if sample_client is not None:
                sample_client.close()
            self._release(a)

    # -- prediction, predicting side --------
    async def _predicting(self, peer_ip: str, window: Window) -> None:
        agent = self._agent
        a = self._new_attempt("port-prediction", "predicting")
        now = self._loop.time()
        agent.waterfall.start("port-prediction", now)
        rec = agent.waterfall["port-prediction"]
        rec.details.update(
            role="predicting", window=list(window.ports), coverage=round(window.coverage, 3)
        )
        sched = predicting_schedule(peer_ip, window)
        try:
            sent = 0
            for s in sched:
                await self._wait(a, now + s.t_offset)
                if a.done:
                    break
                agent.probe(agent.base, s.dest, "port-prediction")
                sent += 1
            rec.details["checks_sent"] = sent
            end = now + (sched[-1].t_offset if sched else 0.0) + PREDICTION_GRACE + BURST_GAP
            await self._wait(a, end)
            self._end_unanswered(
                a,
                f"no answer from the {len(window.ports)} predicted ports of {peer_ip} "
                f"({sent} checks)",
            )
        finally:
            a.done = True
