"""Moving datagrams over one established stream, both directions: raw TLS or WebSocket.

Shared by the relay (:mod:`.listener`) and the client (:mod:`.link`): once the TLS handshake
(and for WebSocket the HTTP upgrade) is done, a carrier sends datagrams without ever blocking
and pumps received ones to a callback.

* **Never blocks, bounded:** a datagram that would grow the transport's write buffer past
  :data:`MAX_WRITE_BUFFER` is dropped and counted, as a full UDP socket buffer drops it. A slow
  reader on the other side costs us at most that much memory, and stale media is worth nothing.
* **Reads are bounded too:** at most one partial datagram is held (:class:`.FrameDecoder`; for
  WebSocket ``max_size``), and a silent peer is closed after ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final

from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, State
from websockets.typing import Subprotocol

from punchthrough.relay.stream.framing import (
    MAX_STREAM_DATAGRAM,
    FrameDecoder,
    StreamFrameError,
    encode_datagram,
)

#: Bytes a carrier may leave in the transport's write buffer (beyond the kernel's socket
#: buffer): ~45 full datagrams, 6 s of a 50 pps voice call; beyond it new datagrams are dropped
#: (counted ``dropped_backlog``): a reader that far behind gains nothing from older media.
MAX_WRITE_BUFFER: Final = 64 * 1024
#: Bytes read from the socket at once.
READ_CHUNK: Final = 16 * 1024
#: WebSocket subprotocol (RFC 6455 section 1.9) of the relay, and its default URL path.
WS_SUBPROTOCOL: Final = Subprotocol("punchthrough-relay.v1")
WS_DEFAULT_PATH: Final = "/relay"

Deliver = Callable[[bytes], None]


class CarrierError(ConnectionError):
    """The other side broke the stream protocol (bad length, text frame, oversize message)."""


class Carrier:
    """Base: a transport to write to, counters, and the idle-bounded read loop."""

    kind = "stream"

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.transport = writer.transport
        self.sent = 0
        self.received = 0
        self.dropped_backlog = 0
        self.closed = False

    def send(self, datagram: bytes) -> bool:
        """Queue one datagram; False when it was dropped (closed, or the backlog is full)."""
        if self.closed or self.transport.is_closing():
            return False
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.dropped_backlog += 1
            return False
        self._write(datagram)
        self.sent += 1
        return True

    def _write(self, datagram: bytes) -> None:
        raise NotImplementedError

    def _feed(self, data: bytes) -> list[bytes]:
        raise NotImplementedError

    def _eof(self) -> int:
        """Bytes of a datagram cut off by the end of the stream."""
        return 0

    async def pump(self, reader: asyncio.StreamReader, deliver: Deliver, idle: float) -> int:
        """Deliver datagrams until EOF; returns truncated bytes at EOF. Raises
        :class:`CarrierError` on a protocol error and ``TimeoutError`` after ``idle`` seconds
        without a byte."""
        while not self.closed:
            async with asyncio.timeout(idle):
                data = await reader.read(READ_CHUNK)
            if not data:
                return self._eof()
            for datagram in self._feed(data):
                self.received += 1
                deliver(datagram)
        return 0

    def close(self) -> None:
        """Close the transport (TLS close_notify after the queued data). Idempotent."""
        if not self.closed:
            self.closed = True
            self.transport.close()


class RawCarrier(Carrier):
    """TLS with ALPN ``punchthrough-relay/1``: ``length (2) | datagram`` on the stream."""

    kind = "tls"

    def __init__(self, writer: asyncio.StreamWriter, initial: bytes = b"") -> None:
        super().__init__(writer)
        self._decoder = FrameDecoder()
        self._initial = initial

    def _write(self, datagram: bytes) -> None:
        self.transport.write(encode_datagram(datagram))

    def _feed(self, data: bytes) -> list[bytes]:
        if self._initial:
            data, self._initial = self._initial + data, b""
        try:
            return self._decoder.feed(data)
        except StreamFrameError as exc:
            raise CarrierError(str(exc)) from None

    def feed_initial(self) -> list[bytes]:
        """Datagrams in bytes read before the carrier was chosen (the ALPN-less peek)."""
        data, self._initial = self._initial, b""
        return self._feed(data) if data else []

    def _eof(self) -> int:
        return self._decoder.pending


class WsCarrier(Carrier):
    """WebSocket (RFC 6455) after the upgrade: one binary message per datagram, via the
    ``websockets`` sans-IO protocol (no framing written here). Text or fragmented messages
    are protocol errors: the relay protocol is datagrams."""

    kind = "websocket"

    def __init__(self, writer: asyncio.StreamWriter, protocol: Protocol) -> None:
        super().__init__(writer)
        self.protocol = protocol

    def _write(self, datagram: bytes) -> None:
        self.protocol.send_binary(datagram)
        self.flush()

    def flush(self) -> None:
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            else:  # SEND_EOF: TLS cannot half-close; the close follows
                self.closed = True
                self.transport.close()
                return

    def _feed(self, data: bytes) -> list[bytes]:
        self.protocol.receive_data(data)
        return self._frames(self.protocol.events_received())

    def _frames(self, events: Sequence[object]) -> list[bytes]:
        out: list[bytes] = []
        for event in events:
            if not isinstance(event, Frame):
                continue
            if event.opcode is Opcode.BINARY and event.fin:
                out.append(bytes(event.data))
            elif event.opcode in (Opcode.TEXT, Opcode.CONT, Opcode.BINARY):
                self.protocol.fail(1003, "one binary message per datagram")
                self.flush()
                raise CarrierError("text or fragmented WebSocket message")
            elif event.opcode is Opcode.CLOSE:
                self.flush()
        self.flush()  # pongs, the close handshake
        if self.protocol.parser_exc is not None:
            raise CarrierError(f"WebSocket: {self.protocol.parser_exc}")
        if self.protocol.state is State.CLOSED:
            self.close()
        return out

    def _eof(self) -> int:
        self.protocol.receive_eof()
        self.protocol.events_received()
        return 0


def ws_max_size() -> int:
    """``max_size`` for the ``websockets`` protocols: one datagram."""
    return MAX_STREAM_DATAGRAM
