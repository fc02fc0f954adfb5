"""Kernel NAT lab: network namespaces, nftables NAT routers, coturn, miniupnpd (needs root).

with Lab(["eim-apdf", "apdm-random"]) as lab:
    lab.host("eim-apdf").run(["python", "-m", "punchthrough", "netcheck", ...])
"""

from punchthrough.lab.addresses import Address
from punchthrough.lab.delay import router_delay_for_rtt
from punchthrough.lab.host import Host, HostSpec
from punchthrough.lab.namespaces import STATE_DIR
from punchthrough.lab.natdiscovery import NatDiscoveryResult, parse_natdiscovery, run_natdiscovery
from punchthrough.lab.netcheck import netcheck_all, netcheck_argv
from punchthrough.lab.proc import LabError, LabProcess
from punchthrough.lab.profiles import PROFILE_NAMES, PROFILES, NatProfile, get_profile
from punchthrough.lab.rules import RouterOptions, nat_ruleset
from punchthrough.lab.topology import Lab

__all__ = [
    "PROFILES",
    "PROFILE_NAMES",
    "STATE_DIR",
    "Address",
    "Host",
    "HostSpec",
    "Lab",
    "LabError",
    "LabProcess",
    "NatDiscoveryResult",
    "NatProfile",
    "RouterOptions",
    "get_profile",
    "nat_ruleset",
    "netcheck_all",
    "netcheck_argv",
    "parse_natdiscovery",
    "router_delay_for_rtt",
    "run_natdiscovery",
]
