"""The waterfall's bookkeeping and stage choice, sans-IO (the skeleton ``race()`` extends).

Stages, in the design's order: ``port-mapping``, ``hole-punch``, ``port-prediction``,
``birthday``, ``relay``. Each has one record: ``pending`` -> ``started`` -> ``succeeded`` /
``failed`` (why), or ``skipped`` (why) / ``not-implemented`` (why, and whether it would have
been needed). The relay stage succeeds as soon as the relayed connection is usable.

:func:`plan` decides from what both sides know about their NATs which stages can work, so an
impossible stage is skipped instead of waited out. Issue 5 runs port mapping and the hole punch
(both are candidate pairs of one check round); issue 6 plugs port prediction and the birthday
attack in as further stages that add pairs (predicted ports) and bases (extra sockets) to the same
check engine, chosen by the same function.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

STAGES: Final = ("port-mapping", "hole-punch", "port-prediction", "birthday", "relay")
#: Stages issue 5 does not implement yet.
NOT_IMPLEMENTED: Final = frozenset({"port-prediction", "birthday"})

#: What one side knows about its own NAT's mapping, from the addresses servers at different
#: IPs observed for its main socket: ``independent`` (all the same), ``dependent`` (they
#: differ: an address- or address-and-port-dependent NAT), ``unknown`` (fewer than two).
MappingHint = Literal["independent", "dependent", "unknown"]
#: From netcheck when available (issue 6): "port-preserving", "sequential", "random", "unknown".
AllocationHint = str


@dataclass
class StageRecord:
    stage: str
    status: str = "pending"  # pending, started, succeeded, failed, skipped, not-implemented
    reason: str = ""
    started_at: float | None = None
    at: float | None = None  # loop time of the outcome
    pair: str | None = None
    needed: bool = False


@dataclass(frozen=True, slots=True)
class NatHints:
    """One side's NAT as far as the waterfall cares."""

    mapping: MappingHint = "unknown"
    allocation: AllocationHint = "unknown"
    port_mapping: bool = False  # offers a port-mapped candidate


@dataclass(frozen=True, slots=True)
class Plan:
    """Which stages to run; for the others, why not. ``needed`` names hard-NAT stages that the
    pair requires when the hole punch cannot work."""

    run: tuple[str, ...]
    skip: dict[str, str]
    needed: tuple[str, ...] = ()


def hard_stage_for(side: NatHints) -> str:
    """The hard-NAT stage a side with endpoint-dependent mapping calls for."""
    if side.allocation == "sequential":
        return "port-prediction"
    if side.allocation == "random":
        return "birthday"
    return "port-prediction or birthday"


def plan(local: NatHints, remote: NatHints) -> Plan:
    """Stage choice from both sides' hints (the design's pair matrix).

    The hole punch is always worth a round: it costs a few packets, and with unknown hints it is
    the only way to learn. Hard-NAT stages are called for when a side maps endpoint-dependently
    (its checks reach the peer from a port nobody announced) and no port mapping covers it.
    """
    run = ["hole-punch"]
    skip: dict[str, str] = {}
    if local.port_mapping or remote.port_mapping:
        run.insert(0, "port-mapping")
    else:
        skip["port-mapping"] = "no port-mapping gateway on either side"
    needed: list[str] = []
    hard = [h for h in (local, remote) if h.mapping == "dependent" and not h.port_mapping]
    if len(hard) == 1:
        needed.append(hard_stage_for(hard[0]))
    elif len(hard) == 2:
        if all(h.allocation == "random" for h in hard):
            why = (
                "both NATs map endpoint-dependently with random ports: neither prediction nor "
                "the birthday attack can work (P ~ n*m/N^2); the call stays on the relay"
            )
            skip["port-prediction"] = skip["birthday"] = why
        else:
            needed.append("port-prediction")
            skip["birthday"] = (
                "both NATs map endpoint-dependently: the birthday attack needs an "
                "endpoint-independent peer"
            )
    for stage in ("port-prediction", "birthday"):
        if stage not in skip:
            if any(stage in n for n in needed):
                skip[stage] = "needed: a NAT maps endpoint-dependently; not implemented yet"
            else:
                skip[stage] = "not needed by these NATs"
    return Plan(tuple(run), skip, tuple(needed))


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
        if rec.status in ("pending", "skipped", "not-implemented"):
            status = "not-implemented" if stage in NOT_IMPLEMENTED else "skipped"
            rec.status, rec.reason, rec.needed = status, reason, needed

    def apply(self, p: Plan) -> None:
        """Record a plan's skips (stages that run are recorded when they start)."""
        for stage, reason in p.skip.items():
            needed = any(stage in n for n in p.needed)
            self.skip(stage, reason, needed=needed)

    @property
    def needed(self) -> list[str]:
        return [s for s, r in self.records.items() if r.needed and r.status != "succeeded"]
