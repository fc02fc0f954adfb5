"""The lab's NAT profiles and the RFC 5780 / RFC 4787 behaviour each one must show.

One table, used by the ruleset generator, the tests (which check each profile with coturn's
independent classifier) and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Behaviour = Literal[
    "endpoint-independent", "address-dependent", "address-and-port-dependent", "unknown"
]
Allocation = Literal["port-preserving", "sequential", "random", "unknown"]

EI: Final = "endpoint-independent"
AD: Final = "address-dependent"
APD: Final = "address-and-port-dependent"
UNKNOWN: Final = "unknown"


@dataclass(frozen=True)
class NatProfile:
    """A NAT behaviour a lab router implements, with the classification a test must observe.

    `mapping` / `filtering` use RFC 4787 vocabulary (what RFC 5780 tests report); `allocation` is
    the port-allocation kind netcheck should infer. For `udp-blocked` UDP never gets through, so
    the expected classification is `unknown`.
    """

    name: str
    nat: bool
    udp: bool
    mapping: Behaviour
    filtering: Behaviour
    allocation: Allocation
    description: str

    @property
    def preserves_port(self) -> bool | None:
        """Whether the external port equals the local port (one host per router: no clashes)."""
        return self.allocation == "port-preserving" if self.udp else None


PROFILES: Final[dict[str, NatProfile]] = {
    p.name: p
    for p in (
        NatProfile(
            "open",
            False,
            True,
            EI,
            EI,
            "port-preserving",
            "no NAT, no firewall: public address 192.0.2.x routed via the router",
        ),
        NatProfile(
            "eim-eif",
            True,
            True,
            EI,
            EI,
            "port-preserving",
            "full cone: masquerade + dynamic nft map forwarding any inbound to the mapping",
        ),
        NatProfile(
            "eim-adf",
            True,
            True,
            EI,
            AD,
            "port-preserving",
            "restricted cone: inbound allowed from IPs the mapping has sent to",
        ),
        NatProfile(
            "eim-apdf",
            True,
            True,
            EI,
            APD,
            "port-preserving",
            "port-restricted cone: plain masquerade, the common home router",
        ),
        NatProfile(
            "adm",
            True,
            True,
            AD,
            APD,
            "random",
            "address-dependent mapping: port = hash(internal endpoint, remote IP)",
        ),
        NatProfile(
            "apdm-sequential",
            True,
            True,
            APD,
            APD,
            "sequential",
            "symmetric, next port from a shared counter for every new flow",
        ),
        NatProfile(
            "apdm-random",
            True,
            True,
            APD,
            APD,
            "random",
            "symmetric, random port per flow (masquerade fully-random)",
        ),
        NatProfile(
            "udp-blocked",
            True,
            False,
            UNKNOWN,
            UNKNOWN,
            "unknown",
            "masquerade, but forwarded UDP is dropped",
        ),
        NatProfile(
            "tcp443-only",
            True,
            False,
            UNKNOWN,
            UNKNOWN,
            "unknown",
            "masquerade; only TCP to port 443 leaves (an office firewall)",
        ),
        NatProfile(
            "proxy-only",
            True,
            False,
            UNKNOWN,
            UNKNOWN,
            "unknown",
            "masquerade; only TCP to the lab's HTTP proxy leaves (198.51.100.30:3128)",
        ),
    )
}

PROFILE_NAMES: Final = tuple(PROFILES)


def get_profile(name: str) -> NatProfile:
    """Look a profile up by name, with an error listing the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown NAT profile {name!r}; choose from {', '.join(PROFILE_NAMES)}"
        ) from None
