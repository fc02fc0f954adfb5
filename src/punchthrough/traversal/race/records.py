"""The waterfall's vocabulary and its records: what ``traversal_report()`` shows per stage.

h11's rule: code decides on enums, never on prose. Every stage outcome is a :class:`Status`;
every reason is a :class:`Reason` — a :class:`Why` code (what the code tests) plus its text
(what a human reads). A stage another stage overtook is ``beaten`` (``beaten_by`` names the
winner), not ``failed``: it did nothing wrong.

Transitions (all of them; :class:`Waterfall` refuses the rest silently, as a record that has
succeeded must not be undone by a late loser)::

    pending  -> started | skipped
    skipped  -> started | pending (a re-plan: a late NAT summary, a failed round)
    started  -> succeeded | failed | beaten
    failed   -> started (a retry)          beaten -> started (a retry after a fallback)
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from punchthrough.traversal.hardnat.plan import StagePlan
from punchthrough.traversal.reasons import Why


class Stage(enum.StrEnum):
    """The waterfall's stages, in the design's order (values are the report's names)."""

    PORT_MAPPING = "port-mapping"
    HOLE_PUNCH = "hole-punch"
    PORT_PREDICTION = "port-prediction"
    BIRTHDAY = "birthday"
    RELAY = "relay"


#: The stages that open extra sockets and run on their own clocks (port prediction, birthday).
HARD: tuple[Stage, Stage] = (Stage.PORT_PREDICTION, Stage.BIRTHDAY)
#: Every stage but the relay (the relay carries the call from the start).
DIRECT: tuple[Stage, ...] = tuple(s for s in Stage if s is not Stage.RELAY)


class Status(enum.StrEnum):
    PENDING = "pending"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    BEATEN = "beaten"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a record is what it is: ``code`` for code, ``text`` for people."""

    code: Why
    text: str

    def __str__(self) -> str:
        return self.text


NO_REASON = Reason(Why.NONE, "")


@dataclass
class StageRecord:
    stage: Stage
    status: Status = Status.PENDING
    why: Reason = NO_REASON
    started_at: float | None = None
    at: float | None = None  # time of the outcome
    pair: str | None = None
    needed: bool = False
    #: The stage that overtook this one (status ``beaten``).
    beaten_by: Stage | None = None
    #: Stage figures for the report (birthday: sockets, probes_sent, range_size, ...).
    details: dict[str, object] = field(default_factory=dict)
    #: Times the stage started (hard stages retry with back-off).
    attempts: int = 0

    @property
    def reason(self) -> str:
        return self.why.text


@dataclass
class Waterfall:
    """The stage records of one connection, and the only code that changes them."""

    records: dict[Stage, StageRecord] = field(
        default_factory=lambda: {s: StageRecord(s) for s in Stage}
    )
    strategy: Stage | None = None
    direct_at: float | None = None

    def __getitem__(self, stage: str) -> StageRecord:
        return self.records[Stage(stage)]

    def start(self, stage: Stage, now: float) -> None:
        rec = self.records[stage]
        if rec.status in (Status.PENDING, Status.FAILED, Status.BEATEN, Status.SKIPPED):
            rec.status, rec.why, rec.started_at, rec.at = Status.STARTED, NO_REASON, now, None
            rec.beaten_by = None
            rec.attempts += 1

    def succeed(self, stage: Stage, now: float, pair: str | None = None) -> None:
        rec = self.records[stage]
        if rec.status is Status.SUCCEEDED:
            return
        if rec.started_at is None:
            rec.started_at = now
        rec.status, rec.why, rec.at, rec.pair = Status.SUCCEEDED, NO_REASON, now, pair

    def fail(self, stage: Stage, now: float, why: Reason) -> None:
        rec = self.records[stage]
        if rec.status is not Status.SUCCEEDED:
            rec.status, rec.why, rec.at = Status.FAILED, why, now

    def beat(self, stage: Stage, now: float, winner: Stage) -> None:
        """``stage`` was running when ``winner`` found a direct path first."""
        rec = self.records[stage]
        if rec.status is Status.STARTED:
            rec.status, rec.at, rec.beaten_by = Status.BEATEN, now, winner
            rec.why = Reason(Why.BEATEN, f"the {winner} stage answered first")

    def skip(self, stage: Stage, why: Reason, *, needed: bool = False) -> None:
        rec = self.records[stage]
        if rec.status in (Status.PENDING, Status.SKIPPED):
            rec.status, rec.why, rec.needed = Status.SKIPPED, why, needed

    def reopen(self, stage: Stage) -> None:
        """A skip that no longer holds (the direct path it relied on died): pending again."""
        rec = self.records[stage]
        if rec.status is Status.SKIPPED:
            rec.status = Status.PENDING

    def apply(self, plans: Iterable[StagePlan]) -> None:
        """Record a plan's skips and needs (stages that run are recorded when they start;
        until then a pending stage carries the planner's reason)."""
        for p in plans:
            stage = Stage(p.stage)
            if stage is Stage.RELAY:
                continue
            rec = self.records[stage]
            rec.needed = p.needed
            why = Reason(p.code, p.reason)
            if p.runs:
                if rec.status is Status.PENDING or (rec.status is Status.SKIPPED and p.needed):
                    rec.status, rec.why = Status.PENDING, why
            else:
                self.skip(stage, why, needed=p.needed)

    @property
    def needed(self) -> list[str]:
        return [
            str(s) for s, r in self.records.items() if r.needed and r.status is not Status.SUCCEEDED
        ]
