"""Wire encoding of signal messages: a versioned msgpack envelope, and stream framing.

Message (one datagram, or one frame's payload)::

    msgpack map {"v": <int version>, "msg": <map with "type": <tag>, ...fields>}

The envelope is decoded first with ``msg`` left raw, so an unknown version is reported as
:class:`UnsupportedVersion` (with our versions, for the reply) rather than as whatever shape
error the unknown message would cause.

Frame (on a reliable stream)::

    uint32 big-endian payload length | payload (one message as above)

A length above :data:`MAX_FRAME_SIZE` is rejected as soon as the 4-byte header arrives, before
any payload is buffered.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Final

import msgspec

from punchthrough.identity import PeerId
from punchthrough.signal.errors import (
    MessageTooLarge,
    SignalDecodeError,
    SignalEncodeError,
    UnsupportedVersion,
)
from punchthrough.signal.messages import AnyMessage, Message

#: The signal version this code writes.
PROTOCOL_VERSION: Final = 1
#: Versions this code reads.
SUPPORTED_VERSIONS: Final = frozenset({1})
#: Largest encoded message. The largest legal message (a full HardNatBirthdayStart or
#: Candidates) is ~8 KiB; 16 KiB leaves headroom and still fits one QUIC stream flow-control
#: window without blocking (aioquic's default is 1 MiB).
MAX_MESSAGE_SIZE: Final = 16 * 1024
#: Largest frame payload on a stream (one message).
MAX_FRAME_SIZE: Final = MAX_MESSAGE_SIZE
#: Frame header: uint32 big-endian length.
FRAME_HEADER: Final = struct.Struct("!I")


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    v: Any
    msg: msgspec.Raw


def _enc_hook(obj: object) -> object:
    if isinstance(obj, PeerId):
        return obj.raw
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(tp: type, obj: object) -> object:
    if tp is PeerId:
        if not isinstance(obj, bytes):
            raise TypeError(f"expected a 32-byte peer id, got {type(obj).__name__}")
        return PeerId(obj)  # InvalidPeerId is a ValueError -> msgspec.ValidationError
    raise NotImplementedError(f"cannot decode {tp}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)
_message_decoder: msgspec.msgpack.Decoder[AnyMessage] = msgspec.msgpack.Decoder(
    AnyMessage,
    dec_hook=_dec_hook,
)


def negotiate_version(offered: Iterable[int]) -> int:
    """Highest version both sides speak (from the peer's ``Hello.versions``)."""
    offered = tuple(offered)
    common = SUPPORTED_VERSIONS.intersection(offered)
    if not common:
        raise UnsupportedVersion(offered, SUPPORTED_VERSIONS)
    return max(common)


def _decode_unchecked(data: bytes | bytearray | memoryview) -> AnyMessage:
    try:
        env = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise SignalDecodeError(f"bad signal envelope: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports invalid UTF-8 in a string as UnicodeDecodeError (found by fuzzing)
        raise SignalDecodeError(f"not a signal message (malformed msgpack): {exc}") from None
    if type(env.v) is not int or env.v not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(env.v, SUPPORTED_VERSIONS)
    try:
        return _message_decoder.decode(env.msg)
    except msgspec.ValidationError as exc:
        raise SignalDecodeError(f"invalid signal message: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SignalDecodeError(f"malformed signal message: {exc}") from None


def decode(data: bytes | bytearray | memoryview) -> AnyMessage:
    """Decode one message; raises only :class:`SignalDecodeError` (and its subclasses)."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(len(data), MAX_MESSAGE_SIZE)
    try:
        return _decode_unchecked(data)
    except (RecursionError, MemoryError, OverflowError) as exc:  # pragma: no cover - belt
        raise SignalDecodeError(f"signal message rejected: {type(exc).__name__}") from None


def encode(msg: Message) -> bytes:
    """Encode one message in the current version's envelope.

    The bytes are decoded back before returning: msgspec checks field constraints only when
    decoding, and sending a message the peer must reject would be a bug found far from its
    cause. Raises :class:`SignalEncodeError` naming the offending field.
    """
    if not isinstance(msg, Message):
        raise SignalEncodeError(f"not a signal message: {type(msg).__name__}")
    data = _encoder.encode({"v": PROTOCOL_VERSION, "msg": msg})
    if len(data) > MAX_MESSAGE_SIZE:
        raise SignalEncodeError(
            f"{type(msg).__name__} encodes to {len(data)} bytes, over {MAX_MESSAGE_SIZE}"
        )
    try:
        _decode_unchecked(data)
    except SignalDecodeError as exc:
        raise SignalEncodeError(
            f"refusing to send an invalid {type(msg).__name__}: {exc}"
        ) from None
    return data


def encode_frame(msg: Message) -> bytes:
    """One message as a length-prefixed frame for a stream."""
    payload = encode(msg)
    return FRAME_HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Sans-IO stream reassembler: ``feed`` bytes as they arrive, then ``next_message()``.

    A frame with a bad payload raises :class:`SignalDecodeError` once and is consumed; the
    stream stays in sync, so the caller may reply and keep going. An oversize length header
    raises :class:`MessageTooLarge` and poisons the decoder (the stream cannot be resynced:
    close it).
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be 1..{MAX_FRAME_SIZE}")
        self._max = max_frame_size
        self._buf = bytearray()
        self._error: MessageTooLarge | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf)

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is None:  # after a fatal error, do not keep buffering a peer's bytes
            self._buf += data

    def next_message(self) -> AnyMessage | None:
        """The next complete message, or ``None`` if more bytes are needed."""
        if self._error is not None:
            raise self._error
        if len(self._buf) < FRAME_HEADER.size:
            return None
        (length,) = FRAME_HEADER.unpack_from(self._buf)
        if length > self._max:
            self._error = MessageTooLarge(length, self._max)
            self._buf.clear()
            raise self._error
        end = FRAME_HEADER.size + length
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[FRAME_HEADER.size : end])
        del self._buf[:end]
        return decode(payload)

    def messages(self) -> list[AnyMessage]:
        """Every complete message buffered now (raises at the first bad frame, see above)."""
        out: list[AnyMessage] = []
        while (msg := self.next_message()) is not None:
            out.append(msg)
        return out

    def eof(self) -> None:
        """The stream ended: raise :class:`SignalDecodeError` if it ended inside a frame."""
        if self._error is None and self._buf:
            n = len(self._buf)
            self._buf.clear()
            raise SignalDecodeError(f"stream ended inside a frame ({n} bytes pending)")
