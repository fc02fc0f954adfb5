"""Kernel UDP sockets behind the :class:`~punchthrough.netio.base.DatagramSocket` protocol."""

from __future__ import annotations

import asyncio
import logging
import socket

from punchthrough.netio.base import Address, DatagramReceiver, DatagramSocket, SocketClosed

log = logging.getLogger(__name__)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpSocket) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self._owner._deliver(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: UDP semantics say drop, so count and move on.
        self._owner._count_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._mark_closed()


class UdpSocket:
    """An asyncio datagram transport wrapped as a :class:`DatagramSocket`."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None
        self._receiver: DatagramReceiver | None = None
        self._closed = False
        self._send_errors = 0
        self._local: Address = ("0.0.0.0", 0)

    @classmethod
    async def bind(cls, host: str = "0.0.0.0", port: int = 0) -> UdpSocket:
        self = cls()
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, port), family=family
        )
        self._transport = transport
        sockname = self._transport.get_extra_info("sockname")
        self._local = (str(sockname[0]), int(sockname[1]))
        return self

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def send_errors(self) -> int:
        return self._send_errors

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closed or self._transport is None:
            raise SocketClosed(f"socket {self._local[0]}:{self._local[1]} is closed")
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
        """IPv4 addresses of this machine's interfaces that are up (host candidates)."""
        return interface_addresses()


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
