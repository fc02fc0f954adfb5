"""What the endpoint knows about its own reachability: shared by all its connections' agents
(:class:`LocalCandidates`), and as the race reads it (:class:`LocalView`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from punchthrough.nat.summary import NatSummary
from punchthrough.netio import Address
from punchthrough.signal import Candidate

#: What one side knows about its own NAT's mapping, from the addresses servers at different
#: IPs observed for its main socket: ``independent`` (all the same), ``dependent`` (they
#: differ: an address- or address-and-port-dependent NAT), ``unknown`` (fewer than two).
MappingHint = Literal["independent", "dependent", "unknown"]


@dataclass
class LocalCandidates:
    """What the endpoint knows about its own reachability (shared by its connections)."""

    generation: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    mapping: MappingHint = "unknown"
    #: Port allocation seen across the samples when the mapping is endpoint-dependent:
    #: "sequential" (with ``delta``), "random" or "unknown".
    allocation: str = "unknown"
    delta: int | None = None
    mapped: Address | None = None
    mapped_protocol: str | None = None
    public_ip: str | None = None
    #: Why there is no mapped candidate (for the report): "no gateway configured", ...
    port_mapping_note: str = "no port-mapping gateway configured"
    #: Our NAT as the stage planner sees it (sent to the peer as ``NatReportSummary``).
    summary: NatSummary = field(default_factory=lambda: NatSummary(udp=True))
    #: A summary can be sent (first flights carry it): True from the first gather on. While
    #: the filtering test runs it is the mapping half (filtering "unknown").
    summary_ready: bool = True
    #: False while the endpoint's filtering test still runs: the summary sent so far is the
    #: mapping half, and the final one is sent to every agent's peer when the test ends.
    summary_final: bool = True


@dataclass
class LocalView:
    """What the endpoint knows of its own side (the executor keeps it current)."""

    summary: NatSummary = field(default_factory=lambda: NatSummary(udp=True))
    #: Our port-mapped endpoint, if the gateway gave one.
    mapped: Address | None = None
    #: Why there is no mapped candidate (for the report).
    port_mapping_note: str = "no port-mapping gateway configured"
    #: STUN servers a hard stage may take fresh samples from.
    sample_servers: tuple[Address, ...] = ()
