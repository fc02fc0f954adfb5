"""What a simulated NAT box does: every RFC 4787 knob, and the lab's profiles by name.

Defaults mirror Linux conntrack (what the kernel lab runs): a binding lives 30 s until the first
reply and 120 s after that (``nf_conntrack_udp_timeout`` / ``_stream``), and traffic in either
direction refreshes it. The table that enforces these is :class:`punchthrough.sim.nat.NatTable`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final, Literal

MappingBehaviour = Literal["eim", "adm", "apdm"]
FilteringBehaviour = Literal["eif", "adf", "apdf"]
#: ``hash`` = the lab's ADM recipe: port = hash(internal ip, internal port, remote ip) over a range.
AllocationPolicy = Literal["preserve", "sequential", "random", "hash"]

MAPPINGS: Final[tuple[MappingBehaviour, ...]] = ("eim", "adm", "apdm")
FILTERINGS: Final[tuple[FilteringBehaviour, ...]] = ("eif", "adf", "apdf")
ALLOCATIONS: Final[tuple[AllocationPolicy, ...]] = ("preserve", "sequential", "random", "hash")

#: Linux ``nf_conntrack_udp_timeout``: an unreplied UDP flow lives 30 s.
LINUX_UDP_UNREPLIED_TIMEOUT: Final = 30.0
#: Linux ``nf_conntrack_udp_timeout_stream``: a replied UDP flow lives 120 s.
LINUX_UDP_REPLIED_TIMEOUT: Final = 120.0
#: Linux's ephemeral port range (``ip_local_port_range``): where background hosts' flows start.
LINUX_EPHEMERAL_RANGE: Final = (32768, 60999)
#: RFC 6886 section 3.3 / RFC 6887 section 15: cap on port-mapping lifetimes (2 hours recommended).
MAX_PORTMAP_LIFETIME: Final = 7200


@dataclass(frozen=True, slots=True)
class NatConfig:
    """Every RFC 4787 knob of a simulated NAT. Profiles in :data:`PROFILES` fill these in."""

    mapping: MappingBehaviour = "eim"
    filtering: FilteringBehaviour = "apdf"
    allocation: AllocationPolicy = "preserve"
    #: Sequential allocation: step between consecutive new mappings (any sign, not 0).
    delta: int = 1
    #: Inclusive range external ports are allocated from.
    port_range: tuple[int, int] = (1024, 65535)
    #: Sequential allocation: first port handed out; ``None`` = a seeded random port in range.
    sequential_start: int | None = None
    #: Lifetime of a binding once traffic has come back (seconds).
    binding_lifetime: float = LINUX_UDP_REPLIED_TIMEOUT
    #: Lifetime of a binding that has only seen outbound traffic (seconds).
    unreplied_lifetime: float = LINUX_UDP_UNREPLIED_TIMEOUT
    #: Whether inbound packets refresh the binding (RFC 4787 REQ-6 makes this optional).
    inbound_refreshes: bool = True
    hairpinning: bool = False
    #: Background flows per second opened by other (invisible) hosts behind this NAT.
    churn: float = 0.0
    #: Maximum simultaneous bindings (background ones included); ``None`` = unlimited.
    session_limit: int | None = None
    #: New mappings per second allowed per internal host (token bucket); ``None`` = unlimited.
    mapping_rate_limit: float | None = None
    #: Token-bucket depth for ``mapping_rate_limit``.
    mapping_burst: int = 10
    natpmp: bool = False
    pcp: bool = False
    udp_blocked: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.port_range
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"bad port_range {self.port_range}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}")
        if self.filtering not in FILTERINGS:
            raise ValueError(f"filtering must be one of {FILTERINGS}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}")
        if self.delta == 0 or (abs(self.delta) >= hi - lo + 1 and hi > lo):
            raise ValueError(f"delta {self.delta} must be nonzero and smaller than the range")
        if self.sequential_start is not None and not lo <= self.sequential_start <= hi:
            raise ValueError("sequential_start outside port_range")
        if self.binding_lifetime <= 0 or self.unreplied_lifetime <= 0:
            raise ValueError("lifetimes must be positive")
        if self.churn < 0:
            raise ValueError("churn must be >= 0")
        if self.session_limit is not None and self.session_limit < 1:
            raise ValueError("session_limit must be >= 1")
        if self.mapping_rate_limit is not None and self.mapping_rate_limit <= 0:
            raise ValueError("mapping_rate_limit must be > 0")


#: The lab's profiles (``/work/shared/natlab``), by name. ``open`` means no NAT at all.
PROFILES: Final[dict[str, NatConfig | None]] = {
    "open": None,
    # nft eim-eif.nft: masquerade (port-preserving) + a full-cone dnat map.
    "eim-eif": NatConfig("eim", "eif", "preserve"),
    "eim-adf": NatConfig("eim", "adf", "preserve"),
    # Plain Linux masquerade: EIM, APDF, keeps the source port when it can.
    "eim-apdf": NatConfig("eim", "apdf", "preserve"),
    # gen-adm.sh: port = jhash(saddr . sport . daddr) mod 4096 + 20000.
    "adm": NatConfig("adm", "apdf", "hash", port_range=(20000, 24095)),
    # gen-apdm-sequential.sh: numgen inc over 40000..40999, one counter for every new flow.
    "apdm-sequential": NatConfig("apdm", "apdf", "sequential", port_range=(40000, 40999)),
    # masquerade fully-random.
    "apdm-random": NatConfig("apdm", "apdf", "random"),
    "udp-blocked": NatConfig(udp_blocked=True),
}


def profile(name: str, **overrides: Any) -> NatConfig | None:
    """The named profile with free parameters applied (``open`` takes none)."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown NAT profile {name!r}; known: {', '.join(PROFILES)}") from None
    if base is None:
        if overrides:
            raise ValueError("profile 'open' has no NAT to configure")
        return None
    return replace(base, **overrides)


def nat_config(name: str, **overrides: Any) -> NatConfig:
    """Like :func:`profile` for profiles that have a NAT (``open`` raises ``ValueError``)."""
    config = profile(name, **overrides)
    if config is None:
        raise ValueError(f"profile {name!r} has no NAT")
    return config
