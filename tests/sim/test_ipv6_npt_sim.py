"""NPTv6 (RFC 6296) in the simulator: a stateless prefix swap at the home router. The host's own
(ULA) address is not reachable; the STUN-learned one is, so the call still goes direct."""

from __future__ import annotations

import asyncio

from punchthrough.apps.echo import run_echo_session, serve_endpoint
from punchthrough.endpoint import Endpoint
from punchthrough.identity import Identity
from punchthrough.nat import run_netcheck
from punchthrough.netio import Address
from punchthrough.relay import RelayServer
from punchthrough.sim import FirewallConfig, Host, Link, World, nat_config, run
from punchthrough.stun import StunServer

RELAY: Address = ("198.51.100.20", 3478)
STUN6: Address = ("2001:db8:100::1", 3478)
WAN = Link(0.010)


def _home(world: World, name: str, n: int, *, npt: bool) -> Host:
    box = world.add_nat(
        f"nat-{name}", nat_config("apdm-random"), f"203.0.113.{n}", inside_ip=f"10.0.{n}.1",
        link=WAN,
    )  # fmt: skip
    inside = f"fd00:{n}::/64" if npt else None
    box.enable_ipv6(f"2001:db8:{n}::/64", FirewallConfig(), npt_inside=inside)
    v6 = f"fd00:{n}::2" if npt else f"2001:db8:{n}::2"
    return box.add_host(name, f"10.0.{n}.2", v6, link=Link(0.0))


def test_nptv6_host_is_seen_at_its_global_prefix_and_calls_go_direct_via_srflx() -> None:
    async def go() -> tuple[dict[str, object], dict[str, object], list[str]]:
        world = World()
        stun_host = world.add_host("stun", STUN6[0], "2001:db8:100::2", link=WAN)
        stun = await StunServer.start(stun_host, [STUN6], alt_ip="2001:db8:100::2")
        relay_host = world.add_host("relay", RELAY[0], "198.51.100.21", link=WAN)
        relay = await RelayServer.start(relay_host, [RELAY], alt_ip="198.51.100.21")
        a, b = _home(world, "a", 1, npt=True), _home(world, "b", 2, npt=False)
        try:
            report = (await run_netcheck(a, [STUN6])).to_json()
            ida = Identity.from_private_bytes(b"\x01" * 32)
            idb = Identity.from_private_bytes(b"\x02" * 32)
            async with (
                Endpoint.bind(ida, relays=[RELAY], stun=[STUN6], network=a) as ea,
                Endpoint.bind(idb, relays=[RELAY], stun=[STUN6], network=b) as eb,
            ):
                offered = [f"{c.kind} {c.address}" for c in ea.local_candidates.candidates]
                server = asyncio.ensure_future(serve_endpoint(eb))
                try:
                    result = await run_echo_session(ea, eb.peer_id, duration=2.0, pps=50)
                finally:
                    server.cancel()
                    await asyncio.gather(server, return_exceptions=True)
        finally:
            stun.close()
            await relay.close()
        return report, result, offered

    report, result, offered = run(go(), seed=3)
    assert report["public_ip"] == "2001:db8:1::2"  # fd00:1::2 behind NPTv6
    v6 = report["ipv6"]
    assert isinstance(v6, dict) and v6["translated"] is True
    assert "host fd00:1::2" in offered and "srflx 2001:db8:1::2" in offered
    assert result["path"] == "direct" and result["family"] == "ipv6"
    assert result["frames_lost"] == 0
    pair = next(s for s in result["traversal"]["stages"] if s["stage"] == "hole-punch")["pair"]
    assert "[2001:db8:2::2]" in pair  # a's check went to b's host address, from fd00:1::2
