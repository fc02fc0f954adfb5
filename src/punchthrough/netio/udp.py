"""Kernel UDP sockets behind the :class:`~punchthrough.netio.base.DatagramSocket` protocol.

Dual stack is ONE ``AF_INET6`` socket bound to ``::`` with ``IPV6_V6ONLY=0``, not one socket
per family. Why: everything above the socket is built on one base (the relay registration, the
STUN-observed addresses, the QUIC connection's fixed virtual peer address, the check engine's
pairs); with one socket an address learned by STUN over either family is tied to the very
socket that sends checks and QUIC to both, and moving a call from the relay (IPv4) to a direct
IPv6 path is a routing change on the same socket. Two sockets would give every candidate, pair,
path and relay registration a second base to carry. What it costs: IPv4 peers appear as
``::ffff:a.b.c.d`` (mapped back here, both ways), and a host whose kernel has IPv6 disabled (or
a BSD that forbids ``V6ONLY=0``) cannot open it: :attr:`UdpNetwork.default_bind_host` then
falls back to ``0.0.0.0``, the IPv4-only endpoint of before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Final

from punchthrough.netio.base import (
    Address,
    DatagramReceiver,
    DatagramSocket,
    SocketState,
)

log = logging.getLogger(__name__)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpSocket) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._owner._deliver(data, (unmap_ip(str(addr[0])), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: UDP semantics say drop, so count and move on.
        self._owner._count_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._mark_closed()


class UdpSocket(SocketState):
    """An asyncio datagram transport wrapped as a :class:`DatagramSocket`."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: DatagramReceiver | None = None
        self._closed = False
        self._send_errors = 0
        self._local: Address = ("0.0.0.0", 0)
        self._dual = False

    @classmethod
    async def bind(cls, host: str = "0.0.0.0", port: int = 0) -> UdpSocket:
        self = cls()
        loop = asyncio.get_running_loop()
        if host == DUAL_STACK:
            # One socket for both families (IPV6_V6ONLY=0 explicitly: the sysctl default
            # net.ipv6.bindv6only may say otherwise); see the module docstring for why.
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((host, port))
                sock.setblocking(False)
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Protocol(self), sock=sock
                )
            except BaseException:
                sock.close()
                raise
            self._dual = True
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(host, port), family=family
            )
        self._transport = transport
        sockname = self._transport.get_extra_info("sockname")
        self._local = (str(sockname[0]), int(sockname[1]))
        return self

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closed or self._transport is None:
            raise self._closed_error()
        if self._dual and ":" not in addr[0]:
            addr = ("::ffff:" + addr[0], addr[1])  # IPv4 on the dual-stack socket
        try:
            self._transport.sendto(data, addr)
        except OSError as exc:
            self._count_error(exc)

    def set_receiver(self, receiver: DatagramReceiver | None) -> None:
        self._receiver = receiver

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def _deliver(self, data: bytes, addr: Address) -> None:
        receiver = self._receiver
        if receiver is None or self._closed:
            return
        try:
            receiver(data, addr)
        except Exception:  # a buggy consumer must not kill the event loop's reader
            log.exception("datagram receiver failed on %d bytes from %s:%d", len(data), *addr)

    def _count_error(self, exc: Exception) -> None:
        self._send_errors += 1
        log.debug("udp socket %s:%d error: %s", *self._local, exc)

    def _mark_closed(self) -> None:
        self._closed = True


class UdpNetwork:
    """The kernel's network: :meth:`bind` returns real UDP sockets."""

    async def bind(self, host: str = "0.0.0.0", port: int = 0) -> DatagramSocket:
        return await UdpSocket.bind(host, port)

    def interface_addresses(self) -> list[str]:
        """IPv4 addresses of this machine's interfaces that are up, then its global IPv6
        addresses (host candidates)."""
        return interface_addresses() + ipv6_interface_addresses()

    @property
    def default_bind_host(self) -> str:
        """``::`` (one dual-stack socket) when this machine has a global IPv6 address and
        can open a dual-stack socket, else ``0.0.0.0`` (IPv4 only, as before IPv6)."""
        if not ipv6_interface_addresses():
            return "0.0.0.0"
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError:
            return "0.0.0.0"
        return DUAL_STACK


#: Bind here for one socket that speaks both families (``IPV6_V6ONLY=0``).
DUAL_STACK: Final = "::"
#: Linux's list of IPv6 interface addresses: address, ifindex, prefix length, scope, flags, name.
_IF_INET6: Final = "/proc/net/if_inet6"
#: ``IFA_F_TEMPORARY`` and ``IFA_F_DEPRECATED`` (linux/if_addr.h): privacy addresses rotate and a
#: deprecated one is on its way out: neither is offered (no address churn in the middle of a call).
_IFA_F_TEMPORARY: Final = 0x01
_IFA_F_DEPRECATED: Final = 0x20
#: Scope 0x00 is global in ``if_inet6`` (0x20 link, 0x10 host).
_SCOPE_GLOBAL: Final = 0x00


def unmap_ip(ip: str) -> str:
    """``::ffff:a.b.c.d`` (an IPv4 peer on a dual-stack socket) -> ``a.b.c.d``."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def ipv6_interface_addresses(path: str = _IF_INET6) -> list[str]:
    """Global, stable IPv6 addresses of this machine (Linux ``/proc``; empty elsewhere)."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or len(fields[0]) != 32:
            continue
        try:
            scope, flags = int(fields[3], 16), int(fields[4], 16)
            ip = str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
        except ValueError:
            continue
        if scope != _SCOPE_GLOBAL or flags & (_IFA_F_TEMPORARY | _IFA_F_DEPRECATED):
            continue
        if ip not in out:
            out.append(ip)
    return out


#: ``SIOCGIFADDR`` (linux/sockios.h): an interface's IPv4 address; ``struct ifreq`` is 40 bytes.
_SIOCGIFADDR = 0x8915
_IFREQ_SIZE = 40


def interface_addresses() -> list[str]:
    """IPv4 addresses of the interfaces (Linux ioctl; empty where that is unavailable).

    No packet is sent. Interfaces without an IPv4 address are skipped.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        return []
    out: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            req = name.encode()[:15].ljust(_IFREQ_SIZE, b"\0")
            try:
                res = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, req)
            except OSError:
                continue
            ip = socket.inet_ntoa(res[20:24])  # ifr_addr: sockaddr_in at offset 16, addr at +4
            if ip not in out:
                out.append(ip)
    return out
