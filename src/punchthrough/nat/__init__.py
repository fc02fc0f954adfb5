"""NAT behaviour: port-allocation classification, prediction, RFC 5780 tests, netcheck, and the
classifier that turns what was observed into the planner's :class:`NatSummary`."""

from punchthrough.nat.allocation import (
    DEFAULT_PORT_RANGE,
    AllocationResult,
    PortAllocation,
    classify_port_allocation,
    predict_ports,
)
from punchthrough.nat.behavior import Behavior, Sample, filtering_behavior, mapping_behavior
from punchthrough.nat.classify import NatObservations, Purpose, classify_nat
from punchthrough.nat.filtering import filter_wait, filtering_probes, filtering_test
from punchthrough.nat.netcheck import NetcheckError, NetcheckReport, run_netcheck
from punchthrough.nat.probe import PROBE_RTO, detect_port_allocation, sample_mappings
from punchthrough.nat.summary import NatSummary, SummaryError

__all__ = [
    "DEFAULT_PORT_RANGE",
    "PROBE_RTO",
    "AllocationResult",
    "Behavior",
    "NatObservations",
    "NatSummary",
    "NetcheckError",
    "NetcheckReport",
    "PortAllocation",
    "Purpose",
    "Sample",
    "SummaryError",
    "classify_nat",
    "classify_port_allocation",
    "detect_port_allocation",
    "filter_wait",
    "filtering_behavior",
    "filtering_probes",
    "filtering_test",
    "mapping_behavior",
    "predict_ports",
    "run_netcheck",
    "sample_mappings",
]
