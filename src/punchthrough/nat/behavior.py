"""RFC 5780 mapping and filtering verdicts, computed from observations (pure, no I/O).

The probes themselves live in :mod:`punchthrough.nat.netcheck`; keeping the verdicts here lets
them be tested exhaustively without a network.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from punchthrough.netio import Address


class Behavior(enum.Enum):
    """RFC 4787 mapping or filtering behaviour (RFC 5780 section 4.3 / 4.4 vocabulary)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Sample:
    """One Binding exchange from the sampling socket: where it went and what the server saw."""

    destination: Address
    mapped: Address


def mapping_behavior(samples: Sequence[Sample]) -> Behavior:
    """Mapping behaviour from samples sent from ONE local socket.

    Generalises RFC 5780 section 4.3 tests I-III: two destinations on the same IP but different
    ports tell port dependence; two destinations on different IPs tell address dependence. With
    an RFC 5780 server, (A,P), (B,P) and (B,P') are always among the samples.
    """
    if len(samples) < 2:
        return Behavior.UNKNOWN
    same_ip_pairs: list[bool] = []
    diff_ip_pairs: list[bool] = []
    for i, a in enumerate(samples):
        for b in samples[i + 1 :]:
            if a.destination == b.destination:
                continue
            equal = a.mapped == b.mapped
            if a.destination[0] == b.destination[0]:
                same_ip_pairs.append(equal)
            else:
                diff_ip_pairs.append(equal)
    if same_ip_pairs and not all(same_ip_pairs):
        return Behavior.ADDRESS_AND_PORT_DEPENDENT
    if diff_ip_pairs and not all(diff_ip_pairs):
        # Same-IP pairs agreeing (or absent) while different IPs differ.
        return Behavior.ADDRESS_DEPENDENT if same_ip_pairs else Behavior.UNKNOWN
    if diff_ip_pairs and all(diff_ip_pairs):
        return Behavior.ENDPOINT_INDEPENDENT
    return Behavior.UNKNOWN


def filtering_behavior(
    change_ip_and_port_answered: bool | None, change_port_answered: bool | None
) -> Behavior:
    """Filtering behaviour from RFC 5780 section 4.4 tests II and III.

    ``None`` means the test could not be run (no RFC 5780 server).
    """
    if change_ip_and_port_answered is None:
        return Behavior.UNKNOWN
    if change_ip_and_port_answered:
        return Behavior.ENDPOINT_INDEPENDENT
    if change_port_answered is None:
        return Behavior.UNKNOWN
    if change_port_answered:
        return Behavior.ADDRESS_DEPENDENT
    return Behavior.ADDRESS_AND_PORT_DEPENDENT
