"""How the race sees each side's NAT: the summary, corrected by what the call itself showed.

A reported summary is a starting point. During the call two facts can overrule it: checks from
the peer that arrive from ports it never announced (it maps endpoint-dependently, whatever the
report said), and a port mapping that was offered but failed (that side is its NAT without it).
A peer that has not reported yet is all "unknown" (the planner then chooses nothing that
depends on it).
"""

from __future__ import annotations

from dataclasses import replace

from punchthrough.nat.summary import APD, NatSummary


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
