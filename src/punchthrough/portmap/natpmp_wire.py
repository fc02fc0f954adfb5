"""NAT-PMP (RFC 6886) wire format: pure encode/decode, no I/O.

Shared by the simulator's NAT-PMP responder and the port-mapping client. Decoders accept only
well-formed messages; anything else raises :class:`NatPmpDecodeError` (never ``struct.error``).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

#: RFC 6886 section 1: the UDP port of the NAT-PMP server on the gateway's LAN address.
NATPMP_PORT: Final = 5351
#: RFC 6886 section 3.1: clients listen on this port for address-change announcements.
NATPMP_CLIENT_PORT: Final = 5350
#: RFC 6886 section 3: the only defined protocol version.
NATPMP_VERSION: Final = 0

# Opcodes (RFC 6886 sections 3.2 and 3.3). Responses add RESPONSE_BIT.
OP_EXTERNAL_ADDRESS: Final = 0
OP_MAP_UDP: Final = 1
OP_MAP_TCP: Final = 2
RESPONSE_BIT: Final = 128

# Result codes (RFC 6886 section 3.5).
RESULT_SUCCESS: Final = 0
RESULT_UNSUPPORTED_VERSION: Final = 1
RESULT_NOT_AUTHORIZED: Final = 2
RESULT_NETWORK_FAILURE: Final = 3
RESULT_OUT_OF_RESOURCES: Final = 4
RESULT_UNSUPPORTED_OPCODE: Final = 5

#: RFC 6886 section 3.3: recommended mapping lifetime, seconds.
RECOMMENDED_LIFETIME: Final = 7200

_HDR = struct.Struct("!BB")
_MAP_REQ = struct.Struct("!BBHHHI")  # ver, op, reserved, internal, suggested external, lifetime
_ERR_RESP = struct.Struct("!BBHI")  # ver, op, result, epoch
_ADDR_RESP = struct.Struct("!BBHI4s")  # ver, op, result, epoch, external IPv4
_MAP_RESP = struct.Struct("!BBHIHHI")  # ver, op, result, epoch, internal, external, lifetime


class NatPmpDecodeError(Exception):
    """A datagram that is not a well-formed NAT-PMP message.

    ``result_code`` is the error a server should answer with (RFC 6886 section 3.5), or ``None``
    when the datagram must be silently dropped. ``opcode`` is the request opcode when known.
    """

    def __init__(self, message: str, *, result_code: int | None = None, opcode: int = 0) -> None:
        super().__init__(message)
        self.result_code = result_code
        self.opcode = opcode


@dataclass(frozen=True, slots=True)
class ExternalAddressRequest:
    """Opcode 0: ask for the gateway's external IPv4 address."""


@dataclass(frozen=True, slots=True)
class MapRequest:
    """Opcodes 1/2: create, renew (same ports) or delete (``lifetime == 0``) a mapping."""

    protocol: int  # OP_MAP_UDP or OP_MAP_TCP
    internal_port: int
    suggested_external_port: int
    lifetime: int


@dataclass(frozen=True, slots=True)
class ExternalAddressResponse:
    result: int
    epoch: int
    external_ip: str


@dataclass(frozen=True, slots=True)
class MapResponse:
    protocol: int  # OP_MAP_UDP or OP_MAP_TCP
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """The 8-byte reply used for unsupported versions and opcodes (RFC 6886 section 3.5)."""

    opcode: int  # the request opcode (without RESPONSE_BIT)
    result: int
    epoch: int


NatPmpRequest = ExternalAddressRequest | MapRequest
NatPmpResponse = ExternalAddressResponse | MapResponse | ErrorResponse


def _u16(name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} out of range 0..65535")
    return value


def _u32(name: str, value: int) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} {value} out of range 0..2**32-1")
    return value


def _check_map_protocol(protocol: int) -> int:
    if protocol not in (OP_MAP_UDP, OP_MAP_TCP):
        raise ValueError(f"protocol opcode must be {OP_MAP_UDP} or {OP_MAP_TCP}, got {protocol}")
    return protocol


def encode_request(req: NatPmpRequest) -> bytes:
    """Serialise a request. Raises ``ValueError`` for out-of-range fields (a caller bug)."""
    if isinstance(req, ExternalAddressRequest):
        return _HDR.pack(NATPMP_VERSION, OP_EXTERNAL_ADDRESS)
    return _MAP_REQ.pack(
        NATPMP_VERSION,
        _check_map_protocol(req.protocol),
        0,
        _u16("internal_port", req.internal_port),
        _u16("suggested_external_port", req.suggested_external_port),
        _u32("lifetime", req.lifetime),
    )


def decode_request(data: bytes) -> NatPmpRequest:
    """Parse a request as a server does (RFC 6886 sections 3.2, 3.3, 3.5)."""
    if len(data) < _HDR.size:
        raise NatPmpDecodeError(f"request of {len(data)} bytes is too short")
    version, opcode = _HDR.unpack_from(data)
    if opcode & RESPONSE_BIT:
        raise NatPmpDecodeError("datagram is a response, not a request")
    if version != NATPMP_VERSION:
        raise NatPmpDecodeError(
            f"unsupported NAT-PMP version {version}",
            result_code=RESULT_UNSUPPORTED_VERSION,
            opcode=opcode,
        )
    if opcode == OP_EXTERNAL_ADDRESS:
        return ExternalAddressRequest()
    if opcode in (OP_MAP_UDP, OP_MAP_TCP):
        if len(data) < _MAP_REQ.size:
            raise NatPmpDecodeError(f"map request of {len(data)} bytes is too short")
        _, _, _, internal, suggested, lifetime = _MAP_REQ.unpack_from(data)
        if internal == 0 and lifetime != 0:
            # Internal port 0 is only meaningful for "delete all mappings" (section 3.4).
            raise NatPmpDecodeError("internal port 0 with nonzero lifetime")
        return MapRequest(opcode, internal, suggested, lifetime)
    raise NatPmpDecodeError(
        f"unsupported opcode {opcode}", result_code=RESULT_UNSUPPORTED_OPCODE, opcode=opcode
    )


def encode_response(resp: NatPmpResponse) -> bytes:
    """Serialise a response. Raises ``ValueError`` for out-of-range fields (a caller bug)."""
    if isinstance(resp, ErrorResponse):
        if not 0 <= resp.opcode < RESPONSE_BIT:
            raise ValueError(f"opcode {resp.opcode} out of range")
        return _ERR_RESP.pack(
            NATPMP_VERSION,
            resp.opcode | RESPONSE_BIT,
            _u16("result", resp.result),
            _u32("epoch", resp.epoch),
        )
    if isinstance(resp, ExternalAddressResponse):
        return _ADDR_RESP.pack(
            NATPMP_VERSION,
            OP_EXTERNAL_ADDRESS | RESPONSE_BIT,
            _u16("result", resp.result),
            _u32("epoch", resp.epoch),
            ipaddress.IPv4Address(resp.external_ip).packed,
        )
    return _MAP_RESP.pack(
        NATPMP_VERSION,
        _check_map_protocol(resp.protocol) | RESPONSE_BIT,
        _u16("result", resp.result),
        _u32("epoch", resp.epoch),
        _u16("internal_port", resp.internal_port),
        _u16("external_port", resp.external_port),
        _u32("lifetime", resp.lifetime),
    )


def decode_response(data: bytes) -> NatPmpResponse:
    """Parse a response as a client does; every malformation is a :class:`NatPmpDecodeError`."""
    if len(data) < _ERR_RESP.size:
        raise NatPmpDecodeError(f"response of {len(data)} bytes is too short")
    version, op, result, epoch = _ERR_RESP.unpack_from(data)
    if version != NATPMP_VERSION:
        raise NatPmpDecodeError(f"unsupported NAT-PMP version {version}")
    if not op & RESPONSE_BIT:
        raise NatPmpDecodeError("datagram is a request, not a response")
    opcode = op & ~RESPONSE_BIT
    if opcode == OP_EXTERNAL_ADDRESS and len(data) >= _ADDR_RESP.size:
        packed = _ADDR_RESP.unpack_from(data)[4]
        return ExternalAddressResponse(result, epoch, str(ipaddress.IPv4Address(packed)))
    if opcode in (OP_MAP_UDP, OP_MAP_TCP) and len(data) >= _MAP_RESP.size:
        _, _, _, _, internal, external, lifetime = _MAP_RESP.unpack_from(data)
        return MapResponse(opcode, result, epoch, internal, external, lifetime)
    if result != RESULT_SUCCESS:
        return ErrorResponse(opcode, result, epoch)
    raise NatPmpDecodeError(f"truncated response to opcode {opcode} ({len(data)} bytes)")
