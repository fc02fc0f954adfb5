"""PortMapper against the simulator's NAT-PMP and PCP responders (virtual time)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import pytest

from punchthrough.netio import Address, DatagramSocket
from punchthrough.portmap import NAT_PMP, PCP, PortMapper, PortMapping
from punchthrough.sim import Nat, NatConfig, World, nat_config, run

T = TypeVar("T")
GATEWAY = "10.0.1.1"
HOST_IP = "10.0.1.2"
PUBLIC_IP = "203.0.113.1"
APP_PORT = 5000
BASE = nat_config("apdm-random")  # random ports, APDF: only a mapping admits a stranger


class Home:
    """A NAT with responders, a LAN host with its app socket, and a stranger on the internet."""

    def __init__(self, world: World, config: NatConfig) -> None:
        self.world = world
        self.nat: Nat = world.add_nat("home", config, PUBLIC_IP)
        self.host = self.nat.add_host("a", HOST_IP)
        self.got: list[tuple[bytes, Address]] = []

    async def start(self) -> Home:
        self.app: DatagramSocket = await self.host.bind("0.0.0.0", APP_PORT)
        self.app.set_receiver(lambda d, a: self.got.append((d, a)))
        self.stranger: DatagramSocket = await self.world.add_host("x", "198.51.100.50").bind()
        return self

    def mapper(self, **kw: object) -> PortMapper:
        return PortMapper(self.host, GATEWAY, APP_PORT, local_ip=HOST_IP, **kw)  # type: ignore[arg-type]

    async def knock(self, external: Address) -> bool:
        """A datagram from the stranger to ``external``: does the app socket receive it?"""
        before = len(self.got)
        self.stranger.sendto(b"knock", external)
        await asyncio.sleep(0.5)
        return any(d == b"knock" for d, _ in self.got[before:])


def home_run(fn: Callable[[Home], Awaitable[T]], config: NatConfig) -> T:
    async def main() -> T:
        return await fn(await Home(World(0), config).start())

    return run(main(), seed=0)


@pytest.mark.parametrize(
    ("natpmp", "pcp", "expect"), [(True, False, NAT_PMP), (False, True, PCP), (True, True, PCP)]
)
def test_mapping_admits_a_stranger_and_close_deletes_it(
    natpmp: bool, pcp: bool, expect: str
) -> None:
    async def go(h: Home) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        m = h.mapper()
        async with m:
            took = loop.time() - t0
            assert (m.report.nat_pmp, m.report.pcp, m.report.upnp) == (natpmp, pcp, False)
            assert m.mapping is not None and m.mapping.protocol == expect
            assert m.mapping.external[0] == PUBLIC_IP and not m.mapping.double_nat
            assert m.candidate == m.mapping.external
            # Probe + map take a few LAN round trips (5 ms links in the simulator).
            assert took < 0.05  # a protocol the gateway lacks is refused, not waited out
            assert await h.knock(m.mapping.external)
            external = m.mapping.external
        assert m.mapping is None
        assert h.nat.table.binding_for_port(external[1], h.world.now) is None
        assert not await h.knock(external)

    home_run(go, replace(BASE, natpmp=natpmp, pcp=pcp))


def test_probe_is_bounded_when_no_gateway_answers() -> None:
    async def go(h: Home) -> tuple[float, PortMapping | None]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with h.mapper() as m:
            return loop.time() - t0, m.mapping

    took, mapping = home_run(go, BASE)
    assert mapping is None
    assert 0.5 <= took < 0.51  # the probe cap, not NAT-PMP's 64 s schedule


@pytest.mark.parametrize("pcp", [False, True])
def test_mapping_is_renewed_at_half_lifetime_and_outlives_it(pcp: bool) -> None:
    async def go(h: Home) -> None:
        async with h.mapper(lifetime=60, nat_pmp=not pcp, pcp=pcp) as m:
            assert m.mapping is not None
            first = m.mapping.external
            await asyncio.sleep(200)  # three lifetimes
            stats = m.session_stats()[PCP if pcp else NAT_PMP]
            assert stats["renewals"] >= 6  # every 30 s
            assert m.mapping is not None and m.mapping.external == first
            assert await h.knock(first)

    home_run(go, replace(BASE, natpmp=True, pcp=True))


def test_remap_after_gateway_reboot_with_new_port() -> None:
    """The gateway loses every mapping and restarts its epoch: the renewal answer shows it."""

    async def go(h: Home) -> None:
        changes: list[PortMapping | None] = []
        async with h.mapper(lifetime=60, nat_pmp=False, on_change=changes.append) as m:
            assert m.mapping is not None
            old = m.mapping.external
            await asyncio.sleep(20)
            table = h.nat.table
            table.unmap_all(h.world.now, HOST_IP)  # state lost ...
            table.started = h.world.now  # ... and the epoch starts again at 0
            # someone else takes our old external port meanwhile
            table.map_port(h.world.now, ("10.0.1.9", 9), old[1], 600)
            await asyncio.sleep(15)  # the renewal at 30 s sees the reset
            assert m.gateway_resets == 1
            assert m.mapping is not None and m.mapping.external != old
            assert changes and changes[-1] == m.mapping
            assert await h.knock(m.mapping.external)

    home_run(go, replace(BASE, pcp=True))


def test_double_nat_is_reported_and_not_offered() -> None:
    """Home router behind a carrier-grade NAT: its external address is 100.64.x."""

    async def go(world: World) -> None:
        cgn = world.add_nat("cgn", nat_config("eim-apdf"), PUBLIC_IP, inside_ip="100.64.0.1")
        home_cfg = replace(BASE, natpmp=True, pcp=True)
        home = cgn.add_nat("home", home_cfg, "100.64.0.2", inside_ip=GATEWAY)
        host = home.add_host("a", HOST_IP)
        app = await host.bind("0.0.0.0", APP_PORT)
        try:
            async with PortMapper(host, GATEWAY, APP_PORT, local_ip=HOST_IP) as m:
                assert m.report.pcp and m.report.nat_pmp
                assert m.report.external_ip == "100.64.0.2"
                assert m.mapping is not None and m.mapping.double_nat
                assert m.mapping.external[0] == "100.64.0.2"
                assert m.double_nat and m.candidate is None
                # the useless mapping was deleted at once
                assert home.table.binding_for_port(m.mapping.external[1], world.now) is None
        finally:
            app.close()

    async def main() -> None:
        await go(World(0))

    run(main(), seed=0)


def test_pcp_skipped_without_local_ip_natpmp_still_maps() -> None:
    async def go(h: Home) -> None:
        async with PortMapper(h.host, GATEWAY, APP_PORT) as m:
            assert PCP in m.report.errors and not m.report.pcp
            assert m.mapping is not None and m.mapping.protocol == NAT_PMP

    home_run(go, replace(BASE, natpmp=True, pcp=True))


def test_close_deletes_even_when_the_body_raises() -> None:
    async def go(h: Home) -> Address:
        m = h.mapper()
        with pytest.raises(RuntimeError):
            async with m:
                assert m.mapping is not None
                external = m.mapping.external
                raise RuntimeError("boom")
        assert h.nat.table.binding_for_port(external[1], h.world.now) is None
        return external

    home_run(go, replace(BASE, natpmp=True, pcp=True))


# -- netcheck integration ---------------------------------------------------------------------


def _sim_netcheck(config: NatConfig, gateway: str | None, **kw: object) -> dict[str, object]:
    from punchthrough.nat import run_netcheck
    from punchthrough.scenario.netcheck import NAT_LAN_IP, build_netcheck_topology

    async def main() -> dict[str, object]:
        topo = await build_netcheck_topology(World(0), config)
        try:
            report = await run_netcheck(
                topo.client,
                topo.servers,
                gateway=NAT_LAN_IP if gateway == "lan" else gateway,
                local_ip=HOST_IP,
                **kw,  # type: ignore[arg-type]
            )
        finally:
            topo.close()
        assert topo.nat is not None
        if report.port_mapping_external is not None:  # whatever netcheck mapped, it deleted
            port = int(report.port_mapping_external.rsplit(":", 1)[1])
            assert topo.nat.table.binding_for_port(port, topo.world.now) is None
        return report.to_json()

    return run(main(), seed=0)


def test_netcheck_reports_port_mapping() -> None:
    cfg = replace(nat_config("eim-apdf"), natpmp=True, pcp=True)
    plain = _sim_netcheck(cfg, None)
    with_pm = _sim_netcheck(cfg, "lan")
    assert plain["port_mapping"] == {"nat_pmp": False, "pcp": False, "upnp": False}
    assert plain["port_mapping_gateway"] is None and plain["port_mapping_external"] is None
    assert with_pm["port_mapping"] == {"nat_pmp": True, "pcp": True, "upnp": False}
    assert with_pm["port_mapping_gateway"] == "10.0.1.1"
    ext = str(with_pm["port_mapping_external"])
    assert ext.startswith(f"{PUBLIC_IP}:") and with_pm["double_nat"] is False
    # the STUN half is unchanged by the concurrent port mapping probe
    for key in (
        "udp",
        "public_ip",
        "mapping",
        "filtering",
        "port_allocation",
        "hairpinning",
        "preserves_port",
        "errors",
    ):
        assert with_pm[key] == plain[key], key
    skipped = _sim_netcheck(cfg, "lan", port_mapping=False)
    assert skipped["port_mapping_gateway"] is None


def test_netcheck_not_slower_when_the_gateway_is_silent() -> None:
    cfg = nat_config("eim-apdf")  # no responders: the gateway port is unreachable (silent)
    plain = _sim_netcheck(cfg, None)
    silent = _sim_netcheck(cfg, "lan")
    assert silent["port_mapping"] == {"nat_pmp": False, "pcp": False, "upnp": False}
    assert silent["port_mapping_external"] is None and silent["double_nat"] is None
    assert isinstance(plain["duration_ms"], float) and isinstance(silent["duration_ms"], float)
    assert silent["duration_ms"] <= plain["duration_ms"] + 1.0
