"""A deterministic in-process internet with RFC 4787 NATs and virtual time.

Typical use::

    from punchthrough import sim

    async def main() -> None:
        world = sim.World(trace=True)
        server = world.add_host("server", "198.51.100.1")
        nat = world.add_nat("home", sim.profile("eim-apdf"), "203.0.113.1")
        alice = nat.add_host("alice", "10.0.1.2")
        sock = await alice.bind()          # alice is a punchthrough.netio.Network
        ...

    sim.run(main(), seed=1)                # virtual time: sleeps cost nothing

The same endpoint code runs here and on the kernel (:class:`punchthrough.netio.UdpNetwork`).
"""

from punchthrough.sim.clock import (
    DEFAULT_TIME_LIMIT,
    SimulationDeadlock,
    SimulationError,
    SimulationTimeLimit,
    VirtualTimeLoop,
    run,
)
from punchthrough.sim.firewall import FIREWALLS, Firewall, FirewallConfig
from punchthrough.sim.link import Link
from punchthrough.sim.nat import NatTable
from punchthrough.sim.nat_binding import Binding
from punchthrough.sim.nat_config import (
    PROFILES,
    AllocationPolicy,
    FilteringBehaviour,
    MappingBehaviour,
    NatConfig,
    nat_config,
    profile,
)
from punchthrough.sim.nodes import Host, Nat, Realm, SimSocket
from punchthrough.sim.trace import TraceEvent
from punchthrough.sim.world import World

__all__ = [
    "DEFAULT_TIME_LIMIT",
    "FIREWALLS",
    "PROFILES",
    "AllocationPolicy",
    "Binding",
    "FilteringBehaviour",
    "Firewall",
    "FirewallConfig",
    "Host",
    "Link",
    "MappingBehaviour",
    "Nat",
    "NatConfig",
    "NatTable",
    "Realm",
    "SimSocket",
    "SimulationDeadlock",
    "SimulationError",
    "SimulationTimeLimit",
    "TraceEvent",
    "VirtualTimeLoop",
    "World",
    "nat_config",
    "profile",
    "run",
]
