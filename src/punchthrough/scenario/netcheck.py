"""netcheck inside the simulator, on the same topology as the kernel lab.

Mirrors the lab's layout (:mod:`punchthrough.lab.addresses`): one public server host carrying
198.51.100.1-.4 (an RFC 5780 STUN server on .1/.2 ports 3478/3479, plain STUN on .3:3478 and
.4:3478), a NAT with WAN 203.0.113.1 and LAN gateway 10.0.1.1, and the client 10.0.1.2 behind
it. The lab/sim agreement test calls :func:`netcheck_world` for each profile and compares with
the lab.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Final

from punchthrough.nat import NetcheckReport, run_netcheck
from punchthrough.netio import Address
from punchthrough.sim import Host, Link, Nat, NatConfig, World, profile, run
from punchthrough.stun import StunServer

#: The lab's addresses: server IPs on the public segment, router A's WAN, host A.
RFC5780_PRIMARY: Final[Address] = ("198.51.100.1", 3478)
RFC5780_ALT_IP: Final = "198.51.100.2"
EXTRA_SERVERS: Final[tuple[Address, ...]] = (("198.51.100.3", 3478), ("198.51.100.4", 3478))
NETCHECK_SERVERS: Final[tuple[Address, ...]] = (RFC5780_PRIMARY, *EXTRA_SERVERS)
NAT_PUBLIC_IP: Final = "203.0.113.1"
NAT_LAN_IP: Final = "10.0.1.1"
CLIENT_IP: Final = "10.0.1.2"


@dataclass
class NetcheckTopology:
    """The lab topology built in a :class:`World`; ``servers`` is what netcheck is given."""

    world: World
    client: Host
    nat: Nat | None
    servers: list[Address]
    stun_servers: list[StunServer] = field(default_factory=list)

    def close(self) -> None:
        for server in self.stun_servers:
            server.close()


def resolve_nat(nat: str | NatConfig | None, **nat_params: Any) -> NatConfig | None:
    """A profile name (plus free parameters) or an explicit config; ``None``/``open`` = no NAT."""
    if nat is None:
        if nat_params:
            raise ValueError("NAT parameters given without a NAT")
        return None
    if isinstance(nat, NatConfig):
        return profile_override(nat, **nat_params)
    return profile(nat, **nat_params)


def profile_override(config: NatConfig, **nat_params: Any) -> NatConfig:
    """``config`` with free parameters applied."""
    return replace(config, **nat_params) if nat_params else config


async def build_netcheck_topology(
    world: World, nat: str | NatConfig | None, *, link: Link | None = None, **nat_params: Any
) -> NetcheckTopology:
    """Build the lab topology in ``world`` and start its STUN servers."""
    config = resolve_nat(nat, **nat_params)
    server_host = world.add_host(
        "stun", RFC5780_PRIMARY[0], RFC5780_ALT_IP, *(ip for ip, _ in EXTRA_SERVERS), link=link
    )
    topo_nat: Nat | None = None
    if config is None:
        client = world.add_host("client", NAT_PUBLIC_IP, link=link)
    else:
        topo_nat = world.add_nat("nat", config, NAT_PUBLIC_IP, inside_ip=NAT_LAN_IP, link=link)
        client = topo_nat.add_host("client", CLIENT_IP, link=link)
    topo = NetcheckTopology(world, client, topo_nat, list(NETCHECK_SERVERS))
    try:
        topo.stun_servers.append(
            await StunServer.start(server_host, listen=[RFC5780_PRIMARY], alt_ip=RFC5780_ALT_IP)
        )
        topo.stun_servers.append(await StunServer.start(server_host, listen=list(EXTRA_SERVERS)))
    except BaseException:
        topo.close()
        raise
    return topo


@dataclass
class SimNetcheck:
    """One simulated netcheck run: the report and the world it ran in (trace, stats)."""

    report: NetcheckReport
    world: World


def run_sim_netcheck(
    nat: str | NatConfig | None,
    *,
    seed: int = 0,
    trace: bool = False,
    timeout: float = 3.0,
    samples: int = 5,
    link: Link | None = None,
    **nat_params: Any,
) -> SimNetcheck:
    """Run the real ``run_netcheck`` against a simulated NAT, in virtual time."""

    async def main() -> SimNetcheck:
        world = World(seed, trace=trace)
        topo = await build_netcheck_topology(world, nat, link=link, **nat_params)
        try:
            report = await run_netcheck(topo.client, topo.servers, timeout=timeout, samples=samples)
        finally:
            topo.close()
        return SimNetcheck(report, world)

    return run(main(), seed=seed)


def netcheck_world(
    nat: str | NatConfig | None, *, seed: int = 0, **nat_params: Any
) -> NetcheckReport:
    """The netcheck report for one NAT profile in the simulator (for the lab/sim agreement test)."""
    return run_sim_netcheck(nat, seed=seed, **nat_params).report
