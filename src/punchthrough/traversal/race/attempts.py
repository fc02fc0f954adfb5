"""The hard stages' attempts as the race sees them: which runs, which sockets are whose, and
therefore which stage a verified pair belongs to (the attribution the report and the matrix's
strategy counts rest on, including two races the lab showed: a pinhole answering a hole-punch
check, and the hard side's own main socket being hit)."""

from __future__ import annotations

from dataclasses import dataclass, field

from punchthrough.netio import Address
from punchthrough.traversal.race.records import Stage


@dataclass
class Attempt:
    """One run of one role of a hard stage."""

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


class Attempts:
    """The latest attempt per hard stage, and the extra sockets of every attempt."""

    def __init__(self, base: Address) -> None:
        self.base = base
        self._latest: dict[Stage, Attempt] = {}
        self._next_id = 1
        self._extra: dict[Address, Stage] = {}

    def new(self, stage: Stage, role: str, now: float) -> Attempt:
        a = Attempt(self._next_id, stage, role, now)
        self._next_id += 1
        self._latest[stage] = a
        return a

    def latest(self, stage: Stage) -> Attempt | None:
        return self._latest.get(stage)

    def get(self, attempt: int) -> Attempt | None:
        return next((a for a in self._latest.values() if a.id == attempt), None)

    def active(self, stage: Stage) -> bool:
        a = self._latest.get(stage)
        return a is not None and not a.done

    def running(self) -> list[Attempt]:
        return [a for a in self._latest.values() if not a.done]

    def socket_opened(self, attempt: int, local: Address) -> None:
        a = self.get(attempt)
        if a is not None:
            a.locals.add(local)
            self._extra[local] = a.stage

    def socket_closed(self, local: Address) -> None:
        self._extra.pop(local, None)

    def stage_of(self, local: Address, remote: Address, kind: str) -> Stage | None:
        """Which hard stage found the pair ``local -> remote`` (None: not a hard stage's)."""
        if local in self._extra:
            return self._extra[local]
        if kind in (Stage.BIRTHDAY, Stage.PORT_PREDICTION):
            return Stage(kind)
        a = self._latest.get(Stage.BIRTHDAY)
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

    def won(self, stage: Stage, local: Address) -> Attempt | None:
        """``stage``'s running attempt won on ``local``: it is done (None: none was running)."""
        a = self._latest.get(stage)
        if a is None or a.done:
            return None
        a.done = True
        a.main_won = local not in a.locals and local == self.base
        return a

    def stop_all(self) -> None:
        for a in self._latest.values():
            a.done = True
