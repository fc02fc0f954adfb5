"""One side's NAT as the stage planner sees it: :class:`NatSummary`.

It lives in ``nat`` (below ``traversal``) because it is what NAT classification produces:
:func:`punchthrough.nat.classify.classify` builds it from what netcheck or an endpoint's
candidate gathering observed. Two converters read it from outside: a peer's
``NatReportSummary`` (the control stream) and netcheck JSON (``--json`` output read back from a
file). All three produce the same :class:`NatSummary`, so the planner never cares where a report
came from. Hostile or malformed input raises :class:`SummaryError` and nothing else.

Port range. netcheck reports the *observed* range of its samples (min..max). Two uses differ:

- the **scan range** of the birthday attack should be the observed range itself: the hard NAT's
  ports are uniform over its true range R, and probing m ports inside any sub-range S of R hits
  with the same probability n*m/|R| as probing all of R (P(port in S) = |S|/|R|, then m/|S|),
  while probing outside R wastes probes. The observed range is always inside R.
- the **size N** in the success formula is |R|, estimated from k samples by the unbiased
  "German tank" estimator (max - min) * (k + 1) / (k - 1), capped to the port space.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, cast, get_args

from punchthrough.nat.allocation import DEFAULT_PORT_RANGE
from punchthrough.signal.messages import (
    AllocationKind,
    Behavior,
    NatReportSummary,
    PortMappingProtocol,
)

#: Port-mapping protocols in netcheck JSON (``port_mapping`` keys) -> signal names.
_PORTMAP_KEYS: Final[dict[str, PortMappingProtocol]] = {
    "nat_pmp": "nat-pmp",
    "pcp": "pcp",
    "upnp": "upnp",
}
_BEHAVIORS: Final = frozenset(get_args(Behavior))
_ALLOCATIONS: Final = frozenset(get_args(AllocationKind))
EI: Final = "endpoint-independent"
AD: Final = "address-dependent"
APD: Final = "address-and-port-dependent"


class SummaryError(ValueError):
    """A NAT report cannot be read (malformed JSON shape or values)."""


@dataclass(frozen=True, slots=True)
class NatSummary:
    """What the waterfall needs to know about one side's NAT."""

    udp: bool
    mapping: Behavior = "unknown"
    filtering: Behavior = "unknown"
    allocation: AllocationKind = "unknown"
    delta: int | None = None
    #: Observed allocation range (min..max of the samples), or None.
    port_range: tuple[int, int] | None = None
    #: Samples in allocation order when known (netcheck JSON); a peer's summary has none.
    ports: tuple[int, ...] = ()
    public_ip: str | None = None
    #: Usable port-mapping protocols (NAT-PMP / PCP / UPnP answered, not behind a double NAT).
    port_mapping: tuple[PortMappingProtocol, ...] = ()
    preserves_port: bool | None = None

    # -- derived facts -------------------------------------------------------------------------
    @property
    def endpoint_independent(self) -> bool:
        """Mapping (or an explicit port mapping) gives every peer the same external endpoint."""
        return self.mapping == EI or bool(self.port_mapping)

    @property
    def dependent(self) -> bool:
        """Known to map endpoint-dependently (and no port mapping to get around it)."""
        return self.mapping in (AD, APD) and not self.port_mapping

    @property
    def effective_filtering(self) -> Behavior:
        """A port mapping admits anyone (RFC 6886 section 3.3, RFC 6887 section 11)."""
        return EI if self.port_mapping else self.filtering

    def without_port_mapping(self) -> NatSummary:
        """The same NAT if its port mapping failed: re-plan with this after a failed mapping."""
        return replace(self, port_mapping=())

    def range_size(self) -> int:
        """Estimated size N of the NAT's allocation range (module docstring).

        Only random samples spread over the range; sequential or preserved ports say nothing
        about its size, so those get the default range.
        """
        if self.allocation != "random":
            return estimate_range_size(None, None)
        return estimate_range_size(self.port_range, len(set(self.ports)) or None)

    def to_signal(self) -> NatReportSummary:
        """The control-stream message for this summary (observed range, not the estimate)."""
        delta = self.delta if self.allocation == "sequential" else None
        return NatReportSummary(
            udp=self.udp,
            mapping=self.mapping,
            filtering=self.filtering,
            allocation=self.allocation,
            delta=delta,
            port_range=self.port_range,
            public_ip=self.public_ip,
            preserves_port=self.preserves_port,
            port_mapping=self.port_mapping,
        )

    # -- converters ----------------------------------------------------------------------------
    @classmethod
    def from_signal(cls, msg: NatReportSummary) -> NatSummary:
        """A peer's summary (already validated by the signal codec)."""
        delta = msg.delta if msg.allocation == "sequential" else None
        return cls(
            udp=msg.udp,
            mapping=msg.mapping,
            filtering=msg.filtering,
            allocation=msg.allocation,
            delta=delta,
            port_range=msg.port_range,
            public_ip=msg.public_ip,
            port_mapping=tuple(dict.fromkeys(msg.port_mapping)),
            preserves_port=msg.preserves_port,
        )

    @classmethod
    def from_netcheck_json(cls, data: Mapping[str, object]) -> NatSummary:
        """``NetcheckReport.to_json()`` (or the same dict read back from ``--json`` output)."""
        if not isinstance(data, Mapping):
            raise SummaryError("netcheck report must be a JSON object")
        udp = _bool(data.get("udp", False), "udp")
        mapping = _behavior(data.get("mapping", "unknown"), "mapping")
        filtering = _behavior(data.get("filtering", "unknown"), "filtering")
        alloc_raw = data.get("port_allocation")
        if alloc_raw is None:
            alloc_raw = {}
        if not isinstance(alloc_raw, Mapping):
            raise SummaryError("port_allocation must be an object")
        kind = alloc_raw.get("kind", "unknown")
        if kind not in _ALLOCATIONS:
            raise SummaryError(f"unknown allocation kind {kind!r}")
        allocation = cast(AllocationKind, kind)
        delta_raw = alloc_raw.get("delta")
        delta: int | None = None
        if allocation == "sequential":
            delta = _int(delta_raw, "port_allocation.delta")
            if delta == 0 or abs(delta) > 65535:
                raise SummaryError(f"sequential allocation needs a nonzero delta, got {delta}")
        ports_raw = alloc_raw.get("ports") or []
        if not isinstance(ports_raw, Sequence) or isinstance(ports_raw, str | bytes):
            raise SummaryError("port_allocation.ports must be a list")
        ports = tuple(_port(p, "port_allocation.ports[]") for p in ports_raw[:64])
        port_range = _range(alloc_raw.get("port_range"))
        if port_range is None and ports:
            port_range = (min(ports), max(ports))
        public_ip = data.get("public_ip")
        if public_ip is not None:
            if not isinstance(public_ip, str):
                raise SummaryError("public_ip must be a string")
            try:
                ipaddress.ip_address(public_ip)
            except ValueError:
                raise SummaryError(f"public_ip {public_ip!r} is not an IP address") from None
        pm_raw = data.get("port_mapping")
        if pm_raw is None:
            pm_raw = {}
        if not isinstance(pm_raw, Mapping):
            raise SummaryError("port_mapping must be an object")
        protocols = usable_protocols(pm_raw, double_nat=data.get("double_nat") is True)
        preserves = data.get("preserves_port")
        return cls(
            udp=udp,
            mapping=mapping if udp else "unknown",
            filtering=filtering if udp else "unknown",
            allocation=allocation if udp else "unknown",
            delta=delta if udp else None,
            port_range=port_range,
            ports=ports,
            public_ip=public_ip,
            port_mapping=protocols if udp else (),
            preserves_port=preserves if isinstance(preserves, bool) else None,
        )


def usable_protocols(
    answered: Mapping[str, object], *, double_nat: bool
) -> tuple[PortMappingProtocol, ...]:
    """Port-mapping protocols a peer may count on, from netcheck's ``port_mapping`` (which
    protocols answered, keyed as in its JSON): none behind a double NAT (the mapping's external
    address is private, useless to peers)."""
    if double_nat:
        return ()
    return tuple(v for k, v in _PORTMAP_KEYS.items() if answered.get(k) is True)


def estimate_range_size(port_range: tuple[int, int] | None, samples: int | None) -> int:
    """Estimated number of ports the NAT allocates from (module docstring).

    With ``samples`` distinct ports observed over ``port_range``: the German tank estimator
    (max - min) * (k + 1) / (k - 1). Without a sample count (a peer's summary) the observed span
    is widened as for the 5-6 samples netcheck takes. No range: the Linux default (1024-65535).
    """
    full = DEFAULT_PORT_RANGE[1] - DEFAULT_PORT_RANGE[0] + 1
    if port_range is None:
        return full
    lo, hi = port_range
    span = hi - lo
    if span <= 0:
        return full
    k = samples if samples is not None and samples >= 2 else NETCHECK_SAMPLES
    est = round(span * (k + 1) / (k - 1))
    return max(2, min(65535, est))


#: Distinct samples a netcheck run usually yields (default ``samples=5`` plus the RFC 5780 legs).
NETCHECK_SAMPLES: Final = 6


def _bool(v: object, name: str) -> bool:
    if not isinstance(v, bool):
        raise SummaryError(f"{name} must be a boolean")
    return v


def _behavior(v: object, name: str) -> Behavior:
    if v not in _BEHAVIORS:
        raise SummaryError(f"{name}: unknown behaviour {v!r}")
    return cast(Behavior, v)


def _int(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SummaryError(f"{name} must be an integer")
    return v


def _port(v: object, name: str) -> int:
    p = _int(v, name)
    if not 1 <= p <= 65535:
        raise SummaryError(f"{name}: {p} is not a UDP port")
    return p


def _range(v: object) -> tuple[int, int] | None:
    if v is None:
        return None
    if not isinstance(v, Sequence) or isinstance(v, str | bytes) or len(v) != 2:
        raise SummaryError("port_range must be [lo, hi]")
    lo, hi = _port(v[0], "port_range[0]"), _port(v[1], "port_range[1]")
    if lo > hi:
        raise SummaryError(f"port_range {lo}-{hi} is reversed")
    return (lo, hi)
