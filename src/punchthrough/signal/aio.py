"""Thin asyncio helpers: one framed message from a reader, or to a writer, with timeouts.

Timeouts use ``asyncio.timeout`` (the running loop's clock), so the simulator's virtual time
drives them. After a timeout or error in the middle of a frame the stream is out of sync and
must be closed; for message-at-a-time reads over a long-lived stream prefer feeding a
:class:`~punchthrough.signal.codec.FrameDecoder` from the stream's data callback.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

from punchthrough.signal.codec import FRAME_HEADER, MAX_FRAME_SIZE, decode, encode_frame
from punchthrough.signal.errors import MessageTooLarge, SignalDecodeError, SignalTimeout
from punchthrough.signal.messages import AnyMessage, Message

#: Default bound on how long a write may wait for the peer to drain (flow control).
DEFAULT_WRITE_TIMEOUT: Final = 10.0


class Reader(Protocol):
    async def readexactly(self, n: int) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


async def read_message(
    reader: Reader, *, timeout: float | None = None, max_frame_size: int = MAX_FRAME_SIZE
) -> AnyMessage | None:
    """Read one framed message; ``None`` on a clean end of stream (between frames).

    Raises :class:`SignalTimeout`, :class:`MessageTooLarge` or :class:`SignalDecodeError`
    (including for a stream that ends inside a frame).
    """
    try:
        async with asyncio.timeout(timeout):
            try:
                header = await reader.readexactly(FRAME_HEADER.size)
            except asyncio.IncompleteReadError as exc:
                if not exc.partial:
                    return None
                raise SignalDecodeError("stream ended inside a frame header") from None
            (length,) = FRAME_HEADER.unpack(header)
            if length > max_frame_size:
                raise MessageTooLarge(length, max_frame_size)
            try:
                payload = await reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                raise SignalDecodeError(
                    f"stream ended inside a frame ({len(exc.partial)} of {length} bytes)"
                ) from None
    except TimeoutError:
        raise SignalTimeout(f"no complete signal message within {timeout} s") from None
    return decode(payload)


async def write_message(
    writer: Writer, msg: Message, *, timeout: float | None = DEFAULT_WRITE_TIMEOUT
) -> None:
    """Frame and write one message, waiting (bounded) for flow control."""
    writer.write(encode_frame(msg))
    try:
        async with asyncio.timeout(timeout):
            await writer.drain()
    except TimeoutError:
        raise SignalTimeout(f"peer did not accept a signal message within {timeout} s") from None
