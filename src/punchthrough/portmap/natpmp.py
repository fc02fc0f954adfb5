"""NAT-PMP client (RFC 6886), sans-IO: see :class:`~punchthrough.portmap.session.MappingSession`.

Probe = external address request (opcode 0); map/renew = UDP map request (opcode 1) suggesting
the current external port (the internal port at first); delete = the same with lifetime 0
(section 3.4). A PCP-only gateway answers our version-0 request with a version-2
UNSUPP_VERSION response: that ends the pending operation with :class:`PortMapUnsupported`.
"""

from __future__ import annotations

from punchthrough.portmap import natpmp_wire as pmp
from punchthrough.portmap import pcp_wire as pcp
from punchthrough.portmap.errors import NAT_PMP, PortMapUnsupported, natpmp_error
from punchthrough.portmap.session import (
    DEFAULT_LIFETIME,
    Answer,
    EpochTracker,
    MappingSession,
    NatPmpSchedule,
    Operation,
    Schedule,
)


class NatPmpSession(MappingSession):
    """One NAT-PMP UDP mapping for ``internal_port``."""

    protocol = NAT_PMP

    def __init__(
        self,
        internal_port: int,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        schedule: Schedule | None = None,
    ) -> None:
        super().__init__(
            internal_port,
            lifetime=lifetime,
            schedule=schedule if schedule is not None else NatPmpSchedule(),
            epoch=EpochTracker(pcp=False),
        )

    def map(self, now: float, timeout: float) -> None:
        if self.external_ip is None:
            # A map response carries no address (RFC 6886 section 3.3): probe first.
            raise RuntimeError("NAT-PMP: probe the external address before mapping")
        super().map(now, timeout)

    def _probe_request(self) -> bytes:
        return pmp.encode_request(pmp.ExternalAddressRequest())

    def _map_request(self, lifetime: int) -> bytes:
        suggested = 0
        if lifetime:
            suggested = self.external[1] if self.external is not None else self.internal_port
        return pmp.encode_request(
            pmp.MapRequest(pmp.OP_MAP_UDP, self.internal_port, suggested, lifetime)
        )

    def _parse(self, data: bytes) -> Answer | None:
        if data[:1] == bytes([pcp.PCP_VERSION]):
            return self._parse_pcp_refusal(data)
        try:
            resp = pmp.decode_response(data)
        except pmp.NatPmpDecodeError:
            self.stats["malformed"] += 1
            return None
        if isinstance(resp, pmp.ExternalAddressResponse):
            if resp.result != pmp.RESULT_SUCCESS:
                return Answer(Operation.PROBE, resp.epoch, natpmp_error(resp.result))
            return Answer(Operation.PROBE, resp.epoch, external_ip=resp.external_ip)
        if isinstance(resp, pmp.ErrorResponse):
            kind = {pmp.OP_EXTERNAL_ADDRESS: Operation.PROBE, pmp.OP_MAP_UDP: Operation.MAP}
            op = kind.get(resp.opcode)
            if op is None:
                self.stats["stale"] += 1
                return None
            return Answer(op, resp.epoch, natpmp_error(resp.result))
        if resp.protocol != pmp.OP_MAP_UDP or resp.internal_port != self.internal_port:
            self.stats["stale"] += 1  # another mapping of ours, or someone else's
            return None
        if resp.result != pmp.RESULT_SUCCESS:
            return Answer(Operation.MAP, resp.epoch, natpmp_error(resp.result))
        return Answer(
            Operation.MAP, resp.epoch, external_port=resp.external_port, lifetime=resp.lifetime
        )

    def _parse_pcp_refusal(self, data: bytes) -> Answer | None:
        try:
            resp = pcp.decode_response(data)
        except pcp.PcpDecodeError:
            self.stats["malformed"] += 1
            return None
        if resp.result != pcp.UNSUPP_VERSION or self.busy is None:
            self.stats["stale"] += 1
            return None
        err = PortMapUnsupported(
            "gateway speaks PCP, not NAT-PMP", protocol=NAT_PMP, code=resp.result
        )
        kind = Operation.PROBE if self.busy is Operation.PROBE else Operation.MAP
        return Answer(kind, None, err)
