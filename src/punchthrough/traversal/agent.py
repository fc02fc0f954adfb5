"""The asyncio side of traversal for one peer connection: executes the race's actions.

The decisions are :class:`~punchthrough.traversal.race.Race`'s. This module owns the I/O around
it for one call: the check engine's datagrams (:mod:`.checks`), the direct path's liveness
(:mod:`.monitor`), the control stream, the path manager, and one event-loop timer.

Timeline of one call (dialer = controlling, acceptor = controlled):

1. Each side sends ``Candidates`` and a ``NatReportSummary`` (what it knows of its NAT): the
   dialer first in its sealed early offer beside its Initial (:mod:`.offer`), then with
   PeerAuth; the acceptor as 0.5-RTT data (:func:`first_flight`).
2. An acceptor that had the offer checks at once (:meth:`TraversalAgent.start_early`; until the
   dialer's proof a :class:`~.proofgate.ProofGate` holds path moves and hard stages) and says
   so with a ``CheckStart``: the dialer checks the moment it has the acceptor's candidates.
   Otherwise the dialer's ``CheckStart`` names a moment one one-way delay ahead, which the
   acceptor maps onto its clock. The hard stages start beside the punch or after it.
3. First verified response on a pair: the connection's packets go onto that direct path (and
   its QUIC connection ID changes: RFC 9000 section 9.5, unlinkability), still mirrored onto the
   relay for a short overlap so nothing the peer cannot take on the new path yet is lost. The
   dialer nominates the best pair; both settle on it.
4. The monitor keeps the path alive and watches it; when it goes silent the call returns to the
   relay (mirrored first while only suspected), and the dialer retries with back-off. A
   suspicion also sends a QUIC PING (mirrored onto the relay: a side whose NAT forgot its
   bindings re-opens the relay's too) and asks the endpoint to look at its network.
5. A network change (the endpoint re-gathered) reaches
   :meth:`TraversalAgent.local_candidates_changed`: ``CandidateUpdate`` to the peer, then a new
   round (dialer on the relay) or a consent check.
"""

from __future__ import annotations

import asyncio
import logging

from punchthrough.nat.summary import NatSummary
from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.signal import (
    Candidates,
    CandidateUpdate,
    CheckStart,
    HardNatBirthdayStart,
    HardNatProbe,
    Message,
    NatReportSummary,
)
from punchthrough.transport.path import Path
from punchthrough.traversal.candidates import describe, remote_candidates
from punchthrough.traversal.checks import Action as CheckAction
from punchthrough.traversal.checks import (
    CheckEngine,
    ConsentResponse,
    PairNominated,
    PairSucceeded,
    PeerSeen,
    RoundFailed,
    Transmit,
)
from punchthrough.traversal.family import Family, ip_family
from punchthrough.traversal.hard import HardStages
from punchthrough.traversal.host import ConnectionSide, DirectHost, TraversalSettings
from punchthrough.traversal.keys import derive_credentials
from punchthrough.traversal.local import LocalCandidates
from punchthrough.traversal.monitor import DirectMonitor, Verdict
from punchthrough.traversal.offer import Offer, first_flight
from punchthrough.traversal.paths import DEFAULT_OWD, CallPaths
from punchthrough.traversal.proofgate import ProofGate
from punchthrough.traversal.race import (
    Action,
    LocalView,
    ProbeNow,
    Race,
    Reason,
    SendControl,
    Stage,
    StartRound,
    SwitchPath,
)

__all__ = ["ConnectionSide", "DirectHost", "LocalCandidates", "TraversalAgent", "TraversalSettings"]

log = logging.getLogger(__name__)


class TraversalAgent:
    """Direct-path traversal for one connection: from the relayed connection being usable, or
    (acceptor, ``proven=False``) from the dialer's early offer (:meth:`start_early`)."""

    def __init__(
        self,
        conn: ConnectionSide,
        host: DirectHost,
        secret: bytes,
        settings: TraversalSettings,
        *,
        proven: bool = True,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._conn = conn
        self._host = host
        self.controlling = conn.is_client
        self.credentials = derive_credentials(secret, is_dialer=conn.is_client)
        self.gate = ProofGate(proven=proven)
        self.engine = CheckEngine(self.credentials, controlling=self.controlling)
        self.base: Address = host.sock.local_address
        self.engine.add_base(self.base)
        self.monitor = DirectMonitor(keepalive=settings.nat_keepalive)
        creds = self.credentials
        self.race = Race(
            controlling=self.controlling,
            budget=settings.budget,
            base=self.base,
            call_id=f"c{creds.local_ufrag if self.controlling else creds.remote_ufrag}",
            round_id=f"r{creds.local_ufrag}",
        )
        self.stats = self.race.stats
        self.remote_generation = -1
        self.paths = CallPaths(conn, host.sock)
        self.hard = HardStages(self, self.race)
        self._timer: asyncio.TimerHandle | None = None
        self._sent_generation = -1
        self._closed = False

    # -- the race's view of the world, and its outputs ---------------------------------------
    def _facts(self) -> Race:
        """The race with its two executor-owned facts refreshed (see ``Race``)."""
        race, local = self.race, self._host.local_candidates
        race.on_direct = self._on_direct()
        race.local = LocalView(
            local.summary, local.mapped, local.port_mapping_note, tuple(self.sample_servers())
        )
        return race

    def _execute(self, actions: list[Action], now: float) -> None:
        for action in self.gate.admit(actions):
            if isinstance(action, SendControl):
                self._conn.send_control(action.msg)
            elif isinstance(action, StartRound):
                if action.reset:
                    self.engine.reset()
                self.engine.round = max(self.engine.round, action.generation - 1)
                self.engine.start_round(now)
                log.debug("round %d: checking %d pairs", self.engine.round, len(self.engine.pairs))
            elif isinstance(action, ProbeNow):
                self._probe_now(now)
            elif isinstance(action, SwitchPath):
                self.paths.switch(action.pair, now, action.reason)
                self.monitor.reset(now, action.pair.rtt)
            else:
                self.hard.execute(action)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, sent_generation: int | None = None) -> None:
        """Go; ``sent_generation``: the candidates the connection already sent (0.5-RTT)."""
        if sent_generation is not None:
            self._sent_generation = sent_generation
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
        self.race.close()
        self.hard.close()
        self._host.register_ufrag(self.credentials.local_ufrag, None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def relay_established(self, at: float, relay: str | None) -> None:
        self.race.waterfall.succeed(Stage.RELAY, at, relay)

    def start_early(self, offer: Offer) -> None:
        """Acceptor, before the proof (after :meth:`start`): check the offer's candidates now,
        and tell the dialer (our ``CheckStart``) to check the moment it has ours."""
        self._on_candidates(offer.candidates)
        if offer.summary is not None:
            self._on_nat_report(offer.summary)
        now_ms = int(self._loop.time() * 1000)
        msg = CheckStart(
            call_id=f"r{self.credentials.local_ufrag}",
            stage=Stage.HOLE_PUNCH.value,
            generation=self.race.round + 1,
            start_at_ms=now_ms,
            sent_at_ms=now_ms,
        )
        self._on_check_start(msg)
        self._conn.send_control(msg)
        self.stats["early_rounds"] += 1

    def proof_checked(self, at: float, relay: str | None) -> None:
        """Acceptor: the dialer proved its id. The relayed call is up; what waited runs now."""
        self.relay_established(at, relay)
        now = self._loop.time()
        self._execute(self.gate.open(), now)
        self._rearm()

    # -- control stream ----------------------------------------------------------------------
    def _send_candidates(self) -> None:
        local = self._host.local_candidates
        if local.generation == self._sent_generation:
            return
        first = self._sent_generation < 0
        self._sent_generation = local.generation
        cands = tuple(local.candidates)
        if first:
            for msg in first_flight(local):
                self._conn.send_control(msg)
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
        """The endpoint re-gathered after a network change: tell the peer (``CandidateUpdate``),
        then check again at once (the race says how)."""
        if self._closed:
            return
        self._send_candidates()
        self.stats["network_changes"] += 1
        now = self._loop.time()
        self._execute(self._facts().local_candidates_changed(now, self.owd()), now)
        self._rearm()

    def _on_candidates(self, msg: Message) -> None:
        if isinstance(msg, CandidateUpdate):
            if msg.generation <= self.remote_generation:
                self.stats["stale_candidate_updates"] += 1
                return
            self.remote_generation = msg.generation
        elif isinstance(msg, Candidates):
            if self.remote_generation >= 0:
                self.stats["duplicate_candidates"] += 1
                return
            self.remote_generation = 0
        else:
            return
        rejected: list[str] = []
        remote = remote_candidates(msg.candidates, self._local_families(), rejected)
        if rejected:
            self.stats["candidates_rejected"] += len(rejected)
            log.info("peer candidates refused: %s", "; ".join(rejected[:4]))
        now = self._loop.time()
        self.engine.set_remote_candidates(remote, now)
        self.stats["candidates_received"] += 1
        self.race.common_family = bool(remote) or not remote_candidates(msg.candidates)
        actions = self._facts().remote_candidates(
            now,
            {r.address for r in remote if r.kind == "srflx"},
            {r.address for r in remote if r.kind == "mapped"},
            update=isinstance(msg, CandidateUpdate),
            owd=self.owd(),
        )
        self._execute(actions, now)
        self._rearm()

    def _local_families(self) -> set[Family] | None:
        """Families we have candidates in: pairs stay within a family."""
        fams = {ip_family(c.address) for c in self._host.local_candidates.candidates}
        known = {f for f in fams if f is not None}
        return known or None  # nothing gathered: let the socket try what it can

    def _on_check_start(self, msg: Message) -> None:
        if isinstance(msg, CheckStart):
            self._facts().check_start(msg, self._loop.time(), self.owd())
            self._rearm()

    def _on_nat_report(self, msg: Message) -> None:
        if isinstance(msg, NatReportSummary):
            self.stats["nat_reports_received"] += 1
            self._facts().nat_report(NatSummary.from_signal(msg), self._loop.time())
            self._rearm()

    def _on_birthday_start(self, msg: Message) -> None:
        if isinstance(msg, HardNatBirthdayStart):
            now = self._loop.time()
            self._execute(self._facts().birthday_start(msg, now, self.owd()), now)
            self._rearm()

    def _on_probe(self, msg: Message) -> None:
        if isinstance(msg, HardNatProbe):
            now = self._loop.time()
            self._execute(self._facts().hard_probe(msg, now), now)
            self._rearm()

    # -- what the stage executors ask --------------------------------------------------------
    def owd(self) -> float:
        rtt = self._conn.quic_rtt()
        return rtt / 2 if rtt else DEFAULT_OWD

    def sample_servers(self) -> list[Address]:
        return self._host.sample_servers()

    @property
    def network(self) -> Network:
        net = self._host.network
        if net is None:
            raise OSError("no network to open sockets on")
        return net

    def send_control(self, msg: Message) -> None:
        self._conn.send_control(msg)

    def attempt_ended(self, attempt: int, why: Reason) -> None:
        """A hard stage's attempt ended without a path (the race records it, may retry)."""
        if self._closed:
            return
        self._facts().attempt_ended(attempt, why, self._loop.time())
        self._rearm()

    def adopt_socket(self, local: Address, sock: DatagramSocket) -> None:
        """An extra socket (hard stage) checks and the direct path may use."""
        self.paths.sockets[local] = sock

    def forget_socket(self, local: Address) -> None:
        """An extra socket closed: no checks, pairs or direct path on it any more."""
        if local == self.base:
            return
        self.race.socket_closed(local)
        self.engine.remove_base(local)
        self.paths.forget(local)

    def probe(self, local: Address, remote: Address, kind: str) -> None:
        """One check of a hard stage (sent once, from ``local``)."""
        if self._closed:
            return
        self._transmit(self.engine.probe(local, remote, self._loop.time(), kind))
        self._rearm()

    def quic_on_extra(self, data: bytes, addr: Address) -> None:
        """A QUIC packet on a hard stage's socket: the connection takes it from known paths."""
        self._conn.direct_packet(data, addr)

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

    def heard(self, path: Path) -> None:
        """A QUIC packet for this connection arrived on a direct path."""
        if path != self.paths.direct or not self._on_direct():
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

    # -- the check engine's actions ----------------------------------------------------------
    def _run(self, actions: list[CheckAction], now: float) -> None:
        for action in actions:
            if isinstance(action, Transmit):
                self._transmit(action)
            elif isinstance(action, PairSucceeded):
                self._execute(self._facts().pair_succeeded(action.pair, now), now)
            elif isinstance(action, PairNominated):
                self._execute(self._facts().pair_nominated(action.pair, now), now)
            elif isinstance(action, PeerSeen):
                self._peer_seen(action.local, action.remote, now)
            elif isinstance(action, ConsentResponse):
                if self.race.direct_pair is action.pair and self._on_direct():
                    self.monitor.rtt = action.rtt
                    if self.monitor.heard(now):
                        self._recovered()
            elif isinstance(action, RoundFailed):
                self._execute(self._facts().round_failed(now, action.reason), now)
        self._rearm()

    def _transmit(self, t: Transmit) -> None:
        sock = self.paths.sockets.get(t.local)
        if sock is None:
            self.stats["check_no_socket"] += 1
            return
        log.debug("check to %s (%d bytes)", describe(t.remote), len(t.data))
        try:
            sock.sendto(t.data, t.remote)
        except OSError as exc:
            self.stats["check_send_errors"] += 1
            log.debug("check to %s failed: %s", describe(t.remote), exc)

    def _peer_seen(self, local: Address, remote: Address, now: float) -> None:
        # The peer proved (MESSAGE-INTEGRITY) it sends from ``remote``: accept its QUIC packets
        # from there, so none is dropped while our own check of that pair is still under way.
        self.paths.path_for(local, remote)
        # A verified check on a hard stage's socket: that socket won; the others close now.
        self._execute(self._facts().peer_seen(local, remote), now)
        direct = self.paths.direct
        if (
            direct is not None
            and remote == direct.remote
            and self._on_direct()
            and self.monitor.heard(self._loop.time())
        ):
            self._recovered()

    # -- paths -------------------------------------------------------------------------------
    def _on_direct(self) -> bool:
        return self.paths.on_direct()

    def _recovered(self) -> None:
        self.paths.stop_mirror()
        self.stats["suspicions_cleared"] += 1

    def _fall_back(self, now: float, reason: str) -> None:
        self.paths.back_to_relay(reason)
        self.engine.reset()
        self.monitor.verdict = Verdict.DEAD
        self._facts().path_dead(now)
        # Something on the relay now: if our NAT forgot its bindings (a reboot), this re-opens
        # the relay's, so the peer's packets (it falls back too) reach us there.
        self._conn.ping()
        self._host.network_suspect(f"direct path lost: {reason}")
        log.info("direct path lost (%s); back on the relay", reason)

    # -- the timer ---------------------------------------------------------------------------
    def _rearm(self) -> None:
        if self._closed:
            return
        times = [self.engine.next_deadline(), self.race.next_deadline(), self.paths.cid_change_at]
        if self._on_direct() and self.race.direct_pair is not None:
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
        race = self._facts()
        self._execute(race.poll(now, n_pairs=len(self.engine.pairs), owd=self.owd()), now)
        due = self.paths.cid_change_at
        if due is not None and now >= due and not self.paths.change_cid():
            self.stats["cid_change_failed"] += 1
        self._run(self.engine.poll(now), now)
        if self._on_direct() and self.race.direct_pair is not None:
            self._watch(now)
        self._rearm()

    def _probe_now(self, now: float) -> None:
        """One consent check on the direct path now (the monitor escalates if unanswered)."""
        pair = self.race.direct_pair
        if pair is None or not self._on_direct():
            return
        self.monitor.probed(now)
        self._transmit(self.engine.consent(pair, now))
        self.stats["consent_checks"] += 1

    def _watch(self, now: float) -> None:
        mon = self.monitor
        if mon.want_probe(now):
            self._probe_now(now)
        before = mon.verdict
        verdict = mon.poll(now)
        if verdict is Verdict.SUSPECT and before is not Verdict.SUSPECT:
            self.paths.mirror_relay()
            self._host.network_suspect("direct path silent")
            self.stats["suspicions"] += 1
        elif verdict is Verdict.DEAD:
            silent = (now - (mon.unanswered_since or now)) * 1000
            self._fall_back(now, f"direct path silent for {silent:.0f} ms")
