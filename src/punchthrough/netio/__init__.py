"""The datagram socket interface shared by the real network and the simulator.

Every piece of endpoint code (STUN client and server, netcheck, later the relay and the peer
connection) talks to a :class:`Network` and its :class:`DatagramSocket` objects, never to
``socket`` or asyncio transports directly. ``UdpNetwork`` is the kernel; ``punchthrough.sim``
provides the simulated one. No code path branches on which one it has.
"""

from punchthrough.netio.base import (
    Address,
    DatagramReceiver,
    DatagramSocket,
    Network,
    SocketClosed,
    SocketState,
)
from punchthrough.netio.udp import UdpNetwork, UdpSocket

__all__ = [
    "Address",
    "DatagramReceiver",
    "DatagramSocket",
    "Network",
    "SocketClosed",
    "SocketState",
    "UdpNetwork",
    "UdpSocket",
]
