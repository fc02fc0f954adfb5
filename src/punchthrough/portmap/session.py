"""The sans-IO core shared by the NAT-PMP and PCP clients: one gateway, one internal UDP port.

A session is a small state machine in the aioquic/h11 style: the caller feeds it ``now`` and
datagrams (:meth:`MappingSession.receive`), fires its timer (:meth:`MappingSession.handle_timer`
at :meth:`MappingSession.timer`), sends what :meth:`MappingSession.datagrams_to_send` returns to
the gateway's port 5351, and acts on the returned :data:`Event` objects. It never reads a clock
and never touches a socket, so unit tests drive it with a fake ``now`` and the asyncio adapter
(:mod:`punchthrough.portmap.mapper`) drives it on the running loop, virtual or real.

What it handles: request retransmission (:class:`NatPmpSchedule`, :class:`PcpSchedule`) under
an overall deadline, renewal at half the granted lifetime (RFC 6886 section 3.3, RFC 6887
section 11.2.1), gateway state loss detected from the epoch (RFC 6886 section 3.6, RFC 6887
section 8.5) followed by an immediate re-map, delete, and dropping (and counting) every answer
that is malformed, stale or not ours.
"""

from __future__ import annotations

import enum
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final

from punchthrough.netio import Address
from punchthrough.portmap.errors import PortMapError, PortMapTimeout

#: RFC 6886 section 3.1: first retransmission after 250 ms, doubling each time.
NATPMP_INITIAL_RT: Final = 0.25
#: RFC 6886 section 3.1: nine attempts in all before concluding there is no NAT-PMP server.
NATPMP_MAX_ATTEMPTS: Final = 9
#: RFC 6887 section 8.1.1: initial retransmission time (IRT), seconds.
PCP_IRT: Final = 3.0
#: RFC 6887 section 8.1.1: maximum retransmission time (MRT), seconds.
PCP_MRT: Final = 1024.0
#: RFC 6887 section 8.1.1: RAND is uniform in [-0.1, +0.1].
PCP_RAND: Final = 0.1
#: Default lifetime asked for: RFC 6886 section 3.3 recommends 7200 s (two hours).
DEFAULT_LIFETIME: Final = 7200
#: Renew at this fraction of the granted lifetime (RFC 6886 3.3; RFC 6887 11.2.1 says 1/2..5/8).
RENEW_FRACTION: Final = 0.5
#: Shortest renewal interval we schedule, so a gateway granting 1 s cannot make us spin.
MIN_RENEW_INTERVAL: Final = 1.0
#: Time allowed for a re-map after a gateway reset when no lifetime is known (seconds).
REMAP_TIMEOUT: Final = 10.0


class Operation(enum.Enum):
    PROBE = "probe"
    MAP = "map"
    RENEW = "renew"
    DELETE = "delete"


class State(enum.Enum):
    IDLE = "idle"  # nothing mapped (also after a delete, a failed map, an expiry)
    MAPPING = "mapping"  # first MAP request in flight
    MAPPED = "mapped"
    DELETING = "deleting"


# -- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probed:
    """The gateway answered the probe (NAT-PMP external address, PCP ANNOUNCE)."""

    external_ip: str | None  # PCP ANNOUNCE carries no address
    epoch: int


@dataclass(frozen=True, slots=True)
class Mapped:
    """A mapping was created (``renewal=False``) or renewed; ``external`` may change on re-map."""

    external: Address
    lifetime: int
    epoch: int
    renewal: bool


@dataclass(frozen=True, slots=True)
class Deleted:
    """The gateway confirmed the delete."""


@dataclass(frozen=True, slots=True)
class Failed:
    """An operation ended without success (timeout or a typed refusal)."""

    operation: Operation
    error: PortMapError


@dataclass(frozen=True, slots=True)
class GatewayReset:
    """The epoch says the gateway lost its state (reboot); a re-map has been started or done."""

    epoch: int
    expected: float


@dataclass(frozen=True, slots=True)
class Expired:
    """The mapping's lifetime ran out without a successful renewal."""

    external: Address


Event = Probed | Mapped | Deleted | Failed | GatewayReset | Expired


# -- retransmission schedules ------------------------------------------------------------------


class Schedule(ABC):
    """Intervals between (re)transmissions of one request."""

    max_attempts: int | None

    @abstractmethod
    def first(self) -> float: ...

    @abstractmethod
    def next(self, previous: float) -> float: ...


class NatPmpSchedule(Schedule):
    """RFC 6886 section 3.1: 250 ms, doubling, nine sends."""

    def __init__(
        self, initial: float = NATPMP_INITIAL_RT, max_attempts: int | None = NATPMP_MAX_ATTEMPTS
    ) -> None:
        self.initial = initial
        self.max_attempts = max_attempts

    def first(self) -> float:
        return self.initial

    def next(self, previous: float) -> float:
        return previous * 2


class PcpSchedule(Schedule):
    """RFC 6887 section 8.1.1: RT = (1+RAND)*IRT, then RT = (1+RAND)*MIN(2*RTprev, MRT).

    MRC and MRD are 0 (unlimited) in the RFC; the session's deadline is what ends a request.
    """

    def __init__(
        self, rng: random.Random | None = None, irt: float = PCP_IRT, mrt: float = PCP_MRT
    ) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.irt = irt
        self.mrt = mrt
        self.max_attempts = None

    def _rand(self) -> float:
        return 1.0 + self.rng.uniform(-PCP_RAND, PCP_RAND)

    def first(self) -> float:
        return self._rand() * self.irt

    def next(self, previous: float) -> float:
        return self._rand() * min(2 * previous, self.mrt)


# -- epoch tracking ----------------------------------------------------------------------------


class EpochTracker:
    """Decides from successive epochs whether the gateway lost its mapping state.

    ``pcp=True`` is RFC 6887 section 8.5 (a backwards step of more than 1 s, or server and
    client clocks disagreeing by more than 1/16 plus 2 s, in either direction: "goes backwards
    or jumps"). ``pcp=False`` is RFC 6886 section 3.6 (the epoch is more than 2 s below the
    previous one plus 7/8 of the client's elapsed time; NAT-PMP does not treat a forward jump
    as a reset).
    """

    def __init__(self, *, pcp: bool) -> None:
        self.pcp = pcp
        self.last: tuple[int, float] | None = None  # (epoch, client time)

    def observe(self, epoch: int, now: float) -> float | None:
        """Record an epoch; returns the expected epoch when this one means a reset, else None."""
        last = self.last
        self.last = (epoch, now)
        if last is None:
            return None
        prev_epoch, prev_time = last
        client_delta = max(0.0, now - prev_time)
        if self.pcp:
            if epoch < prev_epoch - 1:
                return prev_epoch + client_delta
            server_delta = epoch - prev_epoch
            if (
                client_delta + 2 < server_delta - server_delta / 16
                or server_delta + 2 < client_delta - client_delta / 16
            ):
                return prev_epoch + client_delta
            return None
        expected = prev_epoch + client_delta * 7 / 8
        return expected if epoch < expected - 2 else None


# -- the session -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """A response reduced to what the session needs; built by the protocol subclass."""

    kind: Operation  # PROBE (address/announce) or MAP (map, renew and delete answers)
    epoch: int | None  # None when the answer came in the other protocol's format
    error: PortMapError | None = None
    external_ip: str | None = None
    external_port: int = 0
    lifetime: int = 0


@dataclass(slots=True)
class _Pending:
    op: Operation
    data: bytes
    deadline: float
    rt: float
    next_at: float
    attempts: int = 1


class MappingSession(ABC):
    """Protocol-independent half of a NAT-PMP or PCP client (see the module docstring)."""

    protocol: str

    def __init__(
        self,
        internal_port: int,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        schedule: Schedule,
        epoch: EpochTracker,
    ) -> None:
        if not 0 < internal_port <= 0xFFFF:
            raise ValueError(f"internal port {internal_port} out of range 1..65535")
        if not 0 < lifetime <= 0xFFFFFFFF:
            raise ValueError("lifetime must be positive")
        self.internal_port = internal_port
        self.lifetime = lifetime
        self.schedule = schedule
        self.epoch = epoch
        self.state = State.IDLE
        self.external: Address | None = None
        self.external_ip: str | None = None
        self.granted_lifetime = 0
        self.expires_at: float | None = None
        self.renew_at: float | None = None
        self.stats: dict[str, int] = {
            "sent": 0,
            "retransmits": 0,
            "received": 0,
            "malformed": 0,
            "stale": 0,
            "nonce_mismatch": 0,
            "epoch_resets": 0,
            "renewals": 0,
            "unsolicited": 0,
        }
        self._pending: _Pending | None = None
        self._outbox: list[bytes] = []
        self._map_sent = False  # a MAP may exist on the gateway: delete owes it a request

    # -- protocol hooks ------------------------------------------------------------------------

    @abstractmethod
    def _probe_request(self) -> bytes: ...

    @abstractmethod
    def _map_request(self, lifetime: int) -> bytes: ...

    @abstractmethod
    def _parse(self, data: bytes) -> Answer | None:
        """Decode and validate one datagram; ``None`` = drop (the subclass counts why)."""

    # -- commands ------------------------------------------------------------------------------

    @property
    def busy(self) -> Operation | None:
        """The operation in flight, if any."""
        return self._pending.op if self._pending is not None else None

    def probe(self, now: float, timeout: float) -> None:
        """Ask whether the gateway speaks this protocol; ends in Probed or Failed(PROBE)."""
        self._start(Operation.PROBE, self._probe_request(), now, now + timeout)

    def map(self, now: float, timeout: float) -> None:
        """Create the mapping; ends in Mapped (then renewals) or Failed(MAP)."""
        self.state = State.MAPPING
        self._map_sent = True
        self._start(Operation.MAP, self._map_request(self.lifetime), now, now + timeout)

    def delete(self, now: float, timeout: float) -> bool:
        """Remove the mapping; ends in Deleted or Failed(DELETE). False if nothing to delete."""
        if not self._map_sent:
            self._reset_mapping()
            self._pending = None
            return False
        self.state = State.DELETING
        self.renew_at = None
        self._start(Operation.DELETE, self._map_request(0), now, now + timeout)
        return True

    def datagrams_to_send(self) -> list[bytes]:
        out, self._outbox = self._outbox, []
        return out

    def timer(self) -> float | None:
        """When :meth:`handle_timer` wants to run next (``None``: nothing scheduled)."""
        times = []
        if self._pending is not None:
            times.append(self._pending.next_at)
        if self.state is State.MAPPED:
            if self.renew_at is not None and self._pending is None:
                times.append(self.renew_at)
            if self.expires_at is not None:
                times.append(self.expires_at)
        return min(times) if times else None

    # -- inputs --------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        p = self._pending
        if p is not None and now >= p.next_at:
            done = now >= p.deadline or (
                self.schedule.max_attempts is not None and p.attempts >= self.schedule.max_attempts
            )
            if done:
                self._pending = None
                err = PortMapTimeout(
                    f"{self.protocol}: no answer to {p.op.value} after {p.attempts} request(s)",
                    protocol=self.protocol,
                )
                events.append(Failed(p.op, err))
                events += self._after_failure(p.op, now)
            else:
                p.attempts += 1
                p.rt = self.schedule.next(p.rt)
                p.next_at = min(now + p.rt, p.deadline)
                self._send(p.data, retransmit=True)
        if self.state is State.MAPPED:
            if self.expires_at is not None and now >= self.expires_at and self.external is not None:
                external = self.external
                self._pending = None if self.busy is Operation.RENEW else self._pending
                self._reset_mapping()
                events.append(Expired(external))
            elif (
                self.renew_at is not None
                and now >= self.renew_at
                and self._pending is None
                and self.expires_at is not None
            ):
                self.renew_at = None
                self.stats["renewals"] += 1
                self._start(Operation.RENEW, self._map_request(self.lifetime), now, self.expires_at)
        return events

    def receive(self, data: bytes, now: float) -> list[Event]:
        """One datagram from the gateway's port 5351 (the caller checks the source)."""
        self.stats["received"] += 1
        answer = self._parse(data)
        if answer is None:
            return []
        events: list[Event] = []
        reset = None if answer.epoch is None else self.epoch.observe(answer.epoch, now)
        if reset is not None:
            self.stats["epoch_resets"] += 1
        p = self._pending
        if answer.kind is Operation.PROBE:
            if p is not None and p.op is Operation.PROBE:
                self._pending = None
                if answer.error is not None:
                    events.append(Failed(Operation.PROBE, answer.error))
                else:
                    if answer.external_ip is not None:
                        self.external_ip = answer.external_ip
                    events.append(Probed(answer.external_ip, answer.epoch or 0))
            else:
                self.stats["unsolicited"] += 1
                if answer.error is None and answer.external_ip is not None:
                    self.external_ip = answer.external_ip
            if reset is not None and self.state in (State.MAPPED, State.MAPPING):
                events.append(GatewayReset(answer.epoch or 0, reset))
                self.map(now, self._remap_timeout(now))
            return events
        # A MAP answer: to a map, a renewal or a delete.
        if p is None or p.op is Operation.PROBE:
            self.stats["stale"] += 1
            if reset is not None and self.state is State.MAPPED:
                events.append(GatewayReset(answer.epoch or 0, reset))
                self.map(now, self._remap_timeout(now))
            return events
        if p.op is Operation.DELETE:
            if answer.error is not None:
                self._pending = None
                self._reset_mapping()
                return [Failed(Operation.DELETE, answer.error)]
            if answer.lifetime != 0:
                self.stats["stale"] += 1  # a late answer to an earlier map or renewal
                return []
            self._pending = None
            self._reset_mapping()
            return [Deleted()]
        if answer.error is None and answer.lifetime == 0:
            self.stats["stale"] += 1  # a late answer to an earlier delete
            return []
        self._pending = None
        if answer.error is not None:
            events.append(Failed(p.op, answer.error))
            events += self._after_failure(p.op, now)
            return events
        ip = answer.external_ip or self.external_ip or "0.0.0.0"
        self.external_ip = ip
        self.external = (ip, answer.external_port)
        self.granted_lifetime = answer.lifetime
        self.state = State.MAPPED
        self.expires_at = now + answer.lifetime
        self.renew_at = now + max(MIN_RENEW_INTERVAL, answer.lifetime * RENEW_FRACTION)
        if reset is not None:
            events.append(GatewayReset(answer.epoch or 0, reset))
        renewal = p.op is Operation.RENEW and reset is None
        events.append(Mapped(self.external, answer.lifetime, answer.epoch or 0, renewal))
        return events

    # -- internals -----------------------------------------------------------------------------

    def _start(self, op: Operation, data: bytes, now: float, deadline: float) -> None:
        rt = self.schedule.first()
        self._pending = _Pending(op, data, deadline, rt, min(now + rt, deadline))
        self._send(data, retransmit=False)

    def _send(self, data: bytes, *, retransmit: bool) -> None:
        self._outbox.append(data)
        self.stats["sent"] += 1
        if retransmit:
            self.stats["retransmits"] += 1

    def _after_failure(self, op: Operation, now: float) -> list[Event]:
        if op is Operation.MAP:
            self.state = State.IDLE
        elif op is Operation.DELETE:
            self._reset_mapping()
        elif op is Operation.RENEW and self.expires_at is not None:
            if now >= self.expires_at:
                external = self.external
                self._reset_mapping()
                return [Expired(external)] if external is not None else []
            # Refused renewal: try once more halfway to expiry (the mapping still holds).
            left = self.expires_at - now
            if left >= 2 * MIN_RENEW_INTERVAL:
                self.renew_at = now + left * RENEW_FRACTION
        return []

    def _remap_timeout(self, now: float) -> float:
        # A re-map after a gateway reboot gets as long as a renewal would have had.
        if self.expires_at is None:
            return REMAP_TIMEOUT
        return max(MIN_RENEW_INTERVAL, self.expires_at - now)

    def _reset_mapping(self) -> None:
        self.state = State.IDLE
        self.external = None
        self.expires_at = None
        self.renew_at = None
        self.granted_lifetime = 0
        self._map_sent = False
