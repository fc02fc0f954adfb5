"""Which NAT profiles a matrix backend knows, and which it runs by default.

Both backends use the lab's profile names (the simulator models exactly the lab's rulesets).
The default matrix leaves out profiles that cannot carry UDP at all (``udp-blocked``): no path,
relayed or direct, exists there, so its cells would only measure a failure to connect.
"""

from __future__ import annotations

from typing import Final, Literal

from punchthrough.lab.profiles import PROFILES as LAB_PROFILES
from punchthrough.sim.nat import PROFILES as SIM_PROFILES

Backend = Literal["sim", "lab"]
BACKENDS: Final[tuple[Backend, ...]] = ("sim", "lab")


def known_profiles(backend: Backend) -> list[str]:
    """Every profile the backend can build, in the lab's order."""
    if backend == "sim":
        return list(SIM_PROFILES)
    return list(LAB_PROFILES)


def default_profiles(backend: Backend) -> list[str]:
    """The UDP-capable profiles: the rows and columns of the default matrix."""
    if backend == "sim":
        return [name for name, cfg in SIM_PROFILES.items() if cfg is None or not cfg.udp_blocked]
    return [name for name, prof in LAB_PROFILES.items() if prof.udp]


#: ``--ipv6``: which peers also have IPv6 (a global address behind an RFC 6092 stateful
#: firewall on the same home router as their IPv4 NAT): ``none`` is the IPv4 matrix.
Ipv6Mode = Literal["none", "both", "a", "b"]
IPV6_MODES: Final[tuple[Ipv6Mode, ...]] = ("none", "both", "a", "b")


def stacks_for(mode: str) -> tuple[Literal["ipv4", "dual"], Literal["ipv4", "dual"]]:
    """(caller's, callee's) IP stack for an ``--ipv6`` mode; ``ValueError`` on another mode."""
    if mode not in IPV6_MODES:
        raise ValueError(f"--ipv6 must be one of {', '.join(IPV6_MODES)}, not {mode!r}")
    return (
        "dual" if mode in ("both", "a") else "ipv4",
        "dual" if mode in ("both", "b") else "ipv4",
    )
