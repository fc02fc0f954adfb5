"""What a connection's traversal needs from the objects around it: its endpoint (facts),
its connection (the control stream, the paths, QUIC), and its configuration (one way in)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.signal import Message
from punchthrough.transport.path import PathManager
from punchthrough.traversal.hardnat.plan import Budget
from punchthrough.traversal.local import LocalCandidates


@dataclass(frozen=True, slots=True)
class TraversalSettings:
    """The endpoint configuration the traversal uses (``EndpointConfig`` -> here, one way)."""

    budget: Budget
    #: Keepalive interval of a direct path's NAT bindings (``monitor.KEEPALIVE``).
    nat_keepalive: float


class DirectHost(Protocol):
    """What a connection's agent needs from its endpoint (facts, not configuration)."""

    @property
    def sock(self) -> DatagramSocket: ...

    @property
    def local_candidates(self) -> LocalCandidates: ...

    def register_ufrag(self, ufrag: str, agent: AgentHandle | None) -> None: ...

    @property
    def network(self) -> Network | None: ...

    def sample_servers(self) -> list[Address]: ...

    def network_suspect(self, reason: str) -> None:
        """A path died or a send failed: the endpoint should check its network now (cheap:
        local addresses, a keepalive to each relay) and re-gather if something changed."""
        ...


class ConnectionSide(Protocol):
    """What the agent needs from its :class:`~punchthrough.endpoint.Connection`."""

    is_client: bool
    paths: PathManager

    def send_control(self, msg: Message) -> None: ...

    def add_control_handler(
        self, msg_type: type[Message], handler: Callable[[Message], None]
    ) -> None: ...

    def change_connection_id(self) -> None: ...

    def quic_rtt(self) -> float | None: ...

    def direct_packet(self, data: bytes, addr: Address) -> None: ...

    def ping(self) -> None:
        """Send a QUIC PING now (current path, and any path mirrored onto)."""
        ...

    def path_switched(self) -> None:
        """The current path changed: restart QUIC's probe back-off (it grew on the old path)."""
        ...


class AgentHandle(Protocol):
    """What the endpoint calls on a connection's agent: checks routed to it (by USERNAME or
    transaction id) and news of its own network."""

    def handle_stun(self, data: bytes, local: Address, remote: Address) -> None: ...

    def owns(self, txid: bytes) -> bool: ...

    def local_summary_ready(self) -> None: ...

    def local_candidates_changed(self) -> None: ...
