"""Port mapping on the gateway: NAT-PMP (RFC 6886) and PCP (RFC 6887).

The wire codecs here are pure; the simulator's responders and the asyncio clients use them.
"""

from punchthrough.portmap.natpmp_wire import NatPmpDecodeError
from punchthrough.portmap.pcp_wire import PcpDecodeError

__all__ = ["NatPmpDecodeError", "PcpDecodeError"]
