"""Bad IPv6 input: STUN answers in the wrong family, zone ids and link-local or malformed
candidates from the peer. Typed errors, nothing crashes, the call goes on."""

from __future__ import annotations

import asyncio

import pytest

from punchthrough.apps.echo import run_echo_session, serve_endpoint
from punchthrough.endpoint import Endpoint
from punchthrough.identity import Identity
from punchthrough.netio import Address
from punchthrough.relay import RelayServer
from punchthrough.signal import Candidate, Candidates, SignalDecodeError, decode, encode
from punchthrough.sim import FirewallConfig, Host, Link, World, nat_config, run
from punchthrough.stun import (
    Message,
    MessageClass,
    StunClient,
    StunFamilyMismatch,
    XorMappedAddress,
    decode_message,
)
from punchthrough.stun import encode as stun_encode

RELAY: Address = ("198.51.100.20", 3478)
RELAY_ALT = "198.51.100.21"
LIAR: Address = ("198.51.100.66", 3478)
WAN = Link(0.010)


def _lying_stun(host: Host, claim: Address) -> asyncio.Future[None]:
    """A STUN server that tells every client it is at ``claim`` (wrong family on purpose)."""

    async def serve() -> None:
        sock = await host.bind(LIAR[0], LIAR[1])

        def on(data: bytes, src: Address) -> None:
            req = decode_message(data)
            res = Message(
                req.method,
                MessageClass.SUCCESS_RESPONSE,
                req.transaction_id,
                [XorMappedAddress(claim)],
            )
            sock.sendto(stun_encode(res), src)

        sock.set_receiver(on)
        await asyncio.Event().wait()

    return asyncio.ensure_future(serve())


def _dual(world: World, name: str, n: int) -> Host:
    box = world.add_nat(
        f"nat-{name}", nat_config("eim-apdf"), f"203.0.113.{n}", link=WAN, inside_ip=f"10.0.{n}.1"
    )
    box.enable_ipv6(f"2001:db8:{n}::/64", FirewallConfig())
    return box.add_host(name, f"10.0.{n}.2", f"2001:db8:{n}::2", link=Link(0.0))


def test_stun_answer_in_the_other_family_is_a_typed_error_and_no_candidate() -> None:
    async def go() -> None:
        world = World()
        liar = world.add_host("liar", LIAR[0], link=WAN)
        server = _lying_stun(liar, ("2001:db8:66::66", 4242))
        relay_host = world.add_host("relay", RELAY[0], RELAY_ALT, link=WAN)
        relay = await RelayServer.start(relay_host, [RELAY], alt_ip=RELAY_ALT)
        try:
            a = _dual(world, "a", 1)
            sock = await a.bind("::")
            client = StunClient(sock)
            client.attach()
            with pytest.raises(StunFamilyMismatch) as err:
                await client.binding(LIAR, timeout=1.0)
            assert err.value.mapped == ("2001:db8:66::66", 4242)
            client.close()
            sock.close()
            ident = Identity.from_private_bytes(b"\x05" * 32)
            async with Endpoint.bind(ident, relays=[RELAY], stun=[LIAR], network=a) as ep:
                addrs = {c.address for c in ep.local_candidates.candidates}
                assert "2001:db8:66::66" not in addrs  # the lie gave no candidate
                assert "203.0.113.1" in addrs  # the relay's observation still did
        finally:
            server.cancel()
            await relay.close()

    run(go(), seed=1)


def test_malformed_ipv6_candidate_is_a_typed_decode_error() -> None:
    good = Candidate(kind="host", address="2001:db8::1", port=5, priority=1, foundation="f")
    data = encode(Candidates(candidates=(good,)))
    bad = data.replace(b"2001:db8::1", b"2001:db8::g")
    with pytest.raises(SignalDecodeError):
        decode(bad)
    with pytest.raises(ValueError):
        Candidate(kind="host", address="2001:db8:::1", port=5, priority=1, foundation="f")


def test_zone_ids_and_link_local_candidates_are_skipped_and_the_call_goes_direct() -> None:
    """The caller offers junk IPv6 candidates next to its real ones: the callee refuses those
    (counted), checks the rest, and the call goes direct over IPv6 with no frame lost."""

    async def go() -> tuple[dict[str, object], int]:
        world = World()
        relay_host = world.add_host("relay", RELAY[0], RELAY_ALT, "2001:db8:100::20", link=WAN)
        relay = await RelayServer.start(
            relay_host, [RELAY, ("2001:db8:100::20", 3478)], alt_ip=RELAY_ALT
        )
        a, b = _dual(world, "a", 1), _dual(world, "b", 2)
        ida = Identity.from_private_bytes(b"\x01" * 32)
        idb = Identity.from_private_bytes(b"\x02" * 32)
        try:
            async with (
                Endpoint.bind(ida, relays=[RELAY], network=a) as ea,
                Endpoint.bind(idb, relays=[RELAY], network=b) as eb,
            ):
                port = ea.local_address[1]
                junk = [
                    Candidate(
                        kind="host", address=ip, port=port, priority=1 << 30, foundation="junk"
                    )
                    for ip in ("fe80::1%eth0", "fe80::2", "::ffff:192.0.2.9", "ff02::1")
                ]
                ea.local_candidates.candidates = [*junk, *ea.local_candidates.candidates]
                server = asyncio.ensure_future(serve_endpoint(eb))
                try:
                    result = await run_echo_session(ea, eb.peer_id, duration=2.0, pps=50)
                finally:
                    server.cancel()
                    await asyncio.gather(server, return_exceptions=True)
                rejected = sum(
                    c.traversal.stats["candidates_rejected"]
                    for c in eb.connections
                    if c.traversal is not None
                )
                return result, rejected
        finally:
            await relay.close()

    result, rejected = run(go(), seed=2)
    assert result["path"] == "direct" and result["family"] == "ipv6"
    assert result["frames_lost"] == 0
    assert rejected == 4
