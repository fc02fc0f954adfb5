"""A NAT binding with its per-remote permissions, and the verdicts on each packet.

:class:`~punchthrough.sim.nat.NatTable` holds the bindings and answers with the verdicts
(translated, admitted, or dropped with a reason). They are plain data, apart from the table, so
the world adapter and the port-mapping responder read them without reaching into it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from punchthrough.netio import Address
from punchthrough.sim.nat_config import FilteringBehaviour


@dataclass(slots=True)
class Permission:
    """One remote endpoint this binding has talked to (a conntrack entry, in Linux terms)."""

    expires: float
    replied: bool = False


@dataclass(slots=True)
class Binding:
    internal: Address
    external_port: int
    key: tuple[Any, ...]
    created: float
    expires: float
    remotes: dict[Address, Permission] = field(default_factory=dict)
    #: Set for NAT-PMP/PCP mappings: endpoint-independent, admits anyone until this time.
    static_until: float | None = None
    nonce: bytes | None = None
    background: bool = False

    def alive(self, now: float) -> bool:
        return self.expires > now

    def admits(self, remote: Address, filtering: FilteringBehaviour, now: float) -> bool:
        if self.static_until is not None and self.static_until > now:
            return True
        if filtering == "eif":
            return True
        if filtering == "apdf":
            perm = self.remotes.get(remote)
            return perm is not None and perm.expires > now
        return any(r[0] == remote[0] and p.expires > now for r, p in self.remotes.items())


@dataclass(frozen=True, slots=True)
class Translated:
    """Outbound result: the packet leaves with source ``external``."""

    external: Address
    new: bool
    binding: Binding


@dataclass(frozen=True, slots=True)
class Admitted:
    """Inbound result: the packet is forwarded to ``internal``."""

    internal: Address
    binding: Binding


class DropKind(enum.Enum):
    """Why a NAT refused, for code (a PCP responder answers NOT_AUTHORIZED or NO_RESOURCES)."""

    FILTERED = "filtered"
    NOT_AUTHORIZED = "not-authorized"
    NO_RESOURCES = "no-resources"


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str
    kind: DropKind = DropKind.FILTERED


#: Called with (virtual time, event kind, detail) for trace output (churn, expiry, mappings).
NatObserver = Callable[[float, str, str], None]
