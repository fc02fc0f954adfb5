"""NAT-PMP (RFC 6886) and PCP (RFC 6887) MAP responders for a simulated gateway (sans-IO).

A request datagram and ``now`` go in, a reply datagram (or ``None`` = silent drop) comes out;
accepted MAP requests create real bindings in the :class:`~punchthrough.sim.nat.NatTable`, so
inbound traffic to the mapped port reaches the host as it would through miniupnpd.
"""

from __future__ import annotations

from typing import Final

from punchthrough.netio import Address
from punchthrough.portmap import natpmp_wire as pmp
from punchthrough.portmap import pcp_wire as pcp
from punchthrough.sim.nat import MAX_PORTMAP_LIFETIME, Binding, Dropped, NatTable
from punchthrough.sim.nat_binding import DropKind

#: RFC 6887 section 7.2: lifetime on an error response = how long the error holds; short for
#: per-request problems (30 s as in RFC 6887 section 7.4's guidance for transient errors).
ERROR_LIFETIME: Final = 30


def respond(table: NatTable, now: float, source: Address, data: bytes) -> bytes | None:
    """Answer one datagram received on the gateway's port 5351."""
    if not data:
        return None
    cfg = table.config
    if data[0] == pmp.NATPMP_VERSION and cfg.natpmp:
        return _natpmp(table, now, source, data)
    if cfg.pcp:
        # Any other version goes to PCP, whose decoder answers UNSUPP_VERSION for versions it
        # does not speak; that is also how a NAT-PMP client learns this is a PCP-only gateway.
        if data[0] == pmp.NATPMP_VERSION:
            return pcp.encode_response(
                pcp.PcpResponse(
                    data[1] & 0x7F if len(data) > 1 else 0,
                    pcp.UNSUPP_VERSION,
                    ERROR_LIFETIME,
                    table.epoch(now),
                )
            )
        return _pcp(table, now, source, data)
    if cfg.natpmp:
        # NAT-PMP only: RFC 6887 section 9 has PCP clients detect this by the NAT-PMP
        # "unsupported version" answer.
        return pmp.encode_response(
            pmp.ErrorResponse(
                data[1] & 0x7F if len(data) > 1 else 0,
                pmp.RESULT_UNSUPPORTED_VERSION,
                table.epoch(now),
            )
        )
    return None


def _natpmp(table: NatTable, now: float, source: Address, data: bytes) -> bytes | None:
    epoch = table.epoch(now)
    try:
        req = pmp.decode_request(data)
    except pmp.NatPmpDecodeError as exc:
        if exc.result_code is None:
            return None
        return pmp.encode_response(pmp.ErrorResponse(exc.opcode & 0x7F, exc.result_code, epoch))
    if isinstance(req, pmp.ExternalAddressRequest):
        return pmp.encode_response(
            pmp.ExternalAddressResponse(pmp.RESULT_SUCCESS, epoch, table.external_ip)
        )
    if req.protocol != pmp.OP_MAP_UDP:
        # The simulator carries UDP only; a TCP mapping would be a promise it cannot keep.
        return pmp.encode_response(
            pmp.ErrorResponse(req.protocol, pmp.RESULT_UNSUPPORTED_OPCODE, epoch)
        )

    def reply(result: int, external: int = 0, lifetime: int = 0) -> bytes:
        return pmp.encode_response(
            pmp.MapResponse(req.protocol, result, epoch, req.internal_port, external, lifetime)
        )

    if req.lifetime == 0 and req.internal_port == 0:
        table.unmap_all(now, source[0])
        return reply(pmp.RESULT_SUCCESS)
    result = table.map_port(
        now, (source[0], req.internal_port), req.suggested_external_port, req.lifetime
    )
    if result is None:
        return reply(pmp.RESULT_SUCCESS)
    if isinstance(result, Dropped):
        return reply(pmp.RESULT_OUT_OF_RESOURCES)
    return reply(pmp.RESULT_SUCCESS, result.external_port, _granted(req.lifetime))


def _granted(requested: int) -> int:
    return min(requested, MAX_PORTMAP_LIFETIME)


def _pcp(table: NatTable, now: float, source: Address, data: bytes) -> bytes | None:
    epoch = table.epoch(now)
    try:
        req = pcp.decode_request(data)
    except pcp.PcpDecodeError as exc:
        if exc.result_code is None:
            return None
        return pcp.encode_response(
            pcp.PcpResponse(exc.opcode or 0, exc.result_code, ERROR_LIFETIME, epoch)
        )

    def reply(
        result: int,
        lifetime: int = ERROR_LIFETIME,
        binding: Binding | None = None,
    ) -> bytes:
        m = req.map
        if m is not None and binding is not None:
            m = pcp.MapData(
                m.nonce, m.protocol, m.internal_port, binding.external_port, table.external_ip
            )
        return pcp.encode_response(
            pcp.PcpResponse(req.opcode, result, lifetime, epoch, m, req.peer, ())
        )

    if req.client_ip != source[0]:
        # Section 8.3: the client's own idea of its address must match what we see.
        return reply(pcp.ADDRESS_MISMATCH)
    if req.opcode == pcp.OP_ANNOUNCE:
        return reply(pcp.SUCCESS, 0)
    if req.opcode != pcp.OP_MAP or req.map is None:
        return reply(pcp.UNSUPP_OPCODE)
    prefer_failure = False
    for opt in req.options:
        if opt.code == pcp.OPTION_PREFER_FAILURE:
            prefer_failure = True
        elif opt.code < pcp.OPTIONAL_OPTION_MIN:
            return reply(pcp.UNSUPP_OPTION)  # THIRD_PARTY, FILTER, unknown mandatory ones
    m = req.map
    if m.protocol != pcp.PROTO_UDP:
        return reply(pcp.UNSUPP_PROTOCOL)
    if m.internal_port == 0:
        if req.lifetime != 0:
            return reply(pcp.MALFORMED_REQUEST)
        table.unmap_all(now, source[0])
        return reply(pcp.SUCCESS, 0)
    internal = (req.client_ip, m.internal_port)
    if prefer_failure and req.lifetime and m.external_port:
        current = table.binding_for_port(m.external_port, now)
        if current is not None and current.internal != internal:
            return reply(pcp.CANNOT_PROVIDE_EXTERNAL)
    result = table.map_port(now, internal, m.external_port, req.lifetime, m.nonce)
    if result is None:
        return reply(pcp.SUCCESS, 0)
    if isinstance(result, Dropped):
        code = pcp.NOT_AUTHORIZED if result.kind is DropKind.NOT_AUTHORIZED else pcp.NO_RESOURCES
        return reply(code)
    return reply(pcp.SUCCESS, _granted(req.lifetime), result)
