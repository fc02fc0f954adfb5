"""Datagrams on a byte stream: a 2-byte length before each one (sans-IO).

The relay protocol is datagrams (STUN, QUIC, SEND/DATA/NOTICE frames, first byte decides). On
TLS each datagram is sent as ``length (2 bytes, big endian) | datagram``; on WebSocket each one
is a binary message and needs no prefix. Nothing else is added: the relay's first-byte
demultiplexer sees exactly the datagrams it sees on UDP, so there is no second protocol.

A zero length or one over :data:`MAX_STREAM_DATAGRAM` is a protocol error (the connection is
closed and counted): nothing the relay protocol sends is that big, so the bound is what keeps
a peer from making us buffer more than one datagram per connection.
"""

from __future__ import annotations

from typing import Final

#: Largest datagram on a stream link: an Ethernet MTU's payload. Everything the relay protocol
#: sends fits: a SEND frame is at most 1441 bytes (``relay.frames.MAX_SEND_FRAME``), QUIC
#: control packets at most 1200 (aioquic's ``max_datagram_size``), STUN a few hundred.
MAX_STREAM_DATAGRAM: Final = 1500
#: Bytes of the length prefix (big endian; 65535 would be the format's own limit).
LENGTH_BYTES: Final = 2


class StreamFrameError(ValueError):
    """A length prefix of 0 or over :data:`MAX_STREAM_DATAGRAM`: the peer does not speak us."""


def encode_datagram(datagram: bytes) -> bytes:
    """``datagram`` with its length prefix. Raises :class:`StreamFrameError` if it cannot fit."""
    n = len(datagram)
    if not 0 < n <= MAX_STREAM_DATAGRAM:
        raise StreamFrameError(f"a stream datagram is 1-{MAX_STREAM_DATAGRAM} bytes, got {n}")
    return n.to_bytes(LENGTH_BYTES, "big") + datagram


class FrameDecoder:
    """Feed bytes as they arrive; take whole datagrams out. Holds at most one partial datagram
    (``MAX_STREAM_DATAGRAM + LENGTH_BYTES`` bytes) beyond what it was fed in one call."""

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int = MAX_STREAM_DATAGRAM) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[bytes]:
        """The datagrams completed by ``data`` (in order). Raises :class:`StreamFrameError` on a
        bad length prefix; the decoder is then unusable (close the connection)."""
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= LENGTH_BYTES:
            n = int.from_bytes(buf[pos : pos + LENGTH_BYTES], "big")
            if not 0 < n <= self.max_size:
                raise StreamFrameError(f"stream datagram length {n} is not 1-{self.max_size}")
            if end - pos - LENGTH_BYTES < n:
                break
            start = pos + LENGTH_BYTES
            out.append(bytes(buf[start : start + n]))
            pos = start + n
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes held: a partial datagram (a truncated one at EOF is counted by the caller)."""
        return len(self._buf)
