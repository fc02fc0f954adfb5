"""The virtual internet: sockets, links, routing, hairpinning, chained NATs, tracing."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from punchthrough.netio import Address, DatagramSocket, Network, SocketClosed
from punchthrough.sim import Link, NatConfig, World, nat_config, run

T = TypeVar("T")
SERVER = ("198.51.100.1", 3478)


def sim(fn: Callable[[World], Awaitable[T]], seed: int = 0, trace: bool = False) -> T:
    async def main() -> T:
        return await fn(World(seed, trace=trace))

    return run(main(), seed=seed)


class Inbox:
    def __init__(self, sock: DatagramSocket) -> None:
        self.got: list[tuple[bytes, Address, float]] = []
        self._loop = asyncio.get_running_loop()
        sock.set_receiver(lambda d, a: self.got.append((d, a, self._loop.time())))


async def echo(world: World, name: str, *addrs: str, port: int = 3478) -> DatagramSocket:
    host = world.add_host(name, *addrs)
    sock = await host.bind(addrs[0], port)
    sock.set_receiver(lambda d, a: sock.sendto(d, a))
    return sock


def test_hosts_and_sockets_implement_the_netio_protocols() -> None:
    async def go(w: World) -> None:
        host = w.add_host("h", "198.51.100.1")
        assert isinstance(host, Network)
        sock = await host.bind()
        assert isinstance(sock, DatagramSocket)
        assert sock.local_address[0] == "0.0.0.0" and 32768 <= sock.local_address[1] <= 60999
        sock.close()
        sock.close()  # idempotent
        assert sock.closed
        with pytest.raises(SocketClosed):
            sock.sendto(b"x", SERVER)

    sim(go)


def test_bind_errors_follow_linux() -> None:
    async def go(w: World) -> None:
        host = w.add_host("h", "198.51.100.1", "198.51.100.2")
        s1 = await host.bind("198.51.100.1", 4000)
        await host.bind("198.51.100.2", 4000)  # other address, same port: fine
        for ip, port in [("198.51.100.1", 4000), ("0.0.0.0", 4000)]:
            with pytest.raises(OSError) as ei:
                await host.bind(ip, port)
            assert ei.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError) as ei:
            await host.bind("198.51.100.9", 1)
        assert ei.value.errno == errno.EADDRNOTAVAIL
        s1.close()
        await host.bind("198.51.100.1", 4000)  # free again after close
        await host.bind("0.0.0.0", 4001)
        with pytest.raises(OSError):
            await host.bind("198.51.100.2", 4001)  # wildcard holds every address

    sim(go)


def test_latency_is_exact_and_invalid_sends_count_as_errors() -> None:
    async def go(w: World) -> list[tuple[bytes, Address, float]]:
        await echo(w, "server", SERVER[0])
        client = w.add_host("client", "198.51.100.7", link=Link(latency=0.020))
        sock = await client.bind()
        inbox = Inbox(sock)
        sock.sendto(b"ping", SERVER)
        sock.sendto(b"x", ("not-an-ip", 1))
        sock.sendto(b"x" * 70000, SERVER)
        assert sock.send_errors == 2
        await asyncio.sleep(1)
        return inbox.got

    # client link 20 ms + server link 5 ms (default), each way
    [(data, src, when)] = sim(go)
    assert (data, src) == (b"ping", SERVER) and when == pytest.approx(0.050)


def test_packets_on_one_path_stay_in_order_without_jitter() -> None:
    async def go(w: World) -> list[bytes]:
        await echo(w, "server", SERVER[0])
        nat = w.add_nat("home", nat_config("eim-apdf"), "203.0.113.1")
        sock = await nat.add_host("a", "10.0.1.2").bind()
        inbox = Inbox(sock)
        for i in range(50):
            sock.sendto(bytes([i]), SERVER)
        await asyncio.sleep(1)
        return [d for d, _, _ in inbox.got]

    assert sim(go) == [bytes([i]) for i in range(50)]


def test_loss_and_jitter_are_applied_per_link() -> None:
    async def go(w: World) -> list[float]:
        await echo(w, "server", SERVER[0])
        lossy = w.add_host("c", "198.51.100.7", link=Link(0.01, jitter=0.01, loss=0.2))
        sock = await lossy.bind()
        inbox = Inbox(sock)
        for _ in range(1000):
            sock.sendto(b"p", SERVER)
        await asyncio.sleep(1)
        assert w.drop_reasons["loss on link of c"] == 1000 - len(inbox.got)
        return [t for _, _, t in inbox.got]

    times = sim(go)
    # two traversals of a 20 % loss link: 64 % survive
    assert 560 < len(times) < 720
    assert min(times) >= 0.030 and max(times) <= 0.050 and len(set(times)) > 100


def test_every_packet_arrives_exactly_when_its_links_say() -> None:
    """Interleaved flows with jitter: no packet may be early or late (event-queue correctness)."""

    async def go(w: World) -> list[float]:
        loop = asyncio.get_running_loop()
        sent: dict[bytes, float] = {}
        delays: list[float] = []
        sink = await w.add_host("sink", SERVER[0], link=Link(0.003, jitter=0.002)).bind(
            SERVER[0], SERVER[1]
        )
        sink.set_receiver(lambda d, a: delays.append(loop.time() - sent[d]))
        nat = w.add_nat("n", nat_config("eim-apdf"), "203.0.113.1", link=Link(0.007, jitter=0.004))

        async def flow(i: int, period: float) -> None:
            sock = await nat.add_host(f"h{i}", f"10.0.1.{i + 2}", link=Link(0.001)).bind()
            for n in range(40):
                payload = f"{i}/{n}".encode()
                sent[payload] = loop.time()
                sock.sendto(payload, SERVER)
                await asyncio.sleep(period)

        await asyncio.gather(*(flow(i, p) for i, p in enumerate([0.0031, 0.0047, 0.011])))
        await asyncio.sleep(1)
        return delays

    delays = sim(go)
    assert len(delays) == 120
    # host 1 ms + NAT WAN 7-11 ms + sink 3-5 ms
    assert min(delays) >= 0.011 - 1e-9 and max(delays) <= 0.017 + 1e-9


def test_hairpinning_on_and_off() -> None:
    async def go(w: World, hairpin: bool) -> list[tuple[bytes, Address, float]]:
        await echo(w, "server", SERVER[0])
        cfg = NatConfig("eim", "eif", "preserve", hairpinning=hairpin)
        nat = w.add_nat("home", cfg, "203.0.113.1")
        a = await nat.add_host("a", "10.0.1.2").bind("0.0.0.0", 5000)
        b = await nat.add_host("b", "10.0.1.3").bind("0.0.0.0", 6000)
        inbox = Inbox(b)
        a.sendto(b"open", SERVER)
        b.sendto(b"open", SERVER)
        await asyncio.sleep(1)
        inbox.got.clear()
        a.sendto(b"hairpin", ("203.0.113.1", 6000))  # b's public endpoint
        await asyncio.sleep(1)
        if not hairpin:
            assert w.drop_reasons == {"hairpinning disabled": 1, "socket has no receiver": 1}
        return inbox.got

    on = sim(lambda w: go(w, True))
    assert [(d, a) for d, a, _ in on] == [(b"hairpin", ("203.0.113.1", 5000))]
    assert sim(lambda w: go(w, False)) == []


def test_chained_nat_home_router_behind_cgnat() -> None:
    async def go(w: World) -> tuple[list[Address], list[str]]:
        server = await echo(w, "server", SERVER[0])
        seen: list[Address] = []

        def record_and_echo(data: bytes, addr: Address) -> None:
            seen.append(addr)
            server.sendto(data, addr)

        server.set_receiver(record_and_echo)
        cgnat = w.add_nat("cgnat", nat_config("apdm-random"), "203.0.113.9", inside_ip="10.64.0.1")
        home = cgnat.add_nat("home", nat_config("eim-apdf"), "10.64.0.2")
        sock = await home.add_host("a", "10.0.1.2").bind("0.0.0.0", 5000)
        inbox = Inbox(sock)
        sock.sendto(b"hi", SERVER)
        await asyncio.sleep(1)
        assert [d for d, _, _ in inbox.got] == [b"hi"]
        stranger = await w.add_host("x", "198.51.100.50").bind()
        stranger.sendto(b"unsolicited", seen[0])
        await asyncio.sleep(1)
        assert len(inbox.got) == 1
        return seen, [e.detail for e in w.trace if e.kind in ("nat-out", "drop")]

    seen, details = sim(go, trace=True)
    assert seen[0][0] == "203.0.113.9"
    assert details[0] == "=> src 10.64.0.2:5000 (new mapping)"  # home NAT keeps the port
    assert details[1].startswith("=> src 203.0.113.9:")  # then the CGNAT translates again
    assert details[-1].startswith("filtered (apdf)")  # the CGNAT drops the stranger


def test_trace_explains_drops_and_is_printable() -> None:
    async def go(w: World) -> str:
        await echo(w, "server", SERVER[0])
        nat = w.add_nat("home", nat_config("eim-apdf"), "203.0.113.1")
        sock = await nat.add_host("a", "10.0.1.2").bind("0.0.0.0", 5000)
        sock.sendto(b"hi", SERVER)
        other = await w.add_host("x", "198.51.100.50").bind("0.0.0.0", 9)
        other.sendto(b"probe", ("203.0.113.1", 5000))
        sock.sendto(b"nowhere", ("192.0.2.1", 1))
        await asyncio.sleep(1)
        return w.format_trace()

    text = sim(go, trace=True)
    assert (
        "nat-out  home       10.0.1.2:5000 -> 198.51.100.1:3478 2B  => src 203.0.113.1:5000" in text
    )
    assert "filtered (apdf): 198.51.100.50:9 not contacted from port 5000" in text
    assert "no route to 192.0.2.1 in internet" in text
    assert (
        "nat-in   home       198.51.100.1:3478 -> 203.0.113.1:5000 2B  => dst 10.0.1.2:5000" in text
    )
    times = [float(line.split()[0]) for line in text.splitlines()]
    assert times == sorted(times)


def test_port_unreachable_and_duplicate_addresses() -> None:
    async def go(w: World) -> dict[str, int]:
        w.add_host("server", SERVER[0])
        with pytest.raises(ValueError):
            w.add_host("dup", SERVER[0])
        sock = await w.add_host("c", "198.51.100.7").bind()
        sock.sendto(b"x", SERVER)
        await asyncio.sleep(1)
        return w.drop_reasons

    assert sim(go) == {"port unreachable": 1}
