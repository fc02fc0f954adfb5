"""Dual-stack servers and netcheck over IPv6 in the simulator."""

from __future__ import annotations

from punchthrough.identity import Identity
from punchthrough.nat import run_netcheck
from punchthrough.netio import Address
from punchthrough.relay import RelayClient, RelayServer
from punchthrough.sim import FirewallConfig, Host, Link, World, nat_config, run
from punchthrough.stun import StunClient, StunServer
from punchthrough.transport.demux import DatagramMux

V4: Address = ("198.51.100.1", 3478)
V4_ALT = "198.51.100.2"
V6: Address = ("2001:db8:100::1", 3478)
V6_ALT = "2001:db8:100::2"
WAN = Link(0.01)


async def _servers(world: World) -> list[StunServer]:
    host = world.add_host("stun", V4[0], V4_ALT, V6[0], V6_ALT, link=WAN)
    return [
        await StunServer.start(host, [V4], alt_ip=V4_ALT),
        await StunServer.start(host, [V6], alt_ip=V6_ALT),
    ]


def _home(world: World, firewall: FirewallConfig | None, v4: bool = True) -> Host:
    nat = world.add_nat("home", nat_config("apdm-random"), "203.0.113.1", link=WAN)
    nat.enable_ipv6("2001:db8:1::/64", firewall)
    return nat.add_host("h", *(["10.0.1.2"] if v4 else []), "2001:db8:1::2")


def test_netcheck_reports_ipv6_no_nat_and_firewall_filtering() -> None:
    async def go(firewall: FirewallConfig | None) -> dict[str, object]:
        world = World()
        servers = await _servers(world)
        try:
            report = await run_netcheck(_home(world, firewall), [V4, V6])
        finally:
            for s in servers:
                s.close()
        assert report.public_ip == "203.0.113.1"  # the IPv4 part is about the NAT
        return report.to_json()

    stateful = run(go(FirewallConfig()), seed=1)["ipv6"]
    assert isinstance(stateful, dict)
    assert stateful["reachable"] is True and stateful["public_ip"] == "2001:db8:1::2"
    assert stateful["translated"] is False
    assert stateful["mapping"] == "endpoint-independent"
    assert stateful["filtering"] == "address-and-port-dependent"
    open_ = run(go(None), seed=1)["ipv6"]
    assert isinstance(open_, dict) and open_["filtering"] == "endpoint-independent"


def test_netcheck_ipv6_unreachable_and_ipv6_only() -> None:
    async def go() -> tuple[dict[str, object], dict[str, object]]:
        world = World()
        servers = await _servers(world)
        v4only = world.add_nat("nat4", nat_config("eim-apdf"), "203.0.113.4", link=WAN)
        h4 = v4only.add_host("h4", "10.0.4.2")
        try:
            r4 = await run_netcheck(h4, [V4, V6])
            r6 = await run_netcheck(_home(world, FirewallConfig(), v4=False), [V6])
        finally:
            for s in servers:
                s.close()
        return r4.to_json(), r6.to_json()

    r4, r6 = run(go(), seed=2)
    assert r4["udp"] is True and isinstance(r4["ipv6"], dict)
    assert r4["ipv6"]["reachable"] is False and r4["ipv6"]["errors"]
    assert r6["udp"] is True and r6["public_ip"] == "2001:db8:1::2"
    assert isinstance(r6["ipv6"], dict) and r6["ipv6"]["reachable"] is True
    assert r6["ipv6"]["translated"] is False
    assert r6["ipv6"]["filtering"] == "address-and-port-dependent"


def test_ipv4_only_netcheck_json_has_no_ipv6_section() -> None:
    async def go() -> dict[str, object]:
        world = World()
        servers = await _servers(world)
        h = world.add_host("pub", "192.0.2.1", link=WAN)
        try:
            return (await run_netcheck(h, [V4])).to_json()
        finally:
            for s in servers:
                s.close()

    assert "ipv6" not in run(go(), seed=3)


def test_dual_stack_stun_server_answers_plain_stun_on_the_other_family() -> None:
    async def go() -> None:
        world = World()
        host = world.add_host("stun", V4[0], V4_ALT, V6[0], link=WAN)
        server = await StunServer.start(host, [V4, V6], alt_ip=V4_ALT)
        assert set(server.addresses) >= {V4, V6}
        client_host = world.add_host("c", "192.0.2.5", "2001:db8:5::5", link=WAN)
        sock = await client_host.bind("::")
        client = StunClient(sock)
        client.attach()
        r4 = await client.binding(V4, timeout=1.0)
        r6 = await client.binding(V6, timeout=1.0)
        assert r4.other_address is not None  # RFC 5780 on IPv4
        assert r6.other_address is None and r6.mapped == ("2001:db8:5::5", sock.local_address[1])
        client.close()
        sock.close()
        server.close()

    run(go(), seed=4)


def test_dual_stack_relay_registers_clients_of_both_families() -> None:
    async def go() -> None:
        world = World()
        relay_host = world.add_host("relay", "198.51.100.20", "198.51.100.21", "2001:db8:100::20")
        r4, r6 = ("198.51.100.20", 3478), ("2001:db8:100::20", 3478)
        relay = await RelayServer.start(relay_host, [r4, r6], alt_ip="198.51.100.21")
        try:
            assert set(relay.addresses) == {r4, r6}
            h = world.add_host("c", "2001:db8:7::7", link=WAN)
            sock = await h.bind("::")
            ident = Identity.from_private_bytes(b"\x07" * 32)
            client = await RelayClient.connect(DatagramMux(sock), r6, ident)
            try:
                assert client.mapped_address == ("2001:db8:7::7", sock.local_address[1])
                assert len(relay.peers()) == 1
            finally:
                await client.close()
                sock.close()
        finally:
            await relay.close()

    run(go(), seed=5)
