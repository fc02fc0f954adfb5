"""Port mapping on the gateway: NAT-PMP (RFC 6886), PCP (RFC 6887) and UPnP IGD.

The wire codecs and the NAT-PMP/PCP sessions are pure (sans-IO); :class:`PortMapper` runs them
on a :class:`~punchthrough.netio.Network` socket (kernel or simulator). UPnP uses the optional
``async-upnp-client`` (extra ``upnp``), imported only when asked for.
"""

from punchthrough.portmap.errors import (
    NAT_PMP,
    PCP,
    UPNP,
    PortMapAddressMismatch,
    PortMapError,
    PortMapNetworkFailure,
    PortMapNoResources,
    PortMapNotAuthorized,
    PortMapRefused,
    PortMapTimeout,
    PortMapUnsupported,
)
from punchthrough.portmap.gateway import (
    default_gateway,
    is_double_nat_address,
    local_ip_towards,
    parse_proc_net_route,
)
from punchthrough.portmap.mapper import PortMapper
from punchthrough.portmap.mapping import PortMapping, ProbeReport
from punchthrough.portmap.natpmp import NatPmpSession
from punchthrough.portmap.natpmp_wire import NatPmpDecodeError
from punchthrough.portmap.pcp import PcpSession
from punchthrough.portmap.pcp_wire import PcpDecodeError

__all__ = [
    "NAT_PMP",
    "PCP",
    "UPNP",
    "NatPmpDecodeError",
    "NatPmpSession",
    "PcpDecodeError",
    "PcpSession",
    "PortMapAddressMismatch",
    "PortMapError",
    "PortMapNetworkFailure",
    "PortMapNoResources",
    "PortMapNotAuthorized",
    "PortMapRefused",
    "PortMapTimeout",
    "PortMapUnsupported",
    "PortMapper",
    "PortMapping",
    "ProbeReport",
    "default_gateway",
    "is_double_nat_address",
    "local_ip_towards",
    "parse_proc_net_route",
]
