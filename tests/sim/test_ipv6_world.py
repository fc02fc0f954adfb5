"""IPv6 in the virtual internet: addresses, dual-stack sockets, RFC 6092 stateful firewalls."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from punchthrough.netio import Address, DatagramSocket
from punchthrough.sim import Firewall, FirewallConfig, Host, Link, World, nat_config, run
from punchthrough.sim.firewall import Passed

T = TypeVar("T")
V6_SERVER = ("2001:db8:100::1", 3478)
V4_SERVER = ("198.51.100.1", 3478)


def sim(fn: Callable[[World], Awaitable[T]], seed: int = 0) -> T:
    async def main() -> T:
        return await fn(World(seed, trace=True))

    return run(main(), seed=seed)


class Inbox:
    def __init__(self, sock: DatagramSocket) -> None:
        self.got: list[tuple[bytes, Address]] = []
        sock.set_receiver(lambda d, a: self.got.append((d, a)))


def home_host(w: World, name: str, n: int, *, firewall: bool = True, v4: bool = True) -> Host:
    """A host behind a dual-stack home router: NAT44 (apdm-random) and an IPv6 firewall."""
    nat = w.add_nat(
        f"nat-{name}", nat_config("apdm-random"), f"203.0.113.{n}", inside_ip=f"10.0.{n}.1"
    )
    nat.enable_ipv6(f"2001:db8:{n}::/64", FirewallConfig() if firewall else None)
    addrs = ([f"10.0.{n}.2"] if v4 else []) + [f"2001:db8:{n}::2"]
    return nat.add_host(name, *addrs)


def test_dual_stack_socket_reaches_both_families_and_sees_plain_ipv4() -> None:
    async def go(w: World) -> None:
        server = w.add_host("server", V4_SERVER[0], V6_SERVER[0])
        s4 = await server.bind(V4_SERVER[0], 3478)
        s6 = await server.bind(V6_SERVER[0], 3478)
        in4, in6 = Inbox(s4), Inbox(s6)
        alice = home_host(w, "alice", 1)
        assert alice.has_ipv6 and alice.default_bind_host == "::"
        sock = await alice.bind("::")
        port = sock.local_address[1]
        sock.sendto(b"v4", V4_SERVER)
        sock.sendto(b"v6", V6_SERVER)
        sock.sendto(b"mapped", ("::ffff:198.51.100.1", 3478))  # IPv4-mapped: sent as IPv4
        back = Inbox(sock)
        await asyncio.sleep(0.1)
        assert [d for d, _ in in4.got] == [b"v4", b"mapped"]
        assert in4.got[0][1][0] == "203.0.113.1"  # NAT44 on IPv4
        assert in6.got == [(b"v6", ("2001:db8:1::2", port))]  # no translation on IPv6
        s6.sendto(b"answer", in6.got[0][1])
        s4.sendto(b"answer4", in4.got[0][1])
        await asyncio.sleep(0.1)
        assert sorted(back.got) == [(b"answer", V6_SERVER), (b"answer4", V4_SERVER)]

    sim(go)


def test_family_rules_of_sockets() -> None:
    async def go(w: World) -> None:
        w.add_host("server", V4_SERVER[0], V6_SERVER[0])
        alice = home_host(w, "alice", 1)
        s4 = await alice.bind("0.0.0.0")
        s4.sendto(b"x", V6_SERVER)  # an IPv4 socket cannot send IPv6 (EAFNOSUPPORT)
        assert s4.send_errors == 1
        only6 = home_host(w, "bob", 2, v4=False)
        assert only6.default_bind_host == "::"
        s = await only6.bind("::")
        s.sendto(b"x", V4_SERVER)  # no IPv4 address: ENETUNREACH
        assert s.send_errors == 1
        s.sendto(b"x", ("fe80::1%eth0", 3478))  # a zone id is refused like a bad address
        s.sendto(b"x", ("2001:db8::zz", 3478))
        assert s.send_errors == 3
        with pytest.raises(OSError) as e:
            await only6.bind("2001:db8:9::9")
        assert e.value.errno == errno.EADDRNOTAVAIL
        held = await alice.bind("::", 5000)
        with pytest.raises(OSError) as e:
            await alice.bind("0.0.0.0", 5000)  # a dual-stack wildcard holds both families
        assert e.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError):
            await alice.bind("2001:db8:1::2", 5000)
        held.close()
        await alice.bind("2001:db8:1::2", 5000)

    sim(go)


def test_stateful_firewalls_drop_unsolicited_and_open_by_simultaneous_open() -> None:
    async def go(w: World) -> None:
        a, b = home_host(w, "alice", 1), home_host(w, "bob", 2)
        sa, sb = await a.bind("::", 4000), await b.bind("::", 5000)
        ia, ib = Inbox(sa), Inbox(sb)
        A, B = ("2001:db8:1::2", 4000), ("2001:db8:2::2", 5000)
        sa.sendto(b"unsolicited", B)
        await asyncio.sleep(0.2)
        assert ib.got == []  # RFC 6092: inbound only in answer to an inside flow
        assert w.drop_reasons.get("firewall (apdf)") == 1
        sb.sendto(b"punch", A)  # alice's flow to bob exists: this passes alice's firewall
        await asyncio.sleep(0.2)
        assert ia.got == [(b"punch", B)]
        sa.sendto(b"again", B)  # bob's flow exists now too
        await asyncio.sleep(0.2)
        assert ib.got == [(b"again", A)]
        # another port of bob's host is not the flow alice opened (address and port dependent)
        other = await b.bind("::", 5001)
        other.sendto(b"sneak", A)
        await asyncio.sleep(0.2)
        assert len(ia.got) == 1

    sim(go)


def test_firewall_flows_expire_and_open_firewall_passes_all() -> None:
    fw = Firewall(FirewallConfig())
    inside, out = ("2001:db8:1::2", 4000), ("2001:db8:2::2", 5000)
    assert fw.outbound(0.0, inside, out) == Passed(new=True)
    assert not isinstance(fw.inbound(31.0, out, inside), Passed)  # unreplied: 30 s
    fw.outbound(40.0, inside, out)
    assert isinstance(fw.inbound(41.0, out, inside), Passed)  # replied: 120 s from now on
    assert isinstance(fw.inbound(160.0, out, inside), Passed)
    assert not isinstance(fw.inbound(281.0, out, inside), Passed)
    eif = Firewall(FirewallConfig("eif"))
    eif.outbound(0.0, inside, out)
    assert isinstance(eif.inbound(1.0, ("2001:db8:7::7", 9), inside), Passed)
    assert not isinstance(eif.inbound(1.0, ("2001:db8:7::7", 9), ("2001:db8:1::3", 1)), Passed)

    async def go(w: World) -> None:
        a = home_host(w, "alice", 1, firewall=False)
        sa = await a.bind("::", 4000)
        ia = Inbox(sa)
        srv = w.add_host("server", V6_SERVER[0])
        ss = await srv.bind(V6_SERVER[0], 3478)
        ss.sendto(b"in", ("2001:db8:1::2", 4000))  # no firewall: unsolicited passes
        ss.sendto(b"nobody", ("2001:db8:1::9", 4000))  # routed to the box, no such host
        await asyncio.sleep(0.1)
        assert ia.got == [(b"in", V6_SERVER)]
        assert any("no route to 2001:db8:1::9" in line for line in w.format_trace().splitlines())

    sim(go)


def test_ipv4_only_worlds_are_unchanged_by_ipv6() -> None:
    """Same seed, same IPv4 topology: a world with an unrelated IPv6 router added routes the
    IPv4 packets identically (no extra random draws on IPv4 paths)."""

    async def one(with_v6: bool) -> list[str]:
        w = World(3, trace=True, default_link=Link(0.01, 0.005, 0.1))
        t0 = w.now
        srv = w.add_host("server", V4_SERVER[0])
        ss = await srv.bind(V4_SERVER[0], 3478)
        ss.set_receiver(lambda d, addr: ss.sendto(d, addr))
        nat = w.add_nat("nat", nat_config("eim-apdf"), "203.0.113.1")
        h = nat.add_host("h", "10.0.1.2")
        if with_v6:
            w.add_nat("other", nat_config("eim-apdf"), "203.0.113.9").enable_ipv6(
                "2001:db8:9::/64", FirewallConfig()
            )
        s = await h.bind()
        for i in range(50):
            s.sendto(bytes([i]), V4_SERVER)
            await asyncio.sleep(0.01)
        await asyncio.sleep(1)
        return [f"{e.time - t0:.9f} {e}"[:12] + str(e)[11:] for e in w.trace if e.node != "other"]

    async def both() -> tuple[list[str], list[str]]:
        return await one(False), await one(True)

    x, y = run(both(), seed=3)
    assert x == y
