"""A UDP socket read in batches, for servers whose hot path must skip the per-datagram layers.

:class:`BatchedUdpSocket` is a :class:`~punchthrough.netio.base.DatagramSocket` (so STUN, QUIC
and everything else use it unchanged) that reads with the event loop's ``add_reader`` instead of
an asyncio transport: on each wake-up it drains the socket in a bounded number of batches into
preallocated slots (``recvmmsg`` on Linux, a ``recvfrom_into`` loop elsewhere) and hands each
batch to a *batch handler*. The handler may rewrite slots in place and queue them for sending
(``sendmmsg``, with UDP GSO where the kernel has it), and passes every datagram it does not
take to :meth:`BatchedUdpSocket.slow`, which delivers it as ``bytes`` to the ordinary
receiver. With no batch handler every datagram takes the ordinary way.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Final, Protocol

from punchthrough.netio import mmsg
from punchthrough.netio.base import Address, DatagramReceiver, SocketState

log = logging.getLogger(__name__)

#: Batches drained per wake-up before yielding to the event loop (QUIC timers, control
#: streams): 16 x 64 datagrams is ~5 ms of work at 200k datagrams/s.
MAX_BATCHES_PER_WAKE: Final = 16
#: Socket buffers: 4 MiB absorbs ~20 ms of a 200k/s burst while the loop runs other work
#: (the kernel caps it at net.core.rmem_max / wmem_max unless root raises those).
SOCKET_BUFFER: Final = 4 * 1024 * 1024


class PortableRecvBatch:
    """:class:`~punchthrough.netio.mmsg.RecvBatch`'s interface over ``recvfrom_into``."""

    def __init__(self, family: int, count: int = mmsg.BATCH, slot: int = mmsg.SLOT) -> None:
        self.count = count
        self.slot = slot
        self.family = family
        self.salen = mmsg.sockaddr_length(family)
        self.data = bytearray(count * slot)
        self.view = memoryview(self.data)
        self.lengths = [0] * count
        self._sources: list[bytes] = [b""] * count

    def recv(self, sock: socket.socket) -> int:
        got = 0
        view, slot = self.view, self.slot
        while got < self.count:
            try:
                n, addr = sock.recvfrom_into(view[got * slot : (got + 1) * slot])
            except (BlockingIOError, InterruptedError):
                break
            self.lengths[got] = n
            self._sources[got] = mmsg.encode_sockaddr(self.family, (addr[0], addr[1]))
            got += 1
        return got

    def source(self, i: int) -> bytes:
        return self._sources[i]


class PortableSendBatch:
    """:class:`~punchthrough.netio.mmsg.SendBatch`'s interface over ``sendto``."""

    def __init__(self, source: PortableRecvBatch) -> None:
        self._source = source
        self._queue: list[tuple[int, int, bytes]] = []

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, i: int, length: int, sockaddr: bytes) -> None:
        self._queue.append((i, length, sockaddr))

    def flush(self, sock: socket.socket) -> tuple[int, int]:
        sent = failed = 0
        view, slot = self._source.view, self._source.slot
        for i, length, sockaddr in self._queue:
            try:
                sock.sendto(view[i * slot : i * slot + length], mmsg.decode_sockaddr(sockaddr))
                sent += 1
            except OSError:
                failed += 1
        self._queue.clear()
        return sent, failed


RecvSlots = mmsg.RecvBatch | PortableRecvBatch
SendSlots = mmsg.SendBatch | PortableSendBatch


class BatchHandler(Protocol):
    """Takes the ``got`` datagrams in ``batch``: forwards some with ``out.add(i, ...)`` and
    passes the rest to ``slow(i)``."""

    def __call__(
        self, batch: RecvSlots, got: int, out: SendSlots, slow: Callable[[int], None]
    ) -> None: ...


class BatchedUdpSocket(SocketState):
    """A bound UDP socket drained in batches (see the module docstring)."""

    def __init__(self, sock: socket.socket, *, batched: bool | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._fd = sock.fileno()
        family = sock.family
        #: ``recvmmsg``/``sendmmsg`` (Linux) unless told otherwise; the portable path else.
        self.batched = mmsg.available() if batched is None else batched and mmsg.available()
        self._in: RecvSlots
        self._out: SendSlots
        if self.batched:
            self._in = mmsg.RecvBatch(family)
            self._out = mmsg.SendBatch(self._in, gso=mmsg.gso_supported(sock))
        else:
            self._in = PortableRecvBatch(family)
            self._out = PortableSendBatch(self._in)
        name = sock.getsockname()
        self._local: Address = (str(name[0]), int(name[1]))
        self._receiver: DatagramReceiver | None = None
        self._handler: BatchHandler | None = None
        self._closed = False
        self._send_errors = 0
        #: Datagrams read, and wake-ups that hit MAX_BATCHES_PER_WAKE (the socket stayed busy).
        self.received = 0
        self.busy_wakeups = 0
        self._loop.add_reader(self._fd, self._on_readable)

    @classmethod
    async def bind(
        cls, host: str = "0.0.0.0", port: int = 0, *, batched: bool | None = None
    ) -> BatchedUdpSocket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            sock.bind((host, port))
            return cls(sock, batched=batched)
        except BaseException:
            sock.close()
            raise

    # -- DatagramSocket ----------------------------------------------------------------------
    @property
    def family(self) -> int:
        return self._sock.family

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closed:
            raise self._closed_error()
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:  # full buffer, ICMP error: UDP drops, we count
            self._send_errors += 1
            log.debug("udp socket %s:%d send error: %s", *self._local, exc)

    def set_receiver(self, receiver: DatagramReceiver | None) -> None:
        self._receiver = receiver

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._sock.close()

    # -- batches -----------------------------------------------------------------------------
    def set_batch_handler(self, handler: BatchHandler | None) -> None:
        """Install the fast path (``None``: every datagram goes to the receiver)."""
        self._handler = handler

    def slow(self, i: int) -> None:
        """Deliver slot ``i`` of the current batch to the receiver as ``bytes``."""
        receiver = self._receiver
        if receiver is None or self._closed:
            return
        batch = self._in
        at = i * batch.slot
        data = bytes(batch.view[at : at + batch.lengths[i]])
        try:
            receiver(data, mmsg.decode_sockaddr(batch.source(i)))
        except Exception:  # a buggy consumer must not kill the event loop's reader
            log.exception("datagram receiver failed on %d bytes", len(data))

    def _on_readable(self) -> None:
        batch, out = self._in, self._out
        for _ in range(MAX_BATCHES_PER_WAKE):
            if self._closed:
                return
            try:
                got = batch.recv(self._sock)
            except OSError as exc:  # an ICMP error queued on the socket: count, go on
                self._send_errors += 1
                log.debug("udp socket %s:%d receive error: %s", *self._local, exc)
                continue
            if not got:
                return
            self.received += got
            handler = self._handler
            if handler is None:
                for i in range(got):
                    self.slow(i)
            else:
                try:
                    handler(batch, got, out, self.slow)
                except Exception:  # the fast path must never stop the reader
                    log.exception("batch handler failed on %d datagrams", got)
            if out.pending and not self._closed:
                _, failed = out.flush(self._sock)
                self._send_errors += failed
            if got < batch.count:
                return
        self.busy_wakeups += 1
