"""STUN messages: header codec, attribute walk, MESSAGE-INTEGRITY and FINGERPRINT (RFC 8489).

Decoding is strict: every rule of RFC 8489 §5 and §14 that a datagram can break raises
:class:`StunDecodeError` with the rule in its message. Policy choices, documented here once:

* A duplicate of an attribute we interpret is an error (RFC 8489 §14 would let a receiver keep
  the first; silently picking one copy is how parser-differential attacks start). Duplicates of
  attributes we keep raw are all kept, in order.
* Attributes after MESSAGE-INTEGRITY, other than FINGERPRINT, are framed-checked but otherwise
  ignored: they are not authenticated (RFC 8489 §14.5).
* FINGERPRINT must be the last attribute (RFC 8489 §14.7) and must match, else the datagram is
  rejected: a wrong fingerprint means "not STUN" on a multiplexed socket.
* At most :data:`~.constants.MAX_ATTRIBUTES` attributes, counted on the wire (those ignored
  after MESSAGE-INTEGRITY too): the work per datagram is bounded by that, not by its size, and
  every step per attribute is constant time (set look-ups; the CRC and HMAC input are built at
  most once each).
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TypeVar

from punchthrough.stun.attributes import (
    Attribute,
    Fingerprint,
    MessageIntegrity,
    RawAttribute,
    attribute_name,
    decode_attribute_value,
)
from punchthrough.stun.constants import (
    ATTRIBUTE_ALIGNMENT,
    ATTRIBUTE_HEADER_LENGTH,
    FINGERPRINT_VALUE_LENGTH,
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    HEADER_ZERO_BITS_MASK,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    MAX_ATTRIBUTES,
    MESSAGE_INTEGRITY_VALUE_LENGTH,
    TRANSACTION_ID_LENGTH,
    AttributeType,
)
from punchthrough.stun.errors import StunDecodeError

A = TypeVar("A", bound=Attribute)

#: Largest method number: 12 bits (RFC 8489 §5).
MAX_METHOD = 0xFFF


class MessageClass(IntEnum):
    """The two class bits C1 C0 (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS_RESPONSE = 0b10
    ERROR_RESPONSE = 0b11


class Method(IntEnum):
    """Methods this package implements (RFC 8489 §18.2)."""

    BINDING = 0x001


def new_transaction_id() -> bytes:
    """96 random bits from the OS CSPRNG, as RFC 8489 §5 asks (blind spoofing protection)."""
    return os.urandom(TRANSACTION_ID_LENGTH)


def _padded(length: int) -> int:
    return (length + ATTRIBUTE_ALIGNMENT - 1) & ~(ATTRIBUTE_ALIGNMENT - 1)


def encode_message_type(method: int, message_class: int) -> int:
    """Interleave the 12 method bits with the 2 class bits (RFC 8489 §5, figure 3)."""
    if not 0 <= method <= MAX_METHOD:
        raise ValueError(f"method 0x{method:X} does not fit in 12 bits")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def decode_message_type(message_type: int) -> tuple[int, MessageClass]:
    """Inverse of :func:`encode_message_type`; known methods come back as :class:`Method`."""
    t = message_type
    method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80)
    klass = MessageClass(((t >> 4) & 0b01) | ((t >> 7) & 0b10))
    known: int = Method(method) if method in Method._value2member_map_ else method
    return known, klass


@dataclass
class Message:
    """One STUN message. ``attributes`` keeps wire order.

    ``method`` is a :class:`Method` when known, else the raw 12-bit number.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes = field(default_factory=new_transaction_id)
    attributes: list[Attribute] = field(default_factory=list)
    #: For decoded messages carrying MESSAGE-INTEGRITY: the exact bytes the HMAC covers.
    integrity_input: bytes | None = field(default=None, compare=False, repr=False)
    #: Number of attributes skipped because they followed MESSAGE-INTEGRITY (RFC 8489 §14.5).
    ignored_after_integrity: int = field(default=0, compare=False, repr=False)

    def get(self, kind: type[A]) -> A | None:
        """The first attribute of this class, or None."""
        for attr in self.attributes:
            if isinstance(attr, kind):
                return attr
        return None

    def unknown_comprehension_required(self) -> list[int]:
        """Types an agent must reject with 420 (RFC 8489 §6.3.1), in order, deduplicated."""
        seen: dict[int, None] = {}  # ordered set: linear, not quadratic, in the attribute count
        for attr in self.attributes:
            if isinstance(attr, RawAttribute) and attr.comprehension_required:
                seen[attr.type] = None
        return list(seen)

    def check_integrity(self, key: bytes) -> bool:
        """Verify MESSAGE-INTEGRITY with ``key`` (constant time). False when absent."""
        mi = self.get(MessageIntegrity)
        if mi is None or self.integrity_input is None:
            return False
        expected = hmac.new(key, self.integrity_input, hashlib.sha1).digest()
        return hmac.compare_digest(mi.digest, expected)


def short_term_key(password: str) -> bytes:
    """Short-term credential key (RFC 8489 §9.1.1). OpaqueString processing is not applied."""
    return password.encode("utf-8")


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Long-term credential key MD5(username:realm:password) (RFC 8489 §9.2.2)."""
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(text, usedforsecurity=False).digest()


def _with_length(header_and_body: bytes, body_length: int) -> bytes:
    return header_and_body[:2] + body_length.to_bytes(2, "big") + header_and_body[4:]


def _fingerprint(data_before: bytes) -> int:
    # The length field counts the FINGERPRINT attribute itself (RFC 8489 §14.7).
    body = len(data_before) - HEADER_LENGTH + ATTRIBUTE_HEADER_LENGTH + FINGERPRINT_VALUE_LENGTH
    return (binascii.crc32(_with_length(data_before, body)) & 0xFFFFFFFF) ^ FINGERPRINT_XOR


def _integrity_input(data_before: bytes) -> bytes:
    # The length field counts up to and including MESSAGE-INTEGRITY (RFC 8489 §14.5).
    body = (
        len(data_before) - HEADER_LENGTH + ATTRIBUTE_HEADER_LENGTH + MESSAGE_INTEGRITY_VALUE_LENGTH
    )
    return _with_length(data_before, body)


def _encode_attribute(type_code: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"{attribute_name(type_code)}: value of {len(value)} bytes is too long")
    pad = _padded(len(value)) - len(value)
    return type_code.to_bytes(2, "big") + len(value).to_bytes(2, "big") + value + bytes(pad)


def encode(
    message: Message, *, integrity_key: bytes | None = None, fingerprint: bool = False
) -> bytes:
    """Serialize ``message``.

    MESSAGE-INTEGRITY (when ``integrity_key`` is given) and FINGERPRINT (when ``fingerprint``)
    are computed and appended in that order; instances of them in ``message.attributes`` are
    skipped so that a decoded message can be re-encoded. Padding bytes are zero.
    """
    txid = message.transaction_id
    if len(txid) != TRANSACTION_ID_LENGTH:
        raise ValueError(f"transaction id must be {TRANSACTION_ID_LENGTH} bytes, got {len(txid)}")
    body = b"".join(
        _encode_attribute(attr.type_code, attr.encode_value(txid))
        for attr in message.attributes
        if not isinstance(attr, MessageIntegrity | Fingerprint)
    )
    header = (
        encode_message_type(message.method, message.message_class).to_bytes(2, "big")
        + len(body).to_bytes(2, "big")
        + MAGIC_COOKIE_BYTES
        + txid
    )
    data = header + body
    if integrity_key is not None:
        digest = hmac.new(integrity_key, _integrity_input(data), hashlib.sha1).digest()
        data += _encode_attribute(AttributeType.MESSAGE_INTEGRITY, digest)
    if fingerprint:
        data += _encode_attribute(AttributeType.FINGERPRINT, _fingerprint(data).to_bytes(4, "big"))
    if len(data) - HEADER_LENGTH > 0xFFFF:
        raise ValueError("message body exceeds 65535 bytes")
    return _with_length(data, len(data) - HEADER_LENGTH)


def looks_like_stun(data: bytes) -> bool:
    """Cheap demultiplexing test: first two bits zero and the magic cookie (RFC 8489 §5, §7)."""
    return (
        len(data) >= HEADER_LENGTH
        and not data[0] & HEADER_ZERO_BITS_MASK
        and data[4:8] == MAGIC_COOKIE_BYTES
    )


def decode_message(data: bytes) -> Message:
    """Parse and validate one datagram. Raises only :class:`StunDecodeError`."""
    data = bytes(data)
    size = len(data)
    if size < HEADER_LENGTH:
        raise StunDecodeError(f"datagram of {size} bytes is shorter than the 20-byte header")
    if data[0] & HEADER_ZERO_BITS_MASK:
        raise StunDecodeError("the first two bits of a STUN header must be zero")
    cookie = int.from_bytes(data[4:8], "big")
    if cookie != MAGIC_COOKIE:
        raise StunDecodeError(f"magic cookie is 0x{cookie:08X}, expected 0x{MAGIC_COOKIE:08X}")
    length = int.from_bytes(data[2:4], "big")
    if length % ATTRIBUTE_ALIGNMENT:
        raise StunDecodeError(f"message length {length} is not a multiple of 4")
    if HEADER_LENGTH + length != size:
        raise StunDecodeError(
            f"message length field {length} does not match the {size - HEADER_LENGTH}-byte body"
        )
    method, klass = decode_message_type(int.from_bytes(data[0:2], "big"))
    txid = data[8:HEADER_LENGTH]

    attributes: list[Attribute] = []
    seen: set[int] = set()
    integrity_input: bytes | None = None
    ignored = 0
    fingerprint_seen = False
    count = 0
    pos = HEADER_LENGTH
    while pos < size:
        count += 1
        if count > MAX_ATTRIBUTES:
            raise StunDecodeError(f"more than {MAX_ATTRIBUTES} attributes in one message")
        if fingerprint_seen:
            raise StunDecodeError("an attribute follows FINGERPRINT, which must be last")
        if size - pos < ATTRIBUTE_HEADER_LENGTH:
            raise StunDecodeError(f"truncated attribute header at offset {pos}")
        type_code = int.from_bytes(data[pos : pos + 2], "big")
        value_length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        start = pos + ATTRIBUTE_HEADER_LENGTH
        end = start + _padded(value_length)
        if end > size:
            raise StunDecodeError(
                f"{attribute_name(type_code)}: length {value_length} at offset {pos} "
                "overruns the message"
            )
        value = data[start : start + value_length]
        if type_code == AttributeType.FINGERPRINT:
            if value_length != FINGERPRINT_VALUE_LENGTH:
                raise StunDecodeError(f"FINGERPRINT: value must be 4 bytes, got {value_length}")
            crc = int.from_bytes(value, "big")
            if crc != _fingerprint(data[:pos]):
                raise StunDecodeError("FINGERPRINT does not match the message CRC-32")
            attributes.append(Fingerprint(crc))
            fingerprint_seen = True
        elif integrity_input is not None:
            ignored += 1  # after MESSAGE-INTEGRITY: not authenticated, so ignored (§14.5)
        else:
            attr = decode_attribute_value(type_code, value, txid)
            if not isinstance(attr, RawAttribute):
                if type_code in seen:
                    raise StunDecodeError(f"duplicate {attribute_name(type_code)} attribute")
                seen.add(type_code)
            if type_code == AttributeType.MESSAGE_INTEGRITY:
                integrity_input = _integrity_input(data[:pos])
            attributes.append(attr)
        pos = end
    return Message(method, klass, txid, attributes, integrity_input, ignored)
