"""The asyncio side of traversal for one peer connection: runs the check engine and the monitor,
talks on the control stream, moves the call between the relay and a direct path.

Timeline of one call (dialer = controlling, acceptor = controlled):

1. The relayed connection becomes usable; each side sends ``Candidates`` and a
   ``NatReportSummary`` (what it knows of its NAT's mapping) on the control stream.
2. The dialer, once it has the peer's candidates, sends ``CheckStart`` with a start moment one
   one-way delay ahead; the acceptor maps it onto its own clock (no clock sync needed: the
   offset is ``start_at_ms - sent_at_ms``, minus half the round-trip time). Both check every pair
   at once: the hole punch.
3. First verified response on a pair: the connection's packets go onto that direct path (and its
   QUIC connection ID changes: RFC 9000 section 9.5, unlinkability), still mirrored onto the
   relay for a short overlap so nothing the peer cannot take on the new path yet is lost.
   The dialer nominates the best pair; both settle on it.
4. The monitor keeps the path alive and watches it; when it goes silent the call returns to the
   relay (mirrored first while only suspected), and the dialer retries in the background with
   exponential back-off, via a new ``CheckStart``. A suspicion also sends a QUIC PING (mirrored
   onto the relay: a side whose NAT forgot its bindings re-opens the relay's too) and asks the
   endpoint to look at its network (``DirectHost.network_suspect``).
5. A network change (the endpoint re-gathered: new address, NAT rebinding, a relay that answers
   again) reaches :meth:`TraversalAgent.local_candidates_changed`: ``CandidateUpdate`` to the
   peer, then a new round at once (dialer on the relay), or a consent check now (on direct).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Final, Protocol

from punchthrough.nat.summary import APD, NatSummary
from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.signal import (
    Candidate,
    Candidates,
    CandidateUpdate,
    CheckStart,
    HardNatBirthdayStart,
    HardNatProbe,
    Message,
    NatReportSummary,
)
from punchthrough.traversal.candidates import describe, remote_candidates
from punchthrough.traversal.checks import (
    Action,
    CandidatePair,
    CheckEngine,
    ConsentResponse,
    PairNominated,
    PairSucceeded,
    PeerSeen,
    RoundFailed,
    Transmit,
)
from punchthrough.traversal.hard import HardStages
from punchthrough.traversal.hardnat.plan import HARD_STAGES, Budget, StagePlan, plan_stages
from punchthrough.traversal.keys import derive_credentials
from punchthrough.traversal.monitor import DirectMonitor, Verdict
from punchthrough.traversal.stages import MappingHint, Waterfall

if TYPE_CHECKING:
    from punchthrough.transport.path import Path, PathManager

log = logging.getLogger(__name__)

#: Margin added to the one-way delay when agreeing a start moment (scheduling slack).
START_MARGIN: Final = 0.010
#: One-way delay assumed before QUIC has measured the round-trip time (RFC 9002 section 6.2.2
#: uses 333 ms as the initial RTT; our connection has always measured it by now).
DEFAULT_OWD: Final = 0.05
#: Relay mirroring after a switch to a direct path: at least this long, or 2 round trips.
OVERLAP_MIN: Final = 0.25
#: Retry back-off after the direct path died (seconds): first, cap.
RETRY_DEAD: Final = (1.0, 30.0)
#: Retry back-off after a round in which nothing answered (the pair may need another stage;
#: networks also change): first, cap.
RETRY_FAILED: Final = (30.0, 300.0)
#: Hard stages start after the hole punch's first checks: one pacing gap (checks.PACING) per
#: pair, plus this margin.
PACING_GUARD: Final = 0.010
HARD_START_DELAY: Final = 0.05


@dataclass
class LocalCandidates:
    """What the endpoint knows about its own reachability (shared by its connections)."""

    generation: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    mapping: MappingHint = "unknown"
    #: Port allocation seen across the samples when the mapping is endpoint-dependent:
    #: "sequential" (with ``delta``), "random" or "unknown".
    allocation: str = "unknown"
    delta: int | None = None
    mapped: Address | None = None
    mapped_protocol: str | None = None
    public_ip: str | None = None
    #: Why there is no mapped candidate (for the report): "no gateway configured", ...
    port_mapping_note: str = "no port-mapping gateway configured"
    #: Our NAT as the stage planner sees it (sent to the peer as ``NatReportSummary``).
    summary: NatSummary = field(default_factory=lambda: NatSummary(udp=True))
    #: False while the endpoint's filtering test still runs (the summary is not final yet).
    summary_ready: bool = True


class DirectHost(Protocol):
    """What a connection's agent needs from its endpoint."""

    @property
    def sock(self) -> DatagramSocket: ...

    @property
    def local_candidates(self) -> LocalCandidates: ...

    def register_ufrag(self, ufrag: str, agent: TraversalAgent | None) -> None: ...

    @property
    def network(self) -> Network | None: ...

    @property
    def budget(self) -> Budget: ...

    def sample_servers(self) -> list[Address]: ...

    @property
    def nat_keepalive(self) -> float:
        """Keepalive interval of the NAT bindings of a direct path (``monitor.KEEPALIVE``)."""
        ...

    def network_suspect(self, reason: str) -> None:
        """A path died or a send failed: the endpoint should check its network now (cheap:
        local addresses, a keepalive to each relay) and re-gather if something changed."""
        ...


class ConnectionSide(Protocol):
    """What the agent needs from its :class:`~punchthrough.endpoint.Connection`."""

    is_client: bool
    paths: PathManager

    def send_control(self, msg: Message) -> None: ...

    def add_control_handler(
        self, msg_type: type[Message], handler: Callable[[Message], None]
    ) -> None: ...

    def change_connection_id(self) -> None: ...

    def quic_rtt(self) -> float | None: ...

    def direct_packet(self, data: bytes, addr: Address) -> None: ...

    def ping(self) -> None:
        """Send a QUIC PING now (current path, and any path mirrored onto)."""
        ...

    def path_switched(self) -> None:
        """The current path changed: restart QUIC's probe back-off (it grew on the old path)."""
        ...


class TraversalAgent:
    """Direct-path traversal for one connection. Created once the relayed connection is usable."""

    def __init__(self, conn: ConnectionSide, host: DirectHost, binding: bytes) -> None:
        self._loop = asyncio.get_running_loop()
        self._conn = conn
        self._host = host
        self.controlling = conn.is_client
        self.credentials = derive_credentials(binding, is_dialer=conn.is_client)
        self.engine = CheckEngine(self.credentials, controlling=self.controlling)
        self.base: Address = host.sock.local_address
        self.engine.add_base(self.base)
        self.monitor = DirectMonitor(keepalive=host.nat_keepalive)
        self.waterfall = Waterfall()
        self.stats: Counter[str] = Counter()
        self.remote_generation = -1
        #: The peer's NAT summary (None until its ``NatReportSummary`` arrived).
        self.remote_summary: NatSummary | None = None
        #: Evidence from the peer's checks that it maps endpoint-dependently (prflx ports).
        self._remote_dependent = False
        self._remote_port_mapping = False
        #: Sockets checks may go out on: the main socket and the hard stages' extra sockets.
        self._sockets: dict[Address, DatagramSocket] = {self.base: host.sock}
        self.hard = HardStages(self)
        #: Hard stages to start (loop time) once the hole punch's first checks are out.
        self._hard_start_at: float | None = None
        self._hard_backoff: float | None = None
        self._remote_srflx: set[Address] = set()
        self._remote_mapped: set[Address] = set()
        self._have_remote = False
        self._round_start: float | None = None
        self._pending_round: int = 0
        self._retry_at: float | None = None
        self._retry_delay: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._direct: Path | None = None  # the direct path the call is on (or was, last)
        self._direct_pair: CandidatePair | None = None
        self._sent_generation = -1
        self._cid_change_at: float | None = None
        self._closed = False
        #: Packets lost to the monitor's detection delay are not visible here; fallbacks are.
        self.fallbacks = 0
        self.upgrades = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        conn = self._conn
        self._host.register_ufrag(self.credentials.local_ufrag, self)
        conn.add_control_handler(Candidates, self._on_candidates)
        conn.add_control_handler(CandidateUpdate, self._on_candidates)
        conn.add_control_handler(CheckStart, self._on_check_start)
        conn.add_control_handler(NatReportSummary, self._on_nat_report)
        conn.add_control_handler(HardNatBirthdayStart, self._on_birthday_start)
        conn.add_control_handler(HardNatProbe, self._on_probe)
        self._send_candidates()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hard.close()
        self._host.register_ufrag(self.credentials.local_ufrag, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def relay_established(self, at: float, relay: str | None) -> None:
        self.waterfall.succeed("relay", at, relay)

    # -- control stream ----------------------------------------------------------------------
    def _send_candidates(self) -> None:
        local = self._host.local_candidates
        if local.generation == self._sent_generation:
            return
        first = self._sent_generation < 0
        self._sent_generation = local.generation
        cands = tuple(local.candidates)
        if first:
            self._conn.send_control(Candidates(candidates=cands))
            if local.summary_ready:
                self._conn.send_control(local.summary.to_signal())
        else:
            self._conn.send_control(CandidateUpdate(generation=local.generation, candidates=cands))
        self.stats["candidates_sent"] += 1

    def local_summary_ready(self) -> None:
        """The endpoint's filtering test ended: send (or resend) our NAT summary."""
        if self._closed or self._sent_generation < 0:
            return  # the first Candidates carry it
        self._conn.send_control(self._host.local_candidates.summary.to_signal())
        self.stats["nat_reports_sent_late"] += 1

    def local_candidates_changed(self) -> None:
        """The endpoint re-gathered after a network change (new address, NAT rebinding, a new
        port mapping, a relay reachable again): tell the peer (``CandidateUpdate``), and check
        again at once. On the relay the dialer proposes a round now (the acceptor's update makes
        the dialer do so); on a direct path a consent check goes out now, so a path the change
        broke is noticed within the monitor's few hundred milliseconds."""
        if self._closed:
            return
        self._send_candidates()
        self.stats["network_changes"] += 1
        now = self._loop.time()
        if self._on_direct():
            self._probe_now(now)
        elif self.controlling and self._have_remote:
            self._retry_delay = None
            self._propose_round()
        self._rearm()

    def _on_candidates(self, msg: Message) -> None:
        if isinstance(msg, CandidateUpdate):
            if msg.generation <= self.remote_generation:
                self.stats["stale_candidate_updates"] += 1
                return
            self.remote_generation = msg.generation
            cands = msg.candidates
        elif isinstance(msg, Candidates):
            if self.remote_generation >= 0:
                self.stats["duplicate_candidates"] += 1
                return
            self.remote_generation = 0
            cands = msg.candidates
        else:
            return
        remote = remote_candidates(cands)
        self._remote_srflx = {r.address for r in remote if r.kind == "srflx"}
        self._remote_mapped = {r.address for r in remote if r.kind == "mapped"}
        self._remote_port_mapping = bool(self._remote_mapped)
        now = self._loop.time()
        self.engine.set_remote_candidates(remote, now)
        self._have_remote = True
        self.stats["candidates_received"] += 1
        if self.controlling and not self._on_direct():
            self._retry_delay = None
            self._propose_round()
        elif isinstance(msg, CandidateUpdate) and self._on_direct():
            # The peer's network changed under the call: is our path still there?
            self._probe_now(now)
        self._rearm()

    def _on_nat_report(self, msg: Message) -> None:
        if not isinstance(msg, NatReportSummary):
            return
        self.remote_summary = NatSummary.from_signal(msg)
        self.stats["nat_reports_received"] += 1
        if self.waterfall["hole-punch"].status != "pending" and not self._on_direct():
            # It came after the round started (the peer's filtering test runs behind the
            # call): re-plan, and start the hard stages the plan now runs.
            p = self.plan()
            self.waterfall.apply(p.values())
            punch_failed = self.waterfall["hole-punch"].status == "failed"
            if self._hard_start_at is None and any(
                p[s].runs and (punch_failed or not p[s].after) and not self.hard.active(s)
                for s in HARD_STAGES
            ):
                self._hard_start_at = self._loop.time() + HARD_START_DELAY
        self._rearm()

    def _on_birthday_start(self, msg: Message) -> None:
        if isinstance(msg, HardNatBirthdayStart) and not self._on_direct():
            self.hard.on_birthday_start(msg, self.plan().get("birthday"))
            self._rearm()

    def _on_probe(self, msg: Message) -> None:
        if isinstance(msg, HardNatProbe) and not self._on_direct():
            self.hard.on_probe(msg, self.plan().get("port-prediction"))
            self._rearm()

    # -- the stage plan ------------------------------------------------------------------------
    @property
    def call_id(self) -> str:
        """Both sides know it: the dialer's username fragment."""
        ufrag = self.credentials.local_ufrag if self.controlling else self.credentials.remote_ufrag
        return f"c{ufrag}"

    @property
    def budget(self) -> Budget:
        return self._host.budget

    @property
    def network(self) -> Network:
        net = self._host.network
        if net is None:
            raise OSError("no network to open sockets on")
        return net

    def local_summary(self) -> NatSummary:
        s = self._host.local_candidates.summary
        if self.waterfall["port-mapping"].status == "failed":
            s = s.without_port_mapping()
        return s

    def _remote_view(self) -> NatSummary:
        r = self.remote_summary or NatSummary(udp=True)
        if self._remote_dependent and r.mapping == "unknown":
            r = replace(r, mapping=APD)
        if self._remote_port_mapping and not r.port_mapping:
            r = replace(r, port_mapping=("pcp",))
        if self.waterfall["port-mapping"].status == "failed":
            r = r.without_port_mapping()
        return r

    def plan(self) -> dict[str, StagePlan]:
        """The waterfall's stages for this pair, from both NAT summaries (plan_stages)."""
        plans = plan_stages(self.local_summary(), self._remote_view(), budget=self.budget)
        return {p.stage: p for p in plans}

    def sample_servers(self) -> list[Address]:
        return self._host.sample_servers()

    def remote_public_endpoint(self) -> Address | None:
        """The peer's server-reflexive endpoint (the one its endpoint-independent NAT shows
        everyone)."""
        srflx = sorted(self._remote_srflx)
        return srflx[0] if srflx else None

    def owd(self) -> float:
        return self._owd()

    def send_control(self, msg: Message) -> None:
        self._conn.send_control(msg)

    def _owd(self) -> float:
        rtt = self._conn.quic_rtt()
        return rtt / 2 if rtt else DEFAULT_OWD

    def _propose_round(self) -> None:
        """Controlling side: agree a start moment with the peer and schedule the round."""
        now = self._loop.time()
        delay = self._owd() + START_MARGIN
        self._pending_round = self.engine.round + 1
        sent_ms = int(now * 1000)
        self._conn.send_control(
            CheckStart(
                call_id=f"r{self.credentials.local_ufrag}",
                stage="hole-punch",
                generation=self._pending_round,
                start_at_ms=sent_ms + int(delay * 1000),
                sent_at_ms=sent_ms,
            )
        )
        self._round_start = now + delay
        self._retry_at = None
        self.stats["rounds_proposed"] += 1
        self._rearm()

    def _on_check_start(self, msg: Message) -> None:
        if not isinstance(msg, CheckStart) or msg.stage != "hole-punch" or self.controlling:
            return
        if msg.generation <= self.engine.round:
            self.stats["stale_check_start"] += 1
            return
        now = self._loop.time()
        ahead = max(0.0, (msg.start_at_ms - msg.sent_at_ms) / 1000.0 - self._owd())
        self._pending_round = msg.generation
        self._round_start = now + ahead
        self._rearm()

    # -- rounds ------------------------------------------------------------------------------
    def _start_round(self, now: float) -> None:
        self._round_start = None
        if not self._on_direct():
            self.engine.reset()
        self.engine.round = max(self.engine.round, self._pending_round - 1)
        self.engine.start_round(now)
        local = self._host.local_candidates
        p = self.plan()
        if p["port-mapping"].runs:
            self.waterfall.start("port-mapping", now)
        else:
            self.waterfall.skip(
                "port-mapping", f"{p['port-mapping'].reason} (ours: {local.port_mapping_note})"
            )
        self.waterfall.start("hole-punch", now)
        self.waterfall.apply(p.values())
        # The hard stages that need not wait for the punch start once its first checks are out
        # (a sequential NAT's prediction burst must not interleave with new punch flows).
        if any(p[s].runs and not p[s].after for s in HARD_STAGES):
            self._hard_start_at = now + len(self.engine.pairs) * PACING_GUARD + HARD_START_DELAY
        self.stats["rounds"] += 1
        log.debug("round %d: checking %d pairs", self.engine.round, len(self.engine.pairs))

    def _start_hard(self, now: float, *, punch_failed: bool) -> None:
        """Start our initiating role of every hard stage the plan runs now."""
        if self._closed or self._on_direct() or not self._have_remote:
            return
        if self.remote_summary is None:
            self._hard_start_at = now + HARD_START_DELAY  # its report is on the way
            return
        p = self.plan()
        for stage in HARD_STAGES:
            sp = p[stage]
            if not sp.runs or (sp.after and not punch_failed):
                continue
            self.hard.start(sp, now)

    def hard_stage_failed(self, stage: str, now: float) -> None:
        """A hard stage ended without a path: retry later with back-off (dialer and acceptor
        alike: each starts only its own initiating role)."""
        if self._closed or self._on_direct():
            return
        first, cap = RETRY_FAILED
        delay = first if self._hard_backoff is None else min(self._hard_backoff * 2, cap)
        self._hard_backoff = delay
        self._hard_start_at = now + delay
        self._rearm()

    def _on_direct(self) -> bool:
        current = self._conn.paths.current
        return current is not None and current.kind == "direct"

    # -- datagrams ---------------------------------------------------------------------------
    def handle_stun(self, data: bytes, local: Address, remote: Address) -> None:
        """A check or check response for this connection, from the endpoint's router."""
        if self._closed:
            return
        now = self._loop.time()
        actions = self.engine.handle_datagram(data, local, remote, now)
        log.debug("check datagram from %s: %d actions", describe(remote), len(actions))
        self._run(actions, now)

    def owns(self, txid: bytes) -> bool:
        return self.engine.owns(txid)

    # -- the hard stages' sockets ------------------------------------------------------------
    def adopt_socket(self, local: Address, sock: DatagramSocket) -> None:
        """An extra socket (hard stage) checks and the direct path may use."""
        self._sockets[local] = sock

    def forget_socket(self, local: Address) -> None:
        """An extra socket closed: no checks, pairs or direct path on it any more."""
        if local == self.base:
            return
        self._sockets.pop(local, None)
        self.engine.remove_base(local)
        paths = self._conn.paths
        for path in [p for p in paths.paths if p.kind == "direct" and p.local == local]:
            paths.remove(path, "its socket closed")

    def probe(self, local: Address, remote: Address, kind: str) -> None:
        """One check of a hard stage (sent once, from ``local``)."""
        if self._closed:
            return
        self._transmit(self.engine.probe(local, remote, self._loop.time(), kind))
        self._rearm()

    def quic_on_extra(self, data: bytes, addr: Address) -> None:
        """A QUIC packet on a hard stage's socket: the connection takes it from known paths."""
        self._conn.direct_packet(data, addr)

    def heard(self, path: Path) -> None:
        """A QUIC packet for this connection arrived on a direct path."""
        if path != self._direct or not self._on_direct():
            return
        mon = self.monitor
        if mon.heard(self._loop.time()):
            self._recovered()
        rx = mon.rx_deadline()
        if rx is not None and (self._timer is None or self._timer.when() > rx + 1e-6):
            self._rearm()  # the peer started streaming: watch for its silence

    def sent(self) -> None:
        """A QUIC packet just went out on the current path."""
        if self._on_direct():
            self.monitor.sent(self._loop.time())
            self._rearm()

    # -- actions -----------------------------------------------------------------------------
    def _run(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                self._transmit(action)
            elif isinstance(action, PairSucceeded):
                self._succeeded(action.pair, now)
            elif isinstance(action, PairNominated):
                self._nominated(action.pair, now)
            elif isinstance(action, PeerSeen):
                self._peer_seen(action.local, action.remote)
            elif isinstance(action, ConsentResponse):
                if self._direct_pair is action.pair and self._on_direct():
                    self.monitor.rtt = action.rtt
                    if self.monitor.heard(now):
                        self._recovered()
            elif isinstance(action, RoundFailed):
                self._round_failed(action, now)
        self._rearm()

    def _transmit(self, t: Transmit) -> None:
        sock = self._sockets.get(t.local)
        if sock is None:
            self.stats["check_no_socket"] += 1
            return
        log.debug("check to %s (%d bytes)", describe(t.remote), len(t.data))
        try:
            sock.sendto(t.data, t.remote)
        except OSError as exc:
            self.stats["check_send_errors"] += 1
            log.debug("check to %s failed: %s", describe(t.remote), exc)

    def _path_for(self, local: Address, remote: Address) -> Path:
        from punchthrough.transport.path import Path

        path = Path.direct(local, remote)
        paths = self._conn.paths
        if not paths.has(path):
            sock = self._sockets.get(local, self._host.sock)

            def send(data: bytes, _remote: Address = remote) -> None:
                sock.sendto(data, _remote)

            paths.add(path, send)
        return path

    def _peer_seen(self, local: Address, remote: Address) -> None:
        # The peer proved (MESSAGE-INTEGRITY) it sends from ``remote``: accept its QUIC packets
        # from there, so none is dropped while our own check of that pair is still under way.
        self._path_for(local, remote)
        announced = self._remote_srflx | self._remote_mapped
        if (
            self._remote_srflx
            and remote not in announced
            and any(remote[0] == a[0] for a in announced)
        ):
            # Same public IP, another port than any it announced: its NAT mapped its checks
            # to us anew, i.e. it maps endpoint-dependently.
            self._remote_dependent = True
        stage = self.hard.stage_of(local, remote, "")
        if stage is not None:
            # A verified check on a hard stage's socket: that socket won; close the others now.
            self.hard.succeeded(stage, local)
        direct = self._direct
        if (
            direct is not None
            and remote == direct.remote
            and self._on_direct()
            and self.monitor.heard(self._loop.time())
        ):
            self._recovered()

    def _strategy(self, pair: CandidatePair) -> str:
        stage = self.hard.stage_of(pair.local, pair.remote, pair.remote_kind)
        if stage is not None:
            return stage
        local = self._host.local_candidates
        if pair.remote_kind == "mapped" or pair.remote in self._remote_mapped:
            return "port-mapping"
        if local.mapped is not None and pair.mapped == local.mapped:
            return "port-mapping"
        return "hole-punch"

    def _succeeded(self, pair: CandidatePair, now: float) -> None:
        strategy = self._strategy(pair)
        if strategy in HARD_STAGES:
            self.waterfall.succeed(strategy, now, pair.describe())
            self.hard.succeeded(strategy, pair.local)
            if self.waterfall["hole-punch"].status == "started":
                self.waterfall.fail("hole-punch", now, f"the {strategy} stage answered first")
            for other in HARD_STAGES:
                if other != strategy and self.waterfall[other].status == "pending":
                    self.waterfall.skip(other, f"not needed: the {strategy} stage found a path")
        elif strategy == "port-mapping":
            self.waterfall.succeed("port-mapping", now, pair.describe())
            self.waterfall.skip("hole-punch", "port mapping answered first")
            if self.waterfall["hole-punch"].status == "started":
                self.waterfall.succeed("hole-punch", now, pair.describe())
        else:
            self.waterfall.succeed("hole-punch", now, pair.describe())
            if self.waterfall["port-mapping"].status == "started":
                self.waterfall.fail("port-mapping", now, "the hole punch answered first")
        for stage in HARD_STAGES:
            if self.waterfall[stage].status == "pending":
                self.waterfall.skip(stage, "not needed: a direct path was found")
        if not self._on_direct():
            self._switch(pair, now, strategy, "check succeeded")

    def _nominated(self, pair: CandidatePair, now: float) -> None:
        self.stats["nominated"] += 1
        if self._direct_pair is not pair or not self._on_direct():
            self._switch(pair, now, self._strategy(pair), "pair nominated")

    def _switch(self, pair: CandidatePair, now: float, strategy: str, reason: str) -> None:
        paths = self._conn.paths
        previous = paths.current
        path = self._path_for(pair.local, pair.remote)
        if paths.switch_to(path, f"{reason}: {pair.describe()}"):
            self._conn.path_switched()
        self._direct, self._direct_pair = path, pair
        rtt = self._conn.quic_rtt() or 2 * DEFAULT_OWD
        overlap = max(OVERLAP_MIN, 2 * rtt)
        if previous is not None and previous != path:
            # Overlap: the peer may not take packets on the new path for another round trip
            # (its own check of the pair is in flight); the old path still delivers them.
            relay = previous if previous.kind == "relay" else self._relay_path()
            if relay is not None:
                paths.mirror(relay, now + overlap)
        self.monitor.reset(now, pair.rtt)
        self._retry_delay = None
        self._retry_at = None
        if self.waterfall.direct_at is None:
            self.waterfall.direct_at = now
            self.waterfall.strategy = strategy
        self._hard_start_at = None
        self.upgrades += 1
        # New connection ID for the new path, but only once the overlap's packets (old CID)
        # have arrived through the relay: the RETIRE_CONNECTION_ID frame races ahead on the
        # faster direct path, and the peer's QUIC stack drops packets for a retired CID.
        self._cid_change_at = now + overlap + rtt

    def _change_cid(self) -> None:
        self._cid_change_at = None
        if not self._on_direct():
            return
        try:
            self._conn.change_connection_id()
        except Exception:  # no spare CID from the peer yet: linkability only, not correctness
            self.stats["cid_change_failed"] += 1
            log.debug("change_connection_id failed", exc_info=True)

    def _relay_path(self) -> Path | None:
        return next((p for p in self._conn.paths.paths if p.kind == "relay"), None)

    def _recovered(self) -> None:
        relay = self._relay_path()
        if relay is not None:
            self._conn.paths.stop_mirror(relay)
        self.stats["suspicions_cleared"] += 1

    def _fall_back(self, now: float, reason: str) -> None:
        relay = self._relay_path()
        paths = self._conn.paths
        paths.stop_mirror()
        if relay is not None and paths.switch_to(relay, reason):
            self._conn.path_switched()
        self.fallbacks += 1
        self.engine.reset()
        self.monitor.verdict = Verdict.DEAD
        if self.controlling:
            first, cap = RETRY_DEAD
            delay = first if self._retry_delay is None else min(self._retry_delay * 2, cap)
            self._retry_delay = delay
            self._retry_at = now + delay
        # Something on the relay now: if our NAT forgot its bindings (a reboot), this re-opens
        # the relay's, so the peer's packets (it falls back too) reach us there.
        self._conn.ping()
        self._host.network_suspect(f"direct path lost: {reason}")
        log.info("direct path lost (%s); back on the relay", reason)

    def _round_failed(self, action: RoundFailed, now: float) -> None:
        if self.waterfall["port-mapping"].status == "started":
            self.waterfall.fail("port-mapping", now, "no port-mapped candidate answered")
        p = self.plan()  # without the failed port mapping now
        reason = action.reason
        needed = [s for s in HARD_STAGES if p[s].needed]
        if needed:
            reason += f"; needed: {' / '.join(needed)}"
        elif "relay" in p["relay"].reason and "stays on the relay" in p["relay"].reason:
            reason += "; " + p["birthday"].reason
        elif self.local_summary().mapping == "unknown" or self._remote_view().mapping == "unknown":
            reason += "; NAT mapping unknown on a side (give STUN servers to learn it)"
        self.waterfall.fail("hole-punch", now, reason)
        for stage in HARD_STAGES:
            rec = self.waterfall[stage]
            if rec.status == "skipped" and "not needed: a direct path" in rec.reason:
                rec.status = "pending"
        self.waterfall.apply(p.values())
        self._start_hard(now, punch_failed=True)
        if self.controlling and self._retry_at is None and not self._on_direct():
            first, cap = RETRY_FAILED
            delay = first if self._retry_delay is None else min(self._retry_delay * 2, cap)
            self._retry_delay = delay
            self._retry_at = now + delay

    # -- the timer ---------------------------------------------------------------------------
    def _rearm(self) -> None:
        if self._closed:
            return
        times = [self.engine.next_deadline()]
        if self._round_start is not None:
            times.append(self._round_start)
        if self._retry_at is not None:
            times.append(self._retry_at)
        if self._cid_change_at is not None:
            times.append(self._cid_change_at)
        if self._hard_start_at is not None:
            times.append(self._hard_start_at)
        if self._on_direct() and self._direct_pair is not None:
            times.append(self.monitor.next_deadline(self._loop.time()))
        due = min((t for t in times if t is not None), default=None)
        if self._timer is not None:
            # Never postpone a pending wake-up: _fire recomputes everything, so an early one is
            # harmless, while a deadline that passed before its timer ran (a send in the same
            # loop iteration calls this first) is no longer among the future times and would be
            # pushed back on every send: at 50 packets/s the fallback never came (lab, 1 in 12).
            if due is not None and self._timer.when() <= due + 1e-6:
                return
            self._timer.cancel()
            self._timer = None
        if due is not None:
            self._timer = self._loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self._loop.time()
        if self._round_start is not None and now >= self._round_start:
            self._start_round(now)
        if self._retry_at is not None and now >= self._retry_at and self.controlling:
            self._retry_at = None
            if not self._on_direct() and self._have_remote:
                self._propose_round()
        if self._cid_change_at is not None and now >= self._cid_change_at:
            self._change_cid()
        if self._hard_start_at is not None and now >= self._hard_start_at:
            self._hard_start_at = None
            self._start_hard(now, punch_failed=self.waterfall["hole-punch"].status == "failed")
        actions = self.engine.poll(now)
        self._run(actions, now)
        if self._on_direct() and self._direct_pair is not None:
            self._watch(now)
        self._rearm()

    def _probe_now(self, now: float) -> None:
        """One consent check on the direct path now (the monitor escalates if unanswered)."""
        pair = self._direct_pair
        if pair is None or not self._on_direct():
            return
        self.monitor.probed(now)
        self._transmit(self.engine.consent(pair, now))
        self.stats["consent_checks"] += 1

    def _watch(self, now: float) -> None:
        pair = self._direct_pair
        assert pair is not None
        mon = self.monitor
        if mon.want_probe(now):
            self._probe_now(now)
        before = mon.verdict
        verdict = mon.poll(now)
        if verdict is Verdict.SUSPECT and before is not Verdict.SUSPECT:
            relay = self._relay_path()
            if relay is not None:
                self._conn.paths.mirror(relay, math.inf)
                # An ack-eliciting packet on both paths: the relay's copy re-opens our NAT's
                # relay binding if it was forgotten, so the peer can fall back to us.
                self._conn.ping()
            self._host.network_suspect("direct path silent")
            self.stats["suspicions"] += 1
        elif verdict is Verdict.DEAD:
            self._fall_back(
                now, f"direct path silent for {(now - (mon.unanswered_since or now)) * 1000:.0f} ms"
            )

    # -- report ------------------------------------------------------------------------------
    @property
    def direct_at(self) -> float | None:
        return self.waterfall.direct_at

    @property
    def strategy(self) -> str | None:
        return self.waterfall.strategy
