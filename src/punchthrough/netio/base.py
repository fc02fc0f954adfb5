"""Protocols for datagram sockets: the seam between endpoint logic and the world it runs in."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

#: An (IP text, port) pair. IPv4 dotted quad or IPv6 text form, as the kernel reports it.
Address = tuple[str, int]

#: Called once per received datagram with (payload, source address). Must not block.
DatagramReceiver = Callable[[bytes, Address], None]


class SocketClosed(OSError):
    """Raised when sending on a socket that has been closed."""


@runtime_checkable
class DatagramSocket(Protocol):
    """One bound UDP socket.

    The socket does not own the protocols that use it: whoever created it installs one receiver
    (later a demultiplexer) that hands each datagram to the STUN client, the relay client or a
    QUIC connection. Sending never blocks; a datagram the network cannot take is dropped, as UDP
    would, and counted in ``send_errors``.
    """

    @property
    def local_address(self) -> Address:
        """The address the socket is bound to (as the socket sees it, before any NAT)."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def send_errors(self) -> int:
        """Datagrams that could not be sent (ICMP errors, full buffers)."""
        ...

    def sendto(self, data: bytes, addr: Address) -> None:
        """Send one datagram. Raises :class:`SocketClosed` after :meth:`close`."""
        ...

    def set_receiver(self, receiver: DatagramReceiver | None) -> None:
        """Install the single consumer of incoming datagrams (``None`` drops them)."""
        ...

    def close(self) -> None:
        """Release the socket. Idempotent."""
        ...


class SocketState:
    """The three facts every :class:`DatagramSocket` reports, kept the same way by each
    implementation (real, batched, stream hub, simulated): where it is bound, whether it is
    closed, how many sends failed. Subclasses set the attributes in their constructor."""

    _local: Address
    _closed: bool
    _send_errors: int

    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def send_errors(self) -> int:
        return self._send_errors

    def _closed_error(self) -> SocketClosed:
        return SocketClosed(f"socket {self._local[0]}:{self._local[1]} is closed")


@runtime_checkable
class Network(Protocol):
    """Something that can bind datagram sockets: the kernel, or a simulated host."""

    async def bind(self, host: str = "0.0.0.0", port: int = 0) -> DatagramSocket:
        """Bind a UDP socket; ``port=0`` lets the stack choose. Raises ``OSError`` on failure."""
        ...
