"""What a port mapper reports: the mapping the gateway granted, and what the probe found."""

from __future__ import annotations

from dataclasses import dataclass, field

from punchthrough.netio import Address
from punchthrough.portmap.errors import NAT_PMP, PCP, UPNP


@dataclass(frozen=True, slots=True)
class PortMapping:
    """A mapping the gateway granted: ``external`` reaches ``internal_port`` on this host."""

    protocol: str
    external: Address
    lifetime: int
    #: The external address is private or CGNAT: another NAT lies beyond; useless to offer.
    double_nat: bool = False

    def external_text(self) -> str:
        return f"{self.external[0]}:{self.external[1]}"


@dataclass(slots=True)
class ProbeReport:
    """Which protocols the gateway answered, and what each told us."""

    nat_pmp: bool = False
    pcp: bool = False
    upnp: bool = False
    external_ip: str | None = None  # from NAT-PMP or UPnP (PCP ANNOUNCE carries none)
    errors: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0

    def answered(self) -> list[str]:
        return [p for p, ok in ((PCP, self.pcp), (NAT_PMP, self.nat_pmp), (UPNP, self.upnp)) if ok]

    def to_json(self) -> dict[str, bool]:
        return {"nat_pmp": self.nat_pmp, "pcp": self.pcp, "upnp": self.upnp}
