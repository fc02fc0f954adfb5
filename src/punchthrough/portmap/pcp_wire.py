"""Port Control Protocol (RFC 6887) wire format: pure encode/decode, no I/O.

Covers the common header, the ANNOUNCE, MAP and PEER opcodes and the generic option TLV. Shared
by the simulator's PCP responder and the port-mapping client. Decoders raise only
:class:`PcpDecodeError`, which carries the result code a server should answer with (or ``None``
when RFC 6887 section 8.3 says to drop the datagram silently).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Final

#: RFC 6887 section 19.1: the PCP server port (shared with NAT-PMP, told apart by version).
PCP_PORT: Final = 5351
#: RFC 6887 section 9: this version; NAT-PMP uses version 0 on the same port.
PCP_VERSION: Final = 2
#: RFC 6887 section 7: maximum message size, and every message is a multiple of 4 octets.
MAX_MESSAGE_SIZE: Final = 1100
HEADER_SIZE: Final = 24  # sections 7.1 and 7.2

# Opcodes (RFC 6887 section 19.2).
OP_ANNOUNCE: Final = 0
OP_MAP: Final = 1
OP_PEER: Final = 2
_R_BIT: Final = 0x80  # section 7.1: set in responses

# Result codes (RFC 6887 section 7.4).
SUCCESS: Final = 0
UNSUPP_VERSION: Final = 1
NOT_AUTHORIZED: Final = 2
MALFORMED_REQUEST: Final = 3
UNSUPP_OPCODE: Final = 4
UNSUPP_OPTION: Final = 5
MALFORMED_OPTION: Final = 6
NETWORK_FAILURE: Final = 7
NO_RESOURCES: Final = 8
UNSUPP_PROTOCOL: Final = 9
USER_EX_QUOTA: Final = 10
CANNOT_PROVIDE_EXTERNAL: Final = 11
ADDRESS_MISMATCH: Final = 12
EXCESSIVE_REMOTE_PEERS: Final = 13

# Option codes (RFC 6887 section 13); codes 0-127 must be understood, 128-255 may be ignored.
OPTION_THIRD_PARTY: Final = 1
OPTION_PREFER_FAILURE: Final = 2
OPTION_FILTER: Final = 3
OPTIONAL_OPTION_MIN: Final = 128

#: IANA protocol numbers used in the MAP/PEER protocol field.
PROTO_TCP: Final = 6
PROTO_UDP: Final = 17

_NONCE_SIZE: Final = 12  # section 11.1: 96-bit mapping nonce
_REQ_HDR = struct.Struct("!BBHI16s")  # version, R|opcode, reserved, lifetime, client IP
_RESP_HDR = struct.Struct("!BBBBII12s")  # version, R|opcode, reserved, result, lifetime, epoch
_MAP = struct.Struct("!12sB3sHH16s")  # nonce, protocol, reserved, internal, external, ext IP
_PEER_TAIL = struct.Struct("!HH16s")  # remote peer port, reserved, remote peer IP
_OPT_HDR = struct.Struct("!BBH")


class PcpDecodeError(Exception):
    """A datagram that is not a well-formed PCP message.

    ``result_code``: what a server answers (RFC 6887 section 8.3), ``None`` = drop silently.
    ``opcode``: the request's opcode when it could be read, else ``None``.
    """

    def __init__(
        self, message: str, *, result_code: int | None = None, opcode: int | None = None
    ) -> None:
        super().__init__(message)
        self.result_code = result_code
        self.opcode = opcode


@dataclass(frozen=True, slots=True)
class PcpOption:
    code: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class MapData:
    """MAP opcode payload (section 11.1); in responses the ports/IP are the assigned ones."""

    nonce: bytes
    protocol: int
    internal_port: int
    external_port: int
    external_ip: str = "0.0.0.0"


@dataclass(frozen=True, slots=True)
class PeerData:
    """PEER opcode payload (section 12.1)."""

    map: MapData
    remote_port: int
    remote_ip: str


@dataclass(frozen=True, slots=True)
class PcpRequest:
    opcode: int
    lifetime: int
    client_ip: str
    map: MapData | None = None
    peer: PeerData | None = None
    options: tuple[PcpOption, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class PcpResponse:
    opcode: int
    result: int
    lifetime: int
    epoch: int
    map: MapData | None = None
    peer: PeerData | None = None
    options: tuple[PcpOption, ...] = field(default_factory=tuple)


def pack_address(ip: str) -> bytes:
    """16-byte address field: IPv4 as IPv4-mapped IPv6 (RFC 6887 section 5)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\x00" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def unpack_address(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    return str(mapped) if mapped is not None else str(addr)


def _encode_map(m: MapData) -> bytes:
    if len(m.nonce) != _NONCE_SIZE:
        raise ValueError(f"mapping nonce must be {_NONCE_SIZE} bytes")
    return _MAP.pack(
        m.nonce,
        m.protocol,
        b"\x00\x00\x00",
        m.internal_port,
        m.external_port,
        pack_address(m.external_ip),
    )


def _encode_body(
    map_data: MapData | None, peer: PeerData | None, options: tuple[PcpOption, ...]
) -> bytes:
    parts: list[bytes] = []
    if peer is not None:
        parts.append(_encode_map(peer.map))
        parts.append(_PEER_TAIL.pack(peer.remote_port, 0, pack_address(peer.remote_ip)))
    elif map_data is not None:
        parts.append(_encode_map(map_data))
    for opt in options:
        pad = (-len(opt.data)) % 4
        parts.append(_OPT_HDR.pack(opt.code, 0, len(opt.data)) + opt.data + b"\x00" * pad)
    return b"".join(parts)


def encode_request(req: PcpRequest) -> bytes:
    """Serialise a request. Raises ``ValueError``/``struct.error`` only for caller bugs."""
    body = _encode_body(req.map, req.peer, req.options)
    hdr = _REQ_HDR.pack(
        PCP_VERSION, req.opcode & 0x7F, 0, req.lifetime, pack_address(req.client_ip)
    )
    return _check_size(hdr + body)


def encode_response(resp: PcpResponse) -> bytes:
    body = _encode_body(resp.map, resp.peer, resp.options)
    hdr = _RESP_HDR.pack(
        PCP_VERSION,
        _R_BIT | (resp.opcode & 0x7F),
        0,
        resp.result,
        resp.lifetime,
        resp.epoch,
        b"\x00" * 12,
    )
    return _check_size(hdr + body)


def _check_size(msg: bytes) -> bytes:
    if len(msg) > MAX_MESSAGE_SIZE:
        raise ValueError(f"PCP message of {len(msg)} bytes exceeds {MAX_MESSAGE_SIZE}")
    return msg


def _decode_map(data: bytes, offset: int) -> MapData:
    nonce, proto, _, internal, external, ext_ip = _MAP.unpack_from(data, offset)
    return MapData(nonce, proto, internal, external, unpack_address(ext_ip))


def _decode_body(
    data: bytes, opcode: int, *, request: bool
) -> tuple[MapData | None, PeerData | None, tuple[PcpOption, ...]]:
    err = MALFORMED_REQUEST if request else None
    offset = HEADER_SIZE
    map_data: MapData | None = None
    peer: PeerData | None = None
    if opcode in (OP_MAP, OP_PEER):
        need = _MAP.size + (_PEER_TAIL.size if opcode == OP_PEER else 0)
        if len(data) < offset + need:
            raise PcpDecodeError(
                f"opcode {opcode} payload truncated", result_code=err, opcode=opcode
            )
        map_data = _decode_map(data, offset)
        offset += _MAP.size
        if opcode == OP_PEER:
            rport, _, rip = _PEER_TAIL.unpack_from(data, offset)
            offset += _PEER_TAIL.size
            peer = PeerData(map_data, rport, unpack_address(rip))
            map_data = None
    elif opcode != OP_ANNOUNCE:
        raise PcpDecodeError(
            f"unsupported opcode {opcode}",
            result_code=UNSUPP_OPCODE if request else None,
            opcode=opcode,
        )
    options: list[PcpOption] = []
    opt_err = MALFORMED_OPTION if request else None
    while offset < len(data):
        if len(data) - offset < _OPT_HDR.size:
            raise PcpDecodeError("truncated option header", result_code=opt_err, opcode=opcode)
        code, _, length = _OPT_HDR.unpack_from(data, offset)
        offset += _OPT_HDR.size
        padded = length + (-length) % 4
        if offset + padded > len(data):
            raise PcpDecodeError(
                f"option {code} overruns the message", result_code=opt_err, opcode=opcode
            )
        options.append(PcpOption(code, bytes(data[offset : offset + length])))
        offset += padded
    return map_data, peer, tuple(options)


def decode_request(data: bytes) -> PcpRequest:
    """Parse a request following the server rules of RFC 6887 section 8.3."""
    if len(data) < 2:
        raise PcpDecodeError("datagram shorter than 2 octets")
    version, r_op = data[0], data[1]
    opcode = r_op & 0x7F
    if r_op & _R_BIT:
        raise PcpDecodeError("R bit set: a response, not a request")
    if version != PCP_VERSION:
        raise PcpDecodeError(
            f"unsupported PCP version {version}", result_code=UNSUPP_VERSION, opcode=opcode
        )
    if len(data) < HEADER_SIZE or len(data) > MAX_MESSAGE_SIZE or len(data) % 4:
        raise PcpDecodeError(
            f"bad request length {len(data)}", result_code=MALFORMED_REQUEST, opcode=opcode
        )
    _, _, _, lifetime, client = _REQ_HDR.unpack_from(data)
    map_data, peer, options = _decode_body(data, opcode, request=True)
    return PcpRequest(opcode, lifetime, unpack_address(client), map_data, peer, options)


def decode_response(data: bytes) -> PcpResponse:
    """Parse a response as a client does (section 8.3 client rules: drop anything odd)."""
    if len(data) < HEADER_SIZE or len(data) > MAX_MESSAGE_SIZE or len(data) % 4:
        raise PcpDecodeError(f"bad response length {len(data)}")
    version, r_op, _, result, lifetime, epoch, _ = _RESP_HDR.unpack_from(data)
    if version != PCP_VERSION:
        raise PcpDecodeError(f"unsupported PCP version {version}")
    if not r_op & _R_BIT:
        raise PcpDecodeError("R bit clear: a request, not a response")
    opcode = r_op & 0x7F
    if result != SUCCESS and len(data) == HEADER_SIZE:
        # Errors such as UNSUPP_VERSION may come without the opcode payload.
        return PcpResponse(opcode, result, lifetime, epoch)
    map_data, peer, options = _decode_body(data, opcode, request=False)
    return PcpResponse(opcode, result, lifetime, epoch, map_data, peer, options)
