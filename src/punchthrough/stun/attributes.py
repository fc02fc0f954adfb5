"""Typed STUN attributes and the codec of their values.

Each interpreted attribute is a frozen dataclass; anything else is kept as
:class:`RawAttribute` so that the server can tell "unknown comprehension-required" apart from
"unknown optional" (RFC 8489 §14). Value decoders only ever raise :class:`StunDecodeError`.
The value codecs several types share live in :mod:`.attribute_values`; the ICE attributes
(RFC 8445), which the codec keeps raw, in :mod:`.ice_attributes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from punchthrough.netio import Address
from punchthrough.stun.attribute_values import (
    decode_address,
    decode_text,
    encode_address,
    encode_text,
    require_length,
    xor_pad,
)
from punchthrough.stun.constants import (
    CHANGE_IP_FLAG,
    CHANGE_PORT_FLAG,
    CHANGE_REQUEST_VALUE_LENGTH,
    COMPREHENSION_OPTIONAL_START,
    ERROR_CLASS_MASK,
    ERROR_CLASS_MAX,
    ERROR_CLASS_MIN,
    ERROR_CODE_HEADER_LENGTH,
    ERROR_NUMBER_MAX,
    FINGERPRINT_VALUE_LENGTH,
    MAX_REASON_BYTES,
    MAX_SOFTWARE_BYTES,
    MAX_USERNAME_BYTES,
    MESSAGE_INTEGRITY_VALUE_LENGTH,
    RESPONSE_PORT_VALUE_LENGTH,
    AttributeType,
)
from punchthrough.stun.errors import StunDecodeError


def attribute_name(type_code: int) -> str:
    """Human-readable name for error messages: ``XOR-MAPPED-ADDRESS`` or ``0x1234``."""
    try:
        return AttributeType(type_code).name.replace("_", "-")
    except ValueError:
        return f"0x{type_code:04X}"


def is_comprehension_required(type_code: int) -> bool:
    """RFC 8489 §14: types below 0x8000 must be understood or the message rejected."""
    return type_code < COMPREHENSION_OPTIONAL_START


class Attribute:
    """Base of all attributes. ``TYPE`` is the wire type code (RFC 8489 §18.3)."""

    TYPE: ClassVar[int] = -1

    @property
    def type_code(self) -> int:
        return self.TYPE

    def encode_value(self, transaction_id: bytes) -> bytes:
        """The attribute value, unpadded. ``transaction_id`` is needed by XOR addresses."""
        raise NotImplementedError


# --- attribute classes -------------------------------------------------------------------------


@dataclass(frozen=True)
class MappedAddress(Attribute):
    """Reflexive transport address, plain (RFC 8489 §14.1); kept for old clients."""

    TYPE: ClassVar[int] = AttributeType.MAPPED_ADDRESS
    address: Address

    def encode_value(self, transaction_id: bytes) -> bytes:
        return encode_address(self.address, None)


@dataclass(frozen=True)
class XorMappedAddress(Attribute):
    """Reflexive transport address, obfuscated against ALGs that rewrite IPs (RFC 8489 §14.2)."""

    TYPE: ClassVar[int] = AttributeType.XOR_MAPPED_ADDRESS
    address: Address

    def encode_value(self, transaction_id: bytes) -> bytes:
        return encode_address(self.address, xor_pad(transaction_id))


@dataclass(frozen=True)
class ResponseOrigin(Attribute):
    """The address the response was sent from (RFC 5780 §7.3)."""

    TYPE: ClassVar[int] = AttributeType.RESPONSE_ORIGIN
    address: Address

    def encode_value(self, transaction_id: bytes) -> bytes:
        return encode_address(self.address, None)


@dataclass(frozen=True)
class OtherAddress(Attribute):
    """The server's alternate IP and port for RFC 5780 tests (RFC 5780 §7.4)."""

    TYPE: ClassVar[int] = AttributeType.OTHER_ADDRESS
    address: Address

    def encode_value(self, transaction_id: bytes) -> bytes:
        return encode_address(self.address, None)


@dataclass(frozen=True)
class Username(Attribute):
    """USERNAME for MESSAGE-INTEGRITY (RFC 8489 §14.3). No OpaqueString processing is done."""

    TYPE: ClassVar[int] = AttributeType.USERNAME
    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        return encode_text(self.value, "USERNAME", MAX_USERNAME_BYTES)


@dataclass(frozen=True)
class Software(Attribute):
    """Agent description (RFC 8489 §14.14)."""

    TYPE: ClassVar[int] = AttributeType.SOFTWARE
    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        return encode_text(self.value, "SOFTWARE", MAX_SOFTWARE_BYTES)


@dataclass(frozen=True)
class MessageIntegrity(Attribute):
    """HMAC-SHA1 over the message up to this attribute (RFC 8489 §14.5).

    Produced by the decoder for inspection; :func:`~punchthrough.stun.message.encode` computes
    it from a key and ignores instances placed in ``Message.attributes``.
    """

    TYPE: ClassVar[int] = AttributeType.MESSAGE_INTEGRITY
    digest: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.digest


@dataclass(frozen=True)
class Fingerprint(Attribute):
    """CRC-32 of the message XOR 0x5354554E (RFC 8489 §14.7). Computed by ``encode``."""

    TYPE: ClassVar[int] = AttributeType.FINGERPRINT
    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.to_bytes(4, "big")


@dataclass(frozen=True)
class ErrorCode(Attribute):
    """ERROR-CODE: 300..699 and a UTF-8 reason phrase (RFC 8489 §14.8)."""

    TYPE: ClassVar[int] = AttributeType.ERROR_CODE
    code: int
    reason: str = ""

    def encode_value(self, transaction_id: bytes) -> bytes:
        klass, number = divmod(self.code, 100)
        if not ERROR_CLASS_MIN <= klass <= ERROR_CLASS_MAX:
            raise ValueError(f"ERROR-CODE {self.code} outside 300..699")
        reason = encode_text(self.reason, "ERROR-CODE reason", MAX_REASON_BYTES)
        return bytes((0, 0, klass, number)) + reason


@dataclass(frozen=True)
class UnknownAttributes(Attribute):
    """The comprehension-required types a 420 response rejects (RFC 8489 §14.9)."""

    TYPE: ClassVar[int] = AttributeType.UNKNOWN_ATTRIBUTES
    types: tuple[int, ...]

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"".join(t.to_bytes(2, "big") for t in self.types)


@dataclass(frozen=True)
class ChangeRequest(Attribute):
    """Ask the server to answer from its other IP and/or port (RFC 5780 §7.2)."""

    TYPE: ClassVar[int] = AttributeType.CHANGE_REQUEST
    change_ip: bool = False
    change_port: bool = False

    def encode_value(self, transaction_id: bytes) -> bytes:
        flags = (CHANGE_IP_FLAG if self.change_ip else 0) | (
            CHANGE_PORT_FLAG if self.change_port else 0
        )
        return flags.to_bytes(4, "big")


@dataclass(frozen=True)
class ResponsePort(Attribute):
    """Send the response to this port on the request's source IP (RFC 5780 §7.5)."""

    TYPE: ClassVar[int] = AttributeType.RESPONSE_PORT
    port: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.port.to_bytes(2, "big") + b"\x00\x00"


@dataclass(frozen=True)
class Padding(Attribute):
    """PADDING of ``length`` zero bytes, for fragmentation tests (RFC 5780 §7.6)."""

    TYPE: ClassVar[int] = AttributeType.PADDING
    length: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return bytes(self.length)


@dataclass(frozen=True)
class RawAttribute(Attribute):
    """An attribute this package does not interpret, kept verbatim (value unpadded)."""

    type: int
    value: bytes

    @property
    def type_code(self) -> int:
        return self.type

    @property
    def comprehension_required(self) -> bool:
        return is_comprehension_required(self.type)

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value


# --- value decoders ----------------------------------------------------------------------------

ValueDecoder = Callable[[bytes, bytes], Attribute]


def _dec_mapped(value: bytes, txid: bytes) -> Attribute:
    return MappedAddress(decode_address(value, "MAPPED-ADDRESS", None))


def _dec_xor_mapped(value: bytes, txid: bytes) -> Attribute:
    return XorMappedAddress(decode_address(value, "XOR-MAPPED-ADDRESS", xor_pad(txid)))


def _dec_response_origin(value: bytes, txid: bytes) -> Attribute:
    return ResponseOrigin(decode_address(value, "RESPONSE-ORIGIN", None))


def _dec_other_address(value: bytes, txid: bytes) -> Attribute:
    return OtherAddress(decode_address(value, "OTHER-ADDRESS", None))


def _dec_username(value: bytes, txid: bytes) -> Attribute:
    return Username(decode_text(value, "USERNAME", MAX_USERNAME_BYTES))


def _dec_software(value: bytes, txid: bytes) -> Attribute:
    return Software(decode_text(value, "SOFTWARE", MAX_SOFTWARE_BYTES))


def _dec_integrity(value: bytes, txid: bytes) -> Attribute:
    require_length(value, "MESSAGE-INTEGRITY", MESSAGE_INTEGRITY_VALUE_LENGTH)
    return MessageIntegrity(value)


def _dec_fingerprint(value: bytes, txid: bytes) -> Attribute:
    require_length(value, "FINGERPRINT", FINGERPRINT_VALUE_LENGTH)
    return Fingerprint(int.from_bytes(value, "big"))


def _dec_error_code(value: bytes, txid: bytes) -> Attribute:
    if len(value) < ERROR_CODE_HEADER_LENGTH:
        raise StunDecodeError(f"ERROR-CODE: value is {len(value)} bytes, needs at least 4")
    klass = value[2] & ERROR_CLASS_MASK  # the other 21 bits are reserved, ignored (§14.8)
    number = value[3]
    if not ERROR_CLASS_MIN <= klass <= ERROR_CLASS_MAX:
        raise StunDecodeError(f"ERROR-CODE: class {klass} outside 3..6")
    if number > ERROR_NUMBER_MAX:
        raise StunDecodeError(f"ERROR-CODE: number {number} above 99")
    reason = decode_text(value[4:], "ERROR-CODE reason", MAX_REASON_BYTES)
    return ErrorCode(klass * 100 + number, reason)


def _dec_unknown_attributes(value: bytes, txid: bytes) -> Attribute:
    if len(value) % 2:
        raise StunDecodeError(f"UNKNOWN-ATTRIBUTES: odd value length {len(value)}")
    types = tuple(int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2))
    return UnknownAttributes(types)


def _dec_change_request(value: bytes, txid: bytes) -> Attribute:
    require_length(value, "CHANGE-REQUEST", CHANGE_REQUEST_VALUE_LENGTH)
    flags = int.from_bytes(value, "big")  # other bits are unused and ignored (RFC 5780 §7.2)
    return ChangeRequest(bool(flags & CHANGE_IP_FLAG), bool(flags & CHANGE_PORT_FLAG))


def _dec_response_port(value: bytes, txid: bytes) -> Attribute:
    require_length(value, "RESPONSE-PORT", RESPONSE_PORT_VALUE_LENGTH)
    return ResponsePort(int.from_bytes(value[:2], "big"))


def _dec_padding(value: bytes, txid: bytes) -> Attribute:
    return Padding(len(value))  # content is meaningless (RFC 5780 §7.6)


#: Decoders for every attribute type we interpret. Types absent here become RawAttribute.
VALUE_DECODERS: dict[int, ValueDecoder] = {
    AttributeType.MAPPED_ADDRESS: _dec_mapped,
    AttributeType.XOR_MAPPED_ADDRESS: _dec_xor_mapped,
    AttributeType.RESPONSE_ORIGIN: _dec_response_origin,
    AttributeType.OTHER_ADDRESS: _dec_other_address,
    AttributeType.USERNAME: _dec_username,
    AttributeType.SOFTWARE: _dec_software,
    AttributeType.MESSAGE_INTEGRITY: _dec_integrity,
    AttributeType.FINGERPRINT: _dec_fingerprint,
    AttributeType.ERROR_CODE: _dec_error_code,
    AttributeType.UNKNOWN_ATTRIBUTES: _dec_unknown_attributes,
    AttributeType.CHANGE_REQUEST: _dec_change_request,
    AttributeType.RESPONSE_PORT: _dec_response_port,
    AttributeType.PADDING: _dec_padding,
}


def decode_attribute_value(type_code: int, value: bytes, transaction_id: bytes) -> Attribute:
    """Decode one attribute value (unpadded); unknown types become :class:`RawAttribute`."""
    decoder = VALUE_DECODERS.get(type_code)
    if decoder is None:
        return RawAttribute(type_code, value)
    return decoder(value, transaction_id)
