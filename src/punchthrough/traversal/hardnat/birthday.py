"""The birthday attack (phase C), sans-IO: who sends what when, and when it stops.

Roles (DESIGN "The waterfall", corrected from the PRD): the HARD side (endpoint-dependent
mapping, random ports) opens ``n`` sockets and sends one check from each to the EASY side's
public endpoint: ``n`` pinholes at unknown random ports of its NAT, each admitting the easy
endpoint. The EASY side (endpoint-independent mapping: one public endpoint whatever it sends to)
sends ``m`` checks from its main socket to distinct random ports of the hard side's IP, paced,
inside the hard NAT's observed port range. A probe that lands on a pinhole is admitted (the hole
was opened towards exactly that endpoint); the hard socket answers and that 4-tuple is the path.
Every probe also opens the easy side's filter for the port it went to, so a hard-side refresh
from a pinhole the easy side has probed gets through as well (a second chance for lost probes).

P(success) = 1 - exp(-n*m/N) with N the size of the hard NAT's range (:mod:`.stats`). Probing
only the observed range costs nothing (see :mod:`.summary`): ports are uniform over the true
range, so any sub-range of it is as good as the whole.

Plans are small state machines on an absolute clock (the event loop's ``now`` in seconds):
``poll(now)`` returns the sends due, ``next_deadline()`` when to call again; ``on_success``,
``on_call_ended`` and ``poll`` past the budget stop everything and say which sockets to close.
Randomness comes only from the ``random.Random`` passed in (seeded: reproducible trials).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Final

from punchthrough.nat.allocation import DEFAULT_PORT_RANGE
from punchthrough.netio import Address
from punchthrough.signal.messages import MAX_ACCEPTOR_PORTS, HardNatBirthdayStart
from punchthrough.traversal.hardnat.plan import (
    BIRTHDAY_PROBES,
    BIRTHDAY_PROBES_CAP,
    BIRTHDAY_RATE,
    BIRTHDAY_RATE_RANGE,
    BIRTHDAY_SOCKETS,
    BIRTHDAY_SOCKETS_CAP,
)
from punchthrough.traversal.hardnat.schedule import Send
from punchthrough.traversal.hardnat.stats import success_probability

#: Gap between two pinhole-opening sends on the hard side (256 opens take ~0.5 s; keeps a NAT's
#: new-mapping rate limit and our own socket buffers out of trouble).
OPEN_PACE: Final = 0.002
#: Pinhole refresh period. Linux keeps an unreplied UDP flow 30 s (nf_conntrack_udp_timeout);
#: consumer NATs go as low as ~20 s, so refresh well inside that, and early enough to be a
#: second chance for probes lost in flight during a ~7 s attack.
REFRESH_INTERVAL: Final = 5.0
#: The easy side starts this long after the last pinhole opened (scheduling slack).
START_MARGIN: Final = 0.05
#: Hard stop of one attack, seconds (1024 probes at 150/s take 6.8 s).
MAX_DURATION: Final = 15.0
#: A start more than this far ahead is refused (a peer must not park our sockets).
MAX_START_LEAD: Final = 10.0


class BirthdayError(ValueError):
    """A birthday-start message or configuration that cannot be used."""


class State(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"  # the call ended
    EXPIRED = "expired"  # budget (duration) exhausted without a hit


class _Plan:
    """A time-ordered send list with a cursor and a stop state (shared by both roles)."""

    def __init__(self, start: float, schedule: list[Send], max_duration: float) -> None:
        self.start = start
        self.schedule = sorted(schedule)
        self.deadline = start + max_duration
        self.state = State.RUNNING
        self._next = 0
        self.sent = 0

    @property
    def pending(self) -> int:
        """Sends not made (cancelled ones, once stopped)."""
        return len(self.schedule) - self._next

    def poll(self, now: float) -> list[Send]:
        """Sends due by ``now``; after the deadline, nothing (state becomes EXPIRED)."""
        if self.state is not State.RUNNING:
            return []
        if now >= self.deadline:
            self.state = State.EXPIRED
            return []
        out: list[Send] = []
        sched = self.schedule
        while self._next < len(sched) and self.start + sched[self._next].t_offset <= now:
            out.append(sched[self._next])
            self._next += 1
        self.sent += len(out)
        return out

    def next_deadline(self) -> float | None:
        """When ``poll`` has something to do (a send, or the expiry); None once stopped."""
        if self.state is not State.RUNNING:
            return None
        if self._next < len(self.schedule):
            return min(self.start + self.schedule[self._next].t_offset, self.deadline)
        return self.deadline

    def _stop(self, state: State) -> None:
        if self.state is State.RUNNING:
            self.state = state


class HardSidePlan(_Plan):
    """The hard side: sockets 1..n, one opening check each, then refreshes until the deadline."""

    def __init__(
        self,
        easy_endpoint: Address,
        *,
        start: float,
        sockets: int = BIRTHDAY_SOCKETS,
        open_pace: float = OPEN_PACE,
        refresh_interval: float = REFRESH_INTERVAL,
        max_duration: float = MAX_DURATION,
    ) -> None:
        if not 1 <= sockets <= min(BIRTHDAY_SOCKETS_CAP, MAX_ACCEPTOR_PORTS):
            raise BirthdayError(f"sockets must be 1..{BIRTHDAY_SOCKETS_CAP}, got {sockets}")
        if open_pace < 0 or refresh_interval <= 0 or max_duration <= 0:
            raise BirthdayError("open_pace >= 0, refresh_interval > 0, max_duration > 0")
        self.easy_endpoint = easy_endpoint
        self.sockets = sockets
        sched = [Send(i * open_pace, i + 1, easy_endpoint, "open") for i in range(sockets)]
        t = refresh_interval
        while t < max_duration:
            sched += [
                Send(t + i * open_pace, i + 1, easy_endpoint, "refresh") for i in range(sockets)
            ]
            t += refresh_interval
        #: When the easy side should start probing, relative to ``start``: all pinholes open.
        self.easy_start_offset = (sockets - 1) * open_pace + START_MARGIN
        self.winner: int | None = None
        super().__init__(start, sched, max_duration)

    @property
    def socket_ids(self) -> list[int]:
        return list(range(1, self.sockets + 1))

    def on_success(self, winner: int) -> list[int]:
        """First verified response/request on socket ``winner``: close every other socket."""
        if not 1 <= winner <= self.sockets:
            raise BirthdayError(f"socket {winner} is not one of this attack's 1..{self.sockets}")
        if self.state is State.RUNNING:
            self.winner = winner
            self._stop(State.SUCCEEDED)
        return [s for s in self.socket_ids if s != self.winner]

    def on_call_ended(self) -> list[int]:
        """Stop at once; every socket closes (a winner's too: the call is over)."""
        self._stop(State.CANCELLED)
        return self.socket_ids

    def sockets_to_close(self) -> list[int]:
        """After EXPIRED (or any stop): all sockets but a winner's."""
        return [s for s in self.socket_ids if s != self.winner]


def scan_range(
    observed: tuple[int, int] | None, probes: int, *, limit: tuple[int, int] = (1, 65535)
) -> tuple[int, int]:
    """Where the easy side probes: the observed range, widened to hold ``probes`` ports."""
    if observed is None:
        return DEFAULT_PORT_RANGE
    lo, hi = observed
    lo_lim, hi_lim = limit
    need = min(probes, hi_lim - lo_lim + 1)
    while hi - lo + 1 < need:
        grow = (need - (hi - lo + 1) + 1) // 2
        lo, hi = max(lo_lim, lo - grow), min(hi_lim, hi + grow)
    return (lo, hi)


class EasySidePlan(_Plan):
    """The easy side: ``probes`` distinct random ports of ``hard_ip`` in ``port_range``, paced."""

    def __init__(
        self,
        hard_ip: str,
        port_range: tuple[int, int],
        *,
        start: float,
        rng: random.Random,
        probes: int = BIRTHDAY_PROBES,
        rate: float = BIRTHDAY_RATE,
        max_duration: float = MAX_DURATION,
        socket: int = 0,
        rate_range: tuple[float, float] = BIRTHDAY_RATE_RANGE,
    ) -> None:
        lo, hi = port_range
        if not 1 <= lo <= hi <= 65535:
            raise BirthdayError(f"bad port range {port_range}")
        if not 1 <= probes <= BIRTHDAY_PROBES_CAP:
            raise BirthdayError(f"probes must be 1..{BIRTHDAY_PROBES_CAP}, got {probes}")
        if not rate_range[0] <= rate <= rate_range[1]:
            raise BirthdayError(f"rate must be {rate_range[0]:g}..{rate_range[1]:g} per second")
        if max_duration <= 0:
            raise BirthdayError("max_duration must be > 0")
        # Budget: no more probes than the duration allows at this rate, nor than the range has.
        probes = min(probes, hi - lo + 1, max(1, int(max_duration * rate)))
        self.hard_ip = hard_ip
        self.port_range = (lo, hi)
        self.rate = rate
        self.ports = tuple(rng.sample(range(lo, hi + 1), probes))
        sched = [Send(i / rate, socket, (hard_ip, p), "probe") for i, p in enumerate(self.ports)]
        super().__init__(start, sched, max_duration)

    def on_success(self) -> list[int]:
        """A verified answer: stop probing (the main socket stays: it carries the call)."""
        self._stop(State.SUCCEEDED)
        return []

    def on_call_ended(self) -> list[int]:
        self._stop(State.CANCELLED)
        return []

    def probability(self, sockets: int, range_size: int) -> float:
        return success_probability(sockets, len(self.ports), range_size)


@dataclass(frozen=True, slots=True)
class BirthdayStart:
    """A peer's HardNatBirthdayStart, mapped onto our clock."""

    call_id: str
    sockets: int
    start: float  # our loop time
    local_ports: tuple[int, ...]


def make_birthday_start(
    call_id: str, plan: HardSidePlan, now: float, *, local_ports: tuple[int, ...] = ()
) -> HardNatBirthdayStart:
    """The hard side tells the easy side when to start (times in ms on the hard side's clock).

    Send it once every pinhole is open (or will be by ``start_at_ms``): probes that arrive
    before a pinhole exists are wasted.
    """
    start_at = plan.start + plan.easy_start_offset
    return HardNatBirthdayStart(
        call_id=call_id,
        acceptor_port_count=plan.sockets,
        acceptor_ports=local_ports[: plan.sockets],
        start_at_ms=max(0, round(start_at * 1000)),
        sent_at_ms=max(0, round(now * 1000)),
    )


def parse_birthday_start(
    msg: HardNatBirthdayStart, now: float, one_way_delay: float
) -> BirthdayStart:
    """When to start on our clock: the sender's lead time minus the one-way delay (no clock
    sync needed, as for CheckStart). A lead beyond :data:`MAX_START_LEAD` is refused."""
    lead = 0.0
    if msg.sent_at_ms is not None:
        lead = (msg.start_at_ms - msg.sent_at_ms) / 1000.0
    if lead > MAX_START_LEAD:
        raise BirthdayError(f"birthday start {lead:.1f} s ahead exceeds {MAX_START_LEAD:g} s")
    if msg.acceptor_port_count > BIRTHDAY_SOCKETS_CAP:
        raise BirthdayError(f"{msg.acceptor_port_count} sockets exceeds {BIRTHDAY_SOCKETS_CAP}")
    return BirthdayStart(
        msg.call_id,
        msg.acceptor_port_count,
        now + max(0.0, lead - max(0.0, one_way_delay)),
        tuple(msg.acceptor_ports),
    )
