"""The traversal report: what was tried to reach the peer, what won, and why not direct.

Plain data for users, the CLI and the matrix runner, built from the traversal agent's
waterfall records by :func:`build_report`, the one place that reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from punchthrough.traversal.family import IPV4, IPV6
from punchthrough.traversal.pathchoice import pair_family
from punchthrough.traversal.race import DIRECT, Stage
from punchthrough.traversal.reasons import Why

if TYPE_CHECKING:
    from punchthrough.traversal.agent import TraversalAgent


@dataclass
class TraversalStage:
    """One stage of the waterfall and what became of it."""

    stage: str
    status: str  # a race.Status value: pending, started, succeeded, failed, beaten, skipped
    reason: str = ""
    at_ms: float | None = None
    pair: str | None = None
    #: When the stage started (ms from connection start), if it ran.
    started_ms: float | None = None
    #: The pair's NATs call for this stage (the hole punch alone cannot work).
    needed: bool = False
    #: Stage figures (birthday: ``sockets``, ``probes_sent``, ``range_size``, ...).
    details: dict[str, object] = field(default_factory=dict)
    #: Status ``beaten``: the stage that found a direct path first.
    beaten_by: str | None = None
    #: ``reason`` as a code (``traversal.reasons.Why``): what programs should test, not the text.
    reason_code: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"stage": self.stage, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.at_ms is not None:
            out["at_ms"] = self.at_ms
        if self.pair is not None:
            out["pair"] = self.pair
        if self.started_ms is not None:
            out["started_ms"] = self.started_ms
        if self.needed:
            out["needed"] = True
        if self.beaten_by is not None:
            out["beaten_by"] = self.beaten_by
        if self.reason_code is not None:
            out["reason_code"] = self.reason_code
        for k, v in self.details.items():
            out.setdefault(k, v)
        return out


@dataclass
class TraversalReport:
    """What was tried to reach the peer, what won, and why not direct.

    ``stages``: the relay first, then port mapping, hole punch, port prediction, birthday.
    ``direct_ms``: when the call first moved onto a direct path (ms from connection start);
    ``strategy``: the stage that found it (``port-mapping`` / ``hole-punch`` /
    ``port-prediction`` / ``birthday``), else ``None``;
    ``needed``: hard-NAT stages this pair would need (when the hole punch cannot work).
    """

    path: str
    relay: str | None
    stages: list[TraversalStage] = field(default_factory=list)
    direct_ms: float | None = None
    strategy: str | None = None
    needed: list[str] = field(default_factory=list)
    upgrades: int = 0
    fallbacks: int = 0
    #: The direct path's address family (``ipv4`` / ``ipv6``), ``None`` on the relay.
    family: str | None = None
    #: On a direct IPv6 path: what IPv4 alone would have given (``relay``: the IPv4 NATs
    #: leave no direct path; ``direct``: an IPv4 pair answered too; ``unknown``), with why.
    ipv4_alone: str | None = None
    ipv4_alone_reason: str | None = None

    def to_json(self) -> dict[str, object]:
        out = self._base_json()
        if self.family is not None:
            out["family"] = self.family
        if self.ipv4_alone is not None:
            out["ipv4_alone"] = self.ipv4_alone
            out["ipv4_alone_reason"] = self.ipv4_alone_reason
        return out

    def _base_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "relay": self.relay,
            "direct_ms": self.direct_ms,
            "strategy": self.strategy,
            "stages": [s.to_json() for s in self.stages],
            "needed": list(self.needed),
            "upgrades": self.upgrades,
            "fallbacks": self.fallbacks,
        }


#: The connection's path kind when it is on a direct path (``Connection.path``).
DIRECT_PATH: Final = "direct"
#: Waterfall stages besides the relay, in the design's order.
DIRECT_STAGES: Final = tuple(str(s) for s in DIRECT)


def build_report(
    *,
    path: str,
    relay: str | None,
    created_at: float,
    established_at: float | None,
    agent: TraversalAgent | None,
    direct_enabled: bool,
) -> TraversalReport:
    """The report of one connection (loop times become ms from ``created_at``).

    ``path``: the connection's current path kind; ``relay``: its relay path, if any;
    ``agent``: its traversal agent, ``None`` until the relayed connection is usable or when
    ``direct_enabled`` is false (no direct paths on this connection).
    """

    def ms(t: float | None) -> float | None:
        return round((t - created_at) * 1000.0, 1) if t is not None else None

    at_ms = ms(established_at)
    stages = [
        TraversalStage(
            "relay", "succeeded" if at_ms is not None else "started", at_ms=at_ms, pair=relay
        )
    ]
    if agent is None:
        why = (
            "waiting for the relayed connection"
            if direct_enabled
            else "direct paths are not enabled on this connection"
        )
        stages += [TraversalStage(s, "pending", why) for s in DIRECT_STAGES]
        return TraversalReport(path=path, relay=relay, stages=stages)
    for name in DIRECT_STAGES:
        rec = agent.race.waterfall[name]
        stages.append(
            TraversalStage(
                name,
                str(rec.status),
                rec.reason,
                at_ms=ms(rec.at),
                pair=rec.pair,
                started_ms=ms(rec.started_at),
                needed=rec.needed,
                details=dict(rec.details),
                beaten_by=None if rec.beaten_by is None else str(rec.beaten_by),
                reason_code=None if not rec.reason else str(rec.why.code),
            )
        )
    report = TraversalReport(
        path=path,
        relay=relay,
        stages=stages,
        direct_ms=ms(agent.race.waterfall.direct_at),
        strategy=None
        if agent.race.waterfall.strategy is None
        else str(agent.race.waterfall.strategy),
        needed=agent.race.waterfall.needed,
        upgrades=agent.race.upgrades,
        fallbacks=agent.race.fallbacks,
    )
    pair = agent.race.direct_pair
    if path == DIRECT_PATH and pair is not None:
        report.family = pair_family(pair)
        if report.family == IPV6:
            report.ipv4_alone, report.ipv4_alone_reason = _ipv4_alone(agent)
    return report


def _ipv4_alone(agent: TraversalAgent) -> tuple[str, str]:
    """What IPv4 alone would have given this call, when it went direct over IPv6."""
    if any(pair_family(p) == IPV4 for p in agent.engine.succeeded):
        return "direct", "an IPv4 pair answered too; IPv6 was preferred"
    plan = agent.race.plan()[Stage.RELAY]
    if plan.code is Why.STAYS_ON_RELAY:
        return "relay", f"IPv4 alone would have stayed on the relay: {plan.reason}"
    return "unknown", "no IPv4 pair answered before the IPv6 path was chosen"
