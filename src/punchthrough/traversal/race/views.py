"""How the race sees each side's NAT: the summary, corrected by what the call itself showed.

A reported summary is a starting point. During the call two facts can overrule it: checks from
the peer that arrive from ports it never announced (it maps endpoint-dependently, whatever the
report said), and a port mapping that was offered but failed (that side is its NAT without it).
A peer that has not reported yet is all "unknown" (the planner then chooses nothing that
depends on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from punchthrough.nat.summary import APD, NatSummary
from punchthrough.netio import Address
from punchthrough.traversal.hardnat.plan import StagePlan
from punchthrough.traversal.race.records import HARD, Stage
from punchthrough.traversal.reasons import Why


def local_view(summary: NatSummary, *, mapping_failed: bool) -> NatSummary:
    """Our NAT as the planner should take it (``mapping_failed``: our port mapping failed)."""
    return summary.without_port_mapping() if mapping_failed else summary


def remote_view(
    reported: NatSummary | None, *, dependent: bool, port_mapping: bool, mapping_failed: bool
) -> NatSummary:
    """The peer's NAT: its report (None: not yet), corrected by ``dependent`` (its checks came
    from unannounced ports) and ``port_mapping`` (it announced a mapped candidate)."""
    r = reported or NatSummary(udp=True)
    if dependent and r.mapping == "unknown":
        r = replace(r, mapping=APD)
    if port_mapping and not r.port_mapping:
        r = replace(r, port_mapping=("pcp",))
    return r.without_port_mapping() if mapping_failed else r


def public_endpoint(srflx: set[Address]) -> Address | None:
    """The peer's server-reflexive endpoint, IPv4 when any (hard stages: the IPv4 NAT)."""
    v4 = sorted(a for a in srflx if ":" not in a[0]) or sorted(srflx)
    return v4[0] if v4 else None


def failure_note(p: Mapping[Stage, StagePlan], local: NatSummary, remote: NatSummary) -> str:
    """What a failed round's reason adds: the stages the pair needs, why it stays on the relay,
    or which knowledge is missing (the round's report, for people)."""
    needed = [s for s in HARD if p[s].needed]
    if needed:
        return f"; needed: {' / '.join(needed)}"
    if p[Stage.RELAY].code is Why.STAYS_ON_RELAY:
        return "; " + p[Stage.BIRTHDAY].reason
    if local.mapping == "unknown" or remote.mapping == "unknown":
        return "; NAT mapping unknown on a side (give STUN servers to learn it)"
    return ""
