"""QUIC configuration of peer connections, and the endpoint's tunables.

Sizes: every inner QUIC packet must fit one relay DATA frame (``MAX_RELAY_PAYLOAD`` = 1400 bytes
after a 33-byte header). We keep aioquic's ``max_datagram_size`` at QUIC's minimum of 1200 bytes
(RFC 9000 section 14: every path must carry 1200-byte UDP payloads, and a client Initial is padded
to exactly that), so packets are never larger than 1200 and always fit, with headroom for IPv6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from aioquic.quic.configuration import QuicConfiguration

from punchthrough.identity import Identity, apply_identity
from punchthrough.relay.frames import MAX_RELAY_PAYLOAD
from punchthrough.transport.demux import QUIC_CID_LENGTH
from punchthrough.traversal.hardnat.plan import Budget
from punchthrough.traversal.host import TraversalSettings
from punchthrough.traversal.monitor import KEEPALIVE

#: ALPN of end-to-end peer connections (RFC 7301); the relay control plane uses its own.
PEER_ALPN: Final = "punchthrough/1"

#: Largest UDP payload our QUIC connections send: QUIC's minimum (RFC 9000 section 14).
QUIC_MAX_DATAGRAM_SIZE: Final = 1200
assert QUIC_MAX_DATAGRAM_SIZE <= MAX_RELAY_PAYLOAD, "inner packets must fit a relay frame"

#: Worst-case overhead of a 1-RTT packet carrying one DATAGRAM frame: short header (1 byte flags,
#: our CID, up to 4 bytes packet number; RFC 9000 section 17.3), AEAD tag (16 bytes, RFC 9001
#: section 5.3), DATAGRAM frame type (1 byte) and a 2-byte length varint (RFC 9221 section 4).
_DATAGRAM_OVERHEAD: Final = (1 + QUIC_CID_LENGTH + 4) + 16 + (1 + 2)
#: Largest application datagram ``Connection.send_datagram`` accepts. A bigger one could never
#: fit a packet, and aioquic would keep it queued forever, blocking every datagram behind it.
MAX_DATAGRAM_PAYLOAD: Final = QUIC_MAX_DATAGRAM_SIZE - _DATAGRAM_OVERHEAD
#: ``max_datagram_frame_size`` transport parameter (RFC 9221 section 3): a whole frame, which
#: aioquic checks as ``frame size < limit``.
MAX_DATAGRAM_FRAME_SIZE: Final = QUIC_MAX_DATAGRAM_SIZE


#: Default bound on one relay registration (QUIC handshake + RelayRegister round trip).
DEFAULT_RELAY_TIMEOUT: Final = 5.0
#: Default bound on ``Endpoint.connect``: dial through a registered relay until usable.
DEFAULT_CONNECT_TIMEOUT: Final = 10.0


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """Timeouts and queue sizes of an :class:`~punchthrough.endpoint.Endpoint`."""

    #: QUIC idle timeout (RFC 9000 section 10.1): a connection that hears nothing for this long
    #: is lost. 30 s: long enough to ride out a relay fail-over, short enough to notice a dead
    #: peer during a call.
    idle_timeout: float = 30.0
    #: QUIC PING interval while idle: keeps the QUIC connection (idle timeout) alive, well below
    #: the idle timeout (3 missed PINGs still leave time). NAT bindings are refreshed more often,
    #: by :attr:`nat_keepalive`.
    keepalive_interval: float = 5.0
    #: Keepalive interval of every NAT binding the endpoint depends on: consent checks on a
    #: direct path (whatever the traffic) and a STUN keepalive on each relay flow. Must stay
    #: below the shortest UDP binding lifetime on the way; the default (2 s) suits lifetimes
    #: down to 3 s. Derive it from a known lifetime with
    #: :func:`punchthrough.traversal.monitor.keepalive_for_lifetime`. The endpoint also checks its
    #: local addresses this often (network changes).
    nat_keepalive: float = KEEPALIVE
    #: How long a dialer waits, by default, for a usable connection (``Endpoint.connect``, once
    #: registered with a relay: QUIC handshake through the relay and peer authentication).
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: How long an acceptor waits for the dialer's ``PeerAuth`` after the TLS handshake.
    auth_timeout: float = 10.0
    #: Registration timeout per relay (when binding, and when re-registering after a loss).
    relay_timeout: float = DEFAULT_RELAY_TIMEOUT
    #: ``Endpoint.bind`` returns once each UDP relay's ``RelayRegister`` is sent, not answered,
    #: and gathers meanwhile; ``connect()`` dials right behind it (issue 17: one relay round
    #: trip sooner). For processes that dial first (``punchthrough connect``): a refusal then
    #: surfaces from ``connect()``. Off for listeners, which must be registered before they
    #: give out their address.
    pipeline_registration: bool = False
    #: Datagrams queued for sending inside QUIC (congestion-limited); beyond it the oldest
    #: queued one is dropped: for media a fresh frame beats a stale one.
    datagram_send_queue: int = 64
    #: Received datagrams not yet read; beyond it the oldest is dropped (and counted).
    datagram_recv_queue: int = 256
    #: Verified incoming connections not yet taken by ``accept()``; beyond it new callers are
    #: refused with "busy".
    accept_backlog: int = 64
    #: Incoming connections one relayed sender id may have in progress before it proved that
    #: id (peer authentication). A caller dials us once at a time (twice when we dial it at the
    #: same moment); 4 leaves room for a redial while an abandoned attempt expires, and a flood
    #: of real Initials from one id can no longer take the slots of callers with other ids.
    pending_per_peer: int = 4
    #: The same bound per relay the Initials came through (their source address): half the
    #: backlog, so one relay (or a forger of its address) leaves half for the other relays.
    pending_per_relay: int = 32
    #: How long an incoming connection may stay unauthenticated, from its first Initial to a
    #: verified ``PeerAuth``, before a new Initial that needs its slot may take it (it is then
    #: closed; ``auth_timeout`` still ends it if nobody needs the slot). The acceptor has the
    #: proof 1.5 relayed round trips after the Initial (PeerAuth rides with the dialer's handshake
    #: completion: 120 ms in the simulator's topology, 160 ms before issue 17); 3 s
    #: covers a relayed RTT of 1 s, or three lost flights in a row (aioquic probes 0.2, 0.4,
    #: 0.8 s apart: twice its 100 ms initial RTT, doubling; RFC 9002 section 6.2), while a
    #: sender that wants to hold a slot must send a fresh real Initial every 3 s.
    pending_timeout: float = 3.0
    #: How long ``close()`` waits for QUIC's closing period (RFC 9000 section 10.2) to end.
    close_timeout: float = 2.0
    #: Look for a direct path behind every relayed call (candidates, checks, hole punch).
    #: ``False`` keeps calls on the relay (tests, or a policy that never exposes addresses).
    direct: bool = True
    #: HTTP proxy for the relays' TLS/WebSocket transports (``http://[user:pass@]host:port``,
    #: HTTP CONNECT); None: ``HTTPS_PROXY``/``https_proxy`` unless ``NO_PROXY`` names the relay.
    relay_proxy: str | None = None
    #: Budget of the hard-NAT stages (birthday sockets/probes/rate/duration, prediction).
    hardnat_budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        if not 0 < self.keepalive_interval < self.idle_timeout:
            raise ValueError("keepalive_interval must be positive and below idle_timeout")
        if not 0 < self.nat_keepalive < self.idle_timeout:
            raise ValueError("nat_keepalive must be positive and below idle_timeout")
        for name in (
            "connect_timeout",
            "auth_timeout",
            "relay_timeout",
            "close_timeout",
            "pending_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "datagram_send_queue",
            "datagram_recv_queue",
            "accept_backlog",
            "pending_per_peer",
            "pending_per_relay",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def traversal_settings(self) -> TraversalSettings:
        """The part of this configuration each connection's traversal uses."""
        return TraversalSettings(budget=self.hardnat_budget, nat_keepalive=self.nat_keepalive)


def quic_configuration(
    identity: Identity, *, is_client: bool, config: EndpointConfig
) -> QuicConfiguration:
    """A peer connection's QUIC configuration: our certificate, datagrams on, sizes bounded."""
    cfg = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[PEER_ALPN],
        idle_timeout=config.idle_timeout,
        max_datagram_size=QUIC_MAX_DATAGRAM_SIZE,
        max_datagram_frame_size=MAX_DATAGRAM_FRAME_SIZE,
        connection_id_length=QUIC_CID_LENGTH,
    )
    return apply_identity(cfg, identity)
