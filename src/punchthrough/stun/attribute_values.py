"""Codecs of STUN attribute values that several attribute types share.

Transport addresses, plain or XOR-obfuscated (RFC 8489 §14.1, §14.2), length-limited UTF-8
text, and fixed-length values. Decoders only ever raise :class:`StunDecodeError`; encoders
raise :class:`ValueError` (a caller bug, not a bad datagram).
"""

from __future__ import annotations

import ipaddress

from punchthrough.netio import Address
from punchthrough.stun.constants import (
    ADDRESS_IPV4_VALUE_LENGTH,
    ADDRESS_IPV6_VALUE_LENGTH,
    FAMILY_IPV4,
    FAMILY_IPV6,
    MAGIC_COOKIE_BYTES,
)
from punchthrough.stun.errors import StunDecodeError


def xor_pad(transaction_id: bytes) -> bytes:
    # X-Port is XORed with the cookie's top 16 bits, X-Address with cookie || txid (§14.2).
    return MAGIC_COOKIE_BYTES + transaction_id


def encode_address(address: Address, xor_with: bytes | None) -> bytes:
    ip = ipaddress.ip_address(address[0])
    port = address[1]
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    family = FAMILY_IPV4 if ip.version == 4 else FAMILY_IPV6
    port_bytes = port.to_bytes(2, "big")
    packed = ip.packed
    if xor_with is not None:
        port_bytes = bytes(a ^ b for a, b in zip(port_bytes, xor_with, strict=False))
        packed = bytes(a ^ b for a, b in zip(packed, xor_with, strict=False))
    return bytes((0, family)) + port_bytes + packed


def decode_address(value: bytes, name: str, xor_with: bytes | None) -> Address:
    if len(value) < 4:
        raise StunDecodeError(f"{name}: value is {len(value)} bytes, an address needs at least 4")
    # The first byte is reserved; receivers ignore it (RFC 8489 §14.1).
    family = value[1]
    if family == FAMILY_IPV4:
        expected = ADDRESS_IPV4_VALUE_LENGTH
    elif family == FAMILY_IPV6:
        expected = ADDRESS_IPV6_VALUE_LENGTH
    else:
        raise StunDecodeError(f"{name}: unknown address family 0x{family:02X}")
    if len(value) != expected:
        raise StunDecodeError(
            f"{name}: family 0x{family:02X} needs a {expected}-byte value, got {len(value)}"
        )
    port_bytes = value[2:4]
    packed = value[4:]
    if xor_with is not None:
        port_bytes = bytes(a ^ b for a, b in zip(port_bytes, xor_with, strict=False))
        packed = bytes(a ^ b for a, b in zip(packed, xor_with, strict=False))
    port = int.from_bytes(port_bytes, "big")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ip = ipaddress.IPv4Address(packed) if family == FAMILY_IPV4 else ipaddress.IPv6Address(packed)
    return (str(ip), port)


def decode_text(value: bytes, name: str, max_bytes: int) -> str:
    if len(value) > max_bytes:
        raise StunDecodeError(f"{name}: {len(value)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunDecodeError(f"{name}: value is not valid UTF-8 ({exc.reason})") from None


def encode_text(text: str, name: str, max_bytes: int) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > max_bytes:
        raise ValueError(f"{name}: {len(raw)} bytes exceeds the {max_bytes}-byte limit")
    return raw


def require_length(value: bytes, name: str, length: int) -> None:
    if len(value) != length:
        raise StunDecodeError(f"{name}: value must be {length} bytes, got {len(value)}")
