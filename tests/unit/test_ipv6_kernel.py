"""Dual stack on the kernel (loopback only): one AF_INET6 socket with IPV6_V6ONLY=0, and a STUN
server listening on both families."""

from __future__ import annotations

import asyncio
import socket

import pytest

from punchthrough.netio import Address, DatagramReceiver, DatagramSocket, UdpNetwork
from punchthrough.stun import StunClient, StunServer

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")


def _loopback6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_v6 = pytest.mark.skipif(not _loopback6(), reason="no ::1 on this machine")


@needs_v6
def test_dual_stack_socket_speaks_both_families_and_unmaps_ipv4() -> None:
    async def go() -> None:
        net = UdpNetwork()
        dual = await net.bind("::", 0)
        v4 = await net.bind("127.0.0.1", 0)
        v6 = await net.bind("::1", 0)
        got: list[tuple[bytes, Address]] = []
        back: list[tuple[bytes, Address]] = []
        done = asyncio.Event()

        def echo(sock: DatagramSocket) -> DatagramReceiver:
            def on(data: bytes, addr: Address) -> None:
                got.append((data, addr))
                sock.sendto(data + b"!", addr)

            return on

        v4.set_receiver(echo(v4))
        v6.set_receiver(echo(v6))

        def on_back(data: bytes, addr: Address) -> None:
            back.append((data, addr))
            if len(back) == 2:
                done.set()

        dual.set_receiver(on_back)
        try:
            assert dual.local_address[0] == "::"
            dual.sendto(b"four", ("127.0.0.1", v4.local_address[1]))
            dual.sendto(b"six", ("::1", v6.local_address[1]))
            async with asyncio.timeout(5):
                await done.wait()
            port = dual.local_address[1]
            assert sorted(got) == [(b"four", ("127.0.0.1", port)), (b"six", ("::1", port))]
            # the IPv4 peer is reported as plain IPv4, not ::ffff:127.0.0.1
            assert sorted(back) == [
                (b"four!", ("127.0.0.1", v4.local_address[1])),
                (b"six!", ("::1", v6.local_address[1])),
            ]
            assert dual.send_errors == 0
        finally:
            for s in (dual, v4, v6):
                s.close()

    asyncio.run(go())


@needs_v6
def test_stun_server_on_both_families_rfc5780_on_ipv4() -> None:
    async def go() -> None:
        net = UdpNetwork()
        server = await StunServer.start(net, [("127.0.0.1", 0), ("::1", 0)], alt_ip="127.0.0.2")
        sock = await net.bind("::", 0)
        client = StunClient(sock)
        client.attach()
        try:
            v4 = next(a for a in server.addresses if a[0] == "127.0.0.1")
            v6 = next(a for a in server.addresses if a[0] == "::1")
            r4 = await client.binding(v4, timeout=2.0)
            r6 = await client.binding(v6, timeout=2.0)
            assert r4.mapped == ("127.0.0.1", sock.local_address[1])
            assert r4.other_address is not None and r4.other_address[0] == "127.0.0.2"
            assert r6.mapped == ("::1", sock.local_address[1]) and r6.other_address is None
        finally:
            client.close()
            sock.close()
            server.close()

    asyncio.run(go())


def test_rfc5780_still_needs_a_primary_of_the_alternates_family() -> None:
    async def go() -> None:
        with pytest.raises(ValueError):
            await StunServer.start(UdpNetwork(), [("127.0.0.1", 0)], alt_ip="::1")

    asyncio.run(go())
