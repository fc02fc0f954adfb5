"""NAT behaviour: port-allocation classification, prediction, RFC 5780 tests, netcheck."""

from punchthrough.nat.allocation import (
    DEFAULT_PORT_RANGE,
    AllocationResult,
    PortAllocation,
    classify_port_allocation,
    predict_ports,
)
from punchthrough.nat.behavior import Behavior, Sample, filtering_behavior, mapping_behavior
from punchthrough.nat.netcheck import NetcheckError, NetcheckReport, run_netcheck
from punchthrough.nat.probe import detect_port_allocation, sample_mappings

__all__ = [
    "DEFAULT_PORT_RANGE",
    "AllocationResult",
    "Behavior",
    "NetcheckError",
    "NetcheckReport",
    "PortAllocation",
    "Sample",
    "classify_port_allocation",
    "detect_port_allocation",
    "filtering_behavior",
    "mapping_behavior",
    "predict_ports",
    "run_netcheck",
    "sample_mappings",
]
