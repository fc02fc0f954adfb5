"""Port mapping of the endpoint's main socket on the LAN gateway (NAT-PMP, PCP, UPnP).

Glue between :class:`~punchthrough.portmap.PortMapper` and the endpoint: asked only when the
caller names a gateway, started before the relays register (so that the address they observe is
the one the mapping keeps), bound on our address on the gateway's LAN, and described for the
traversal report (``LocalCandidates.port_mapping_note``). A mapping that changes later (renewed
elsewhere, lost, double NAT found) counts as a network change.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from punchthrough.netio import Network
from punchthrough.portmap import PortMapError, PortMapper, PortMapping
from punchthrough.traversal.agent import LocalCandidates


def address_towards(gateway: str, host_ips: Sequence[str]) -> str | None:
    """Our address on the gateway's LAN: same /24 first, then any non-loopback address.

    The mapper binds its socket there (PCP puts it in the request); the first listed address is
    often 127.0.0.1, from which the gateway is unreachable (found in the lab).
    """
    usable = [ip for ip in host_ips if not ipaddress.ip_address(ip).is_loopback]
    prefix = gateway.rsplit(".", 1)[0] + "."
    same_net = [ip for ip in usable if ip.startswith(prefix)]
    candidates = same_net or usable
    return candidates[0] if candidates else None


class MainSocketMapping:
    """The main socket's mapping: ``mapper`` (None: no gateway given) and its description."""

    def __init__(self, local: LocalCandidates, on_change: Callable[[], None]) -> None:
        """``on_change()``: the gateway changed or dropped the mapping after it was made."""
        self._local = local
        self._on_change = on_change
        self.mapper: PortMapper | None = None

    async def start(
        self, net: Network, gateway: str, port: int, host_ips: Sequence[str], *, upnp: bool
    ) -> None:
        """Map ``port`` on ``gateway``; best effort (a failure is only noted)."""
        mapper = PortMapper(
            net,
            gateway,
            port,
            local_ip=address_towards(gateway, host_ips),
            upnp=upnp,
            on_change=self._changed,
        )
        self.mapper = mapper
        try:
            mapping = await mapper.start()
        except (OSError, PortMapError, ValueError) as exc:
            self._local.port_mapping_note = f"port mapping failed: {exc}"
            return
        self._note(mapping)

    def _note(self, mapping: PortMapping | None) -> None:
        mapper = self.mapper
        if mapping is None:
            answered = mapper.report.answered() if mapper is not None else []
            self._local.port_mapping_note = (
                "the gateway refused a mapping"
                if answered
                else "the gateway answers no port-mapping protocol"
            )
        elif mapping.double_nat:
            self._local.port_mapping_note = (
                f"mapping {mapping.external_text()} is behind another NAT (double NAT): not offered"
            )
        else:
            self._local.port_mapping_note = f"mapped {mapping.external_text()} ({mapping.protocol})"

    def _changed(self, mapping: PortMapping | None) -> None:
        self._note(mapping)
        self._on_change()

    async def close(self) -> None:
        """Delete the mapping (if any) on the gateway."""
        if self.mapper is not None:
            await self.mapper.close()
