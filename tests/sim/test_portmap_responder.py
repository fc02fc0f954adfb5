"""NAT-PMP and PCP responders on the simulated gateway create mappings that admit inbound."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from punchthrough.netio import Address, DatagramSocket
from punchthrough.portmap import natpmp_wire as pmp
from punchthrough.portmap import pcp_wire as pcp
from punchthrough.sim import Nat, NatConfig, World, nat_config, run

T = TypeVar("T")
GATEWAY = ("10.0.1.1", 5351)
NONCE = b"\x07" * 12
BASE = nat_config("apdm-random")
assert BASE is not None
BOTH = replace(BASE, natpmp=True, pcp=True)


class Box:
    """A NAT with both responders, a LAN host socket on port 5000 and a stranger outside."""

    def __init__(self, world: World, config: NatConfig) -> None:
        self.world = world
        self.nat: Nat = world.add_nat("home", config, "203.0.113.1")
        self.replies: list[bytes] = []
        self.app: list[tuple[bytes, Address]] = []

    async def start(self) -> Box:
        self.sock = await self.nat.add_host("a", "10.0.1.2").bind("0.0.0.0", 5000)

        def receive(data: bytes, addr: Address) -> None:
            if addr == GATEWAY:
                self.replies.append(data)
            else:
                self.app.append((data, addr))

        self.sock.set_receiver(receive)
        self.stranger: DatagramSocket = await self.world.add_host("x", "198.51.100.50").bind()
        return self

    async def ask_maybe(self, request: bytes) -> bytes | None:
        before = len(self.replies)
        self.sock.sendto(request, GATEWAY)
        await asyncio.sleep(0.5)
        return self.replies[before] if len(self.replies) > before else None

    async def ask(self, request: bytes) -> bytes:
        reply = await self.ask_maybe(request)
        assert reply is not None, "no reply from the gateway"
        return reply

    async def knock(self, port: int) -> bool:
        before = len(self.app)
        self.stranger.sendto(b"knock", ("203.0.113.1", port))
        await asyncio.sleep(0.5)
        return len(self.app) > before


def box_run(fn: Callable[[Box], Awaitable[T]], config: NatConfig = BOTH) -> T:
    async def main() -> T:
        return await fn(await Box(World(0), config).start())

    return run(main(), seed=0)


def test_natpmp_external_address_and_map_admit_inbound() -> None:
    async def go(b: Box) -> None:
        addr = pmp.decode_response(await b.ask(pmp.encode_request(pmp.ExternalAddressRequest())))
        assert addr == pmp.ExternalAddressResponse(0, 0, "203.0.113.1")
        assert not await b.knock(6000)
        raw = await b.ask(pmp.encode_request(pmp.MapRequest(pmp.OP_MAP_UDP, 5000, 6000, 3600)))
        resp = pmp.decode_response(raw)
        assert isinstance(resp, pmp.MapResponse)
        assert (resp.result, resp.internal_port, resp.external_port, resp.lifetime) == (
            0,
            5000,
            6000,
            3600,
        )
        assert await b.knock(6000)
        assert b.app[-1][0] == b"knock"
        # delete: lifetime 0
        raw = await b.ask(pmp.encode_request(pmp.MapRequest(pmp.OP_MAP_UDP, 5000, 0, 0)))
        assert pmp.decode_response(raw).result == 0
        assert not await b.knock(6000)

    box_run(go)


def test_natpmp_errors() -> None:
    async def go(b: Box) -> None:
        assert pmp.decode_response(await b.ask(b"\x00\x09")) == pmp.ErrorResponse(
            9, pmp.RESULT_UNSUPPORTED_OPCODE, 0
        )
        tcp = await b.ask(pmp.encode_request(pmp.MapRequest(pmp.OP_MAP_TCP, 80, 80, 60)))
        assert pmp.decode_response(tcp).result == pmp.RESULT_UNSUPPORTED_OPCODE
        assert await b.ask_maybe(b"\x00\x01\x00") is None  # truncated: silently dropped

    box_run(go)


def _pcp_map(
    lifetime: int,
    client: str = "10.0.1.2",
    port: int = 7000,
    nonce: bytes = NONCE,
    options: tuple[pcp.PcpOption, ...] = (),
    internal: int = 5000,
) -> bytes:
    m = pcp.MapData(nonce, pcp.PROTO_UDP, internal, port, "0.0.0.0")
    return pcp.encode_request(pcp.PcpRequest(pcp.OP_MAP, lifetime, client, m, None, options))


def test_pcp_map_admits_inbound_and_enforces_nonce() -> None:
    async def go(b: Box) -> None:
        resp = pcp.decode_response(await b.ask(_pcp_map(600)))
        assert resp.result == pcp.SUCCESS and resp.lifetime == 600
        assert resp.map is not None and resp.map.nonce == NONCE
        assert (resp.map.external_port, resp.map.external_ip) == (7000, "203.0.113.1")
        assert await b.knock(7000)
        wrong = pcp.decode_response(await b.ask(_pcp_map(0, nonce=b"\x01" * 12)))
        assert wrong.result == pcp.NOT_AUTHORIZED
        assert await b.knock(7000)
        gone = pcp.decode_response(await b.ask(_pcp_map(0)))
        assert gone.result == pcp.SUCCESS and gone.lifetime == 0
        assert not await b.knock(7000)

    box_run(go)


def test_pcp_mapping_expires_with_its_lifetime() -> None:
    async def go(b: Box) -> None:
        assert pcp.decode_response(await b.ask(_pcp_map(60))).result == 0
        await asyncio.sleep(61)
        assert not await b.knock(7000)

    box_run(go)


def test_pcp_errors() -> None:
    async def go(b: Box) -> None:
        def result(raw: bytes) -> int:
            return pcp.decode_response(raw).result

        assert result(await b.ask(_pcp_map(60, client="10.0.1.99"))) == pcp.ADDRESS_MISMATCH
        third = (pcp.PcpOption(pcp.OPTION_THIRD_PARTY, b"\x00" * 16),)
        assert result(await b.ask(_pcp_map(60, options=third))) == pcp.UNSUPP_OPTION
        good = _pcp_map(60)
        assert result(await b.ask(b"\x03" + good[1:])) == pcp.UNSUPP_VERSION
        assert result(await b.ask(good[:30] + b"\x00\x00")) == pcp.MALFORMED_REQUEST
        assert result(await b.ask(good[:1] + b"\x05" + good[2:])) == pcp.UNSUPP_OPCODE
        peer = pcp.PeerData(pcp.MapData(NONCE, pcp.PROTO_UDP, 5000, 0), 443, "198.51.100.9")
        raw_peer = pcp.encode_request(pcp.PcpRequest(pcp.OP_PEER, 60, "10.0.1.2", peer=peer))
        assert result(await b.ask(raw_peer)) == pcp.UNSUPP_OPCODE  # PEER is not offered
        # port 7000 taken by another internal endpoint: PREFER_FAILURE fails, else another port
        assert result(await b.ask(_pcp_map(60, internal=5001))) == pcp.SUCCESS
        prefer = (pcp.PcpOption(pcp.OPTION_PREFER_FAILURE),)
        assert result(await b.ask(_pcp_map(60, options=prefer))) == pcp.CANNOT_PROVIDE_EXTERNAL
        raw = await b.ask(_pcp_map(60))
        assert raw is not None
        resp = pcp.decode_response(raw)
        assert resp.result == pcp.SUCCESS and resp.map is not None
        assert resp.map.external_port != 7000

    box_run(go)


def test_pcp_only_gateway_answers_natpmp_with_unsupported_version() -> None:
    async def go(b: Box) -> None:
        raw = await b.ask(pmp.encode_request(pmp.ExternalAddressRequest()))
        assert raw is not None and pcp.decode_response(raw).result == pcp.UNSUPP_VERSION

    box_run(go, replace(BASE, pcp=True))


def test_no_responder_means_port_unreachable() -> None:
    async def go(b: Box) -> dict[str, int]:
        assert await b.ask_maybe(pmp.encode_request(pmp.ExternalAddressRequest())) is None
        return b.world.drop_reasons

    assert box_run(go, BASE) == {"port unreachable": 1}


@given(st.lists(st.binary(max_size=80), max_size=8))
@settings(max_examples=40, deadline=None)
def test_responder_survives_garbage(datagrams: list[bytes]) -> None:
    async def go(b: Box) -> None:
        for d in datagrams:
            b.sock.sendto(d, GATEWAY)
        await asyncio.sleep(1)
        # still answers properly afterwards
        raw = await b.ask(pmp.encode_request(pmp.ExternalAddressRequest()))
        assert raw is not None and pmp.decode_response(raw) == pmp.ExternalAddressResponse(
            0, 1, "203.0.113.1"
        )

    box_run(go)


def test_port_mapping_through_sequential_nat_holds_the_suggested_port() -> None:
    async def go(b: Box) -> None:
        raw = await b.ask(pmp.encode_request(pmp.MapRequest(pmp.OP_MAP_UDP, 5000, 40500, 600)))
        resp = pmp.decode_response(raw)
        assert isinstance(resp, pmp.MapResponse) and resp.external_port == 40500
        b.sock.sendto(b"out", ("198.51.100.9", 9))
        await asyncio.sleep(0.1)
        assert b.nat.table.binding_for_port(40500, b.world.now) is not None
        assert len(b.nat.table.bindings) == 1  # outbound reused the explicit mapping

    seq = nat_config("apdm-sequential", natpmp=True)
    assert seq is not None
    box_run(go, seq)
