"""NAT classification: what one socket's probes observed in, :class:`NatSummary` out.

One classifier for netcheck (:func:`punchthrough.nat.netcheck.run_netcheck`) and for an
endpoint's candidate gathering, so that both describe a NAT by the same rules and nobody turns
observations into netcheck JSON only to parse them back. Pure: no I/O (the probes are in
:mod:`.netcheck`, :mod:`.probe` and :mod:`.filtering`).

The two callers hold different evidence and want different things, so the mapping and
allocation rules take a :class:`Purpose`:

- ``REPORT`` (netcheck): say only what the samples prove. Its samples include an RFC 5780
  server's alternate endpoints, so the mapping is what RFC 5780 section 4.3's tests show
  (:func:`~punchthrough.nat.behavior.mapping_behavior`, ``unknown`` when they cannot tell), and
  the allocation of every NAT is classified (``port-preserving`` included).
- ``PLAN`` (candidate gathering): what the stage planner should assume. The samples are one
  Binding to each known server (relays, STUN servers), rarely an RFC 5780 pair: two servers
  seeing different mappings prove an endpoint-dependent mapping but cannot tell address from
  address-and-port dependence, so the planner gets the stricter address-and-port-dependent. The
  allocation only matters for such a mapping, and only the kinds a hard-NAT stage acts on
  (sequential: port prediction; random: birthday) are kept.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from punchthrough.nat.allocation import (
    DEFAULT_PORT_RANGE,
    AllocationResult,
    PortAllocation,
    classify_port_allocation,
)
from punchthrough.nat.behavior import Behavior, Sample, mapping_behavior
from punchthrough.nat.summary import NatSummary
from punchthrough.signal.messages import PortMappingProtocol

#: The allocation kinds the hard-NAT stages act on (a plan keeps no other).
PLANNED_ALLOCATIONS: Final = frozenset({PortAllocation.SEQUENTIAL, PortAllocation.RANDOM})


class Purpose(enum.Enum):
    """Who the classification is for (module docstring)."""

    REPORT = "report"
    PLAN = "plan"


@dataclass(frozen=True, slots=True)
class NatObservations:
    """What one socket's probes saw."""

    #: Binding exchanges in the order the NAT made the mappings (the order the requests left).
    samples: Sequence[Sample]
    #: UDP gets through (False: servers were asked and none answered).
    udp: bool
    #: The RFC 5780 filtering verdict (UNKNOWN: not run, or no RFC 5780 server).
    filtering: Behavior = Behavior.UNKNOWN
    #: Port-mapping protocols the gateway offers that a peer may count on (none behind a
    #: double NAT).
    port_mapping: tuple[PortMappingProtocol, ...] = ()
    #: The sampling socket's local port, to judge port preservation (None: do not judge).
    local_port: int | None = None
    #: The range the NAT is believed to allocate from (matters for wrap-around only).
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE


def classify_mapping(samples: Sequence[Sample], purpose: Purpose) -> Behavior:
    """The mapping behaviour the samples show, by ``purpose``'s rule (module docstring)."""
    if purpose is Purpose.REPORT:
        return mapping_behavior(samples)
    if len(samples) < 2:
        return Behavior.UNKNOWN
    if len({s.mapped for s in samples}) == 1:
        return Behavior.ENDPOINT_INDEPENDENT
    return Behavior.ADDRESS_AND_PORT_DEPENDENT


def classify_allocation(
    samples: Sequence[Sample],
    mapping: Behavior,
    purpose: Purpose,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
) -> AllocationResult:
    """How the NAT picks ports, by ``purpose``'s rule (module docstring)."""
    verdict = classify_port_allocation([s.mapped[1] for s in samples], port_range)
    if purpose is Purpose.REPORT:
        return verdict
    dependent = mapping in (Behavior.ADDRESS_DEPENDENT, Behavior.ADDRESS_AND_PORT_DEPENDENT)
    if dependent and verdict.kind in PLANNED_ALLOCATIONS:
        return verdict
    return AllocationResult(PortAllocation.UNKNOWN, None, 0.0, verdict.port_range, verdict.ports)


def classify_nat(obs: NatObservations, purpose: Purpose) -> NatSummary:
    """The NAT as the stage planner sees it, from ``obs``.

    Without UDP nothing is known about the NAT's behaviour; what was observed (ports, public
    address) is still passed on.
    """
    samples = obs.samples
    ports = tuple(s.mapped[1] for s in samples)
    port_range = (min(ports), max(ports)) if ports else None
    public_ip = samples[0].mapped[0] if samples else None
    preserves = (
        samples[0].mapped[1] == obs.local_port if samples and obs.local_port is not None else None
    )
    if not obs.udp:
        return NatSummary(
            udp=False,
            port_range=port_range,
            ports=ports,
            public_ip=public_ip,
            preserves_port=preserves,
        )
    mapping = classify_mapping(samples, purpose)
    allocation = classify_allocation(samples, mapping, purpose, obs.port_range)
    sequential = allocation.kind is PortAllocation.SEQUENTIAL
    return NatSummary(
        udp=True,
        mapping=mapping.value,
        filtering=obs.filtering.value,
        allocation=allocation.kind.value,
        delta=allocation.delta if sequential else None,
        port_range=port_range,
        ports=ports,
        public_ip=public_ip,
        port_mapping=obs.port_mapping,
        preserves_port=preserves,
    )
