"""PCP client (RFC 6887), MAP opcode only, sans-IO: see
:class:`~punchthrough.portmap.session.MappingSession`.

Probe = ANNOUNCE (section 14.1); map/renew = MAP with our 96-bit nonce, suggesting the current
external port; delete = MAP with lifetime 0 and the same nonce (section 15). Every MAP answer
must carry our nonce, protocol and internal port (section 11.3), else it is dropped and counted
(``nonce_mismatch`` / ``stale``). A NAT-PMP-only gateway answers our version-2 request with a
version-0 "unsupported version" (section 9): that ends the pending operation with
:class:`PortMapUnsupported`.
"""

from __future__ import annotations

import ipaddress
import secrets

from punchthrough.portmap import natpmp_wire as pmp
from punchthrough.portmap import pcp_wire as pcp
from punchthrough.portmap.errors import PCP, PortMapUnsupported, pcp_error
from punchthrough.portmap.session import (
    DEFAULT_LIFETIME,
    Answer,
    EpochTracker,
    MappingSession,
    Operation,
    PcpSchedule,
    Schedule,
)

NONCE_SIZE = 12  # RFC 6887 section 11.1: 96-bit mapping nonce


class PcpSession(MappingSession):
    """One PCP MAP (UDP) for ``internal_port`` of ``client_ip`` (our address on the LAN)."""

    protocol = PCP

    def __init__(
        self,
        internal_port: int,
        client_ip: str,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        schedule: Schedule | None = None,
        nonce: bytes | None = None,
    ) -> None:
        super().__init__(
            internal_port,
            lifetime=lifetime,
            schedule=schedule if schedule is not None else PcpSchedule(),
            epoch=EpochTracker(pcp=True),
        )
        ipaddress.ip_address(client_ip)  # ValueError early, not at the first send
        self.client_ip = client_ip
        self.nonce = nonce if nonce is not None else secrets.token_bytes(NONCE_SIZE)
        if len(self.nonce) != NONCE_SIZE:
            raise ValueError(f"PCP nonce must be {NONCE_SIZE} bytes")

    def _probe_request(self) -> bytes:
        return pcp.encode_request(pcp.PcpRequest(pcp.OP_ANNOUNCE, 0, self.client_ip))

    def _map_request(self, lifetime: int) -> bytes:
        ext_port = self.external[1] if self.external is not None else self.internal_port
        ext_ip = self.external[0] if self.external is not None else "0.0.0.0"
        m = pcp.MapData(self.nonce, pcp.PROTO_UDP, self.internal_port, ext_port, ext_ip)
        return pcp.encode_request(pcp.PcpRequest(pcp.OP_MAP, lifetime, self.client_ip, m))

    def _parse(self, data: bytes) -> Answer | None:
        if data[:1] == bytes([pmp.NATPMP_VERSION]):
            return self._parse_natpmp_refusal(data)
        try:
            resp = pcp.decode_response(data)
        except pcp.PcpDecodeError:
            self.stats["malformed"] += 1
            return None
        if resp.opcode == pcp.OP_ANNOUNCE:
            if resp.result != pcp.SUCCESS:
                return Answer(Operation.PROBE, resp.epoch, pcp_error(resp.result, resp.lifetime))
            return Answer(Operation.PROBE, resp.epoch)
        if resp.opcode != pcp.OP_MAP:
            self.stats["stale"] += 1
            return None
        m = resp.map
        if m is None:
            # An error without the opcode payload (allowed for errors): cannot check the nonce,
            # so it only counts while a MAP of ours is in flight.
            if resp.result == pcp.SUCCESS or self.busy in (None, Operation.PROBE):
                self.stats["stale"] += 1
                return None
            return Answer(Operation.MAP, resp.epoch, pcp_error(resp.result, resp.lifetime))
        if m.nonce != self.nonce:
            self.stats["nonce_mismatch"] += 1
            return None
        if m.protocol != pcp.PROTO_UDP or m.internal_port != self.internal_port:
            self.stats["stale"] += 1
            return None
        if resp.result != pcp.SUCCESS:
            return Answer(Operation.MAP, resp.epoch, pcp_error(resp.result, resp.lifetime))
        return Answer(
            Operation.MAP,
            resp.epoch,
            external_ip=m.external_ip,
            external_port=m.external_port,
            lifetime=resp.lifetime,
        )

    def _parse_natpmp_refusal(self, data: bytes) -> Answer | None:
        try:
            resp = pmp.decode_response(data)
        except pmp.NatPmpDecodeError:
            self.stats["malformed"] += 1
            return None
        if resp.result != pmp.RESULT_UNSUPPORTED_VERSION or self.busy is None:
            self.stats["stale"] += 1
            return None
        err = PortMapUnsupported("gateway speaks NAT-PMP, not PCP", protocol=PCP, code=resp.result)
        kind = Operation.PROBE if self.busy is Operation.PROBE else Operation.MAP
        return Answer(kind, None, err)


def route(data: bytes) -> str | None:
    """Which session a datagram from port 5351 belongs to: ``nat-pmp``, ``pcp`` or ``None``.

    Both protocols share the port and tell themselves apart by the version byte; the one
    crossing case is "unsupported version", which a gateway sends in ITS protocol's format
    about a request in OURS (RFC 6887 section 9): version-0 result 1 is about our PCP request,
    version-2 UNSUPP_VERSION about our NAT-PMP request.
    """
    if len(data) < 4:
        return None
    version = data[0]
    if version == pmp.NATPMP_VERSION:
        result = int.from_bytes(data[2:4], "big")
        return "pcp" if result == pmp.RESULT_UNSUPPORTED_VERSION else "nat-pmp"
    if version == pcp.PCP_VERSION:
        return "nat-pmp" if data[3] == pcp.UNSUPP_VERSION else "pcp"
    return None
