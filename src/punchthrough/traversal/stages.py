"""The waterfall's bookkeeping and stage choice, sans-IO (the skeleton ``race()`` extends).

Stages, in the design's order: ``port-mapping``, ``hole-punch``, ``port-prediction``,
``birthday``, ``relay``. Each has one record: ``pending`` -> ``started`` -> ``succeeded`` /
``failed`` (why), or ``skipped`` (why, and whether the pair needed it). The relay stage
succeeds as soon as the relayed connection is usable.

Which stages run is :func:`punchthrough.traversal.hardnat.plan.plan_stages`' decision from both
sides' NAT summaries; :meth:`Waterfall.apply` records it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from punchthrough.traversal.hardnat.plan import StagePlan

STAGES: Final = ("port-mapping", "hole-punch", "port-prediction", "birthday", "relay")

#: What one side knows about its own NAT's mapping, from the addresses servers at different
#: IPs observed for its main socket: ``independent`` (all the same), ``dependent`` (they
#: differ: an address- or address-and-port-dependent NAT), ``unknown`` (fewer than two).
MappingHint = Literal["independent", "dependent", "unknown"]


@dataclass
class StageRecord:
    stage: str
    status: str = "pending"  # pending, started, succeeded, failed, skipped
    reason: str = ""
    started_at: float | None = None
    at: float | None = None  # loop time of the outcome
    pair: str | None = None
    needed: bool = False
    #: Stage figures for the report (birthday: sockets, probes_sent, range_size, ...).
    details: dict[str, object] = field(default_factory=dict)
    #: Times the stage started (hard stages retry with back-off).
    attempts: int = 0


@dataclass
class Waterfall:
    """The stage records of one connection (what ``traversal_report()`` shows)."""

    records: dict[str, StageRecord] = field(
        default_factory=lambda: {s: StageRecord(s) for s in STAGES}
    )
    strategy: str | None = None
    direct_at: float | None = None

    def __getitem__(self, stage: str) -> StageRecord:
        return self.records[stage]

    def start(self, stage: str, now: float) -> None:
        rec = self.records[stage]
        if rec.status in ("pending", "failed", "skipped"):
            rec.status, rec.reason, rec.started_at, rec.at = "started", "", now, None
            rec.attempts += 1

    def succeed(self, stage: str, now: float, pair: str | None = None) -> None:
        rec = self.records[stage]
        if rec.status == "succeeded":
            return
        if rec.started_at is None:
            rec.started_at = now
        rec.status, rec.reason, rec.at, rec.pair = "succeeded", "", now, pair

    def fail(self, stage: str, now: float, reason: str) -> None:
        rec = self.records[stage]
        if rec.status != "succeeded":
            rec.status, rec.reason, rec.at = "failed", reason, now

    def skip(self, stage: str, reason: str, *, needed: bool = False) -> None:
        rec = self.records[stage]
        if rec.status in ("pending", "skipped"):
            rec.status, rec.reason, rec.needed = "skipped", reason, needed

    def apply(self, plans: Iterable[StagePlan]) -> None:
        """Record a plan's skips and needs (stages that run are recorded when they start;
        until then a pending stage carries the planner's reason)."""
        for p in plans:
            if p.stage == "relay" or p.stage not in self.records:
                continue
            rec = self.records[p.stage]
            rec.needed = p.needed
            if p.runs:
                if rec.status == "pending" or (rec.status == "skipped" and p.needed):
                    rec.status, rec.reason = "pending", p.reason
            else:
                self.skip(p.stage, p.reason, needed=p.needed)

    @property
    def needed(self) -> list[str]:
        return [s for s, r in self.records.items() if r.needed and r.status != "succeeded"]
