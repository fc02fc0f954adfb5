"""Packet routing: which connection gets a packet that reached the endpoint.

One socket carries every connection, so everything that arrives is routed here, by what the
packet itself names, never by who sent it (two connections with the same peer, e.g. both peers
dialling at once, must never get mixed up):

- a relayed QUIC packet (a relay DATA frame stamped with the sender's peer id) by its QUIC
  destination connection ID; direct QUIC packets take the same table through the mux;
- a long-header Initial nobody owns starts an acceptor connection (the endpoint decides whether
  to take it);
- a dialer's early offer (relayed beside its Initial) by the connection ID it names, to the
  acceptor connection that Initial started, if the same peer id was stamped on both;
- a STUN connectivity check by the ufrag in its USERNAME, a check response by the transaction
  that asked for it.

Anything else nobody owns is dropped and counted (``stats``), never answered.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from punchthrough.endpoint.connection import Connection
from punchthrough.identity import PeerId
from punchthrough.netio import Address, DatagramSocket
from punchthrough.stun import Message as StunMessage
from punchthrough.stun import MessageClass, Method, StunDecodeError
from punchthrough.stun import Username as StunUsername
from punchthrough.stun import decode_message as decode_stun
from punchthrough.transport.demux import DatagramMux, PacketKind, classify, quic_destination_cid
from punchthrough.transport.path import Path
from punchthrough.transport.quic import is_initial
from punchthrough.traversal.host import AgentHandle
from punchthrough.traversal.keys import recipient_ufrag
from punchthrough.traversal.offer import is_offer, offer_cid

#: ``(relay, peer) -> send function`` for a relay path.
SenderFactory = Callable[[Address, PeerId], Callable[[bytes], None]]


class PacketRouter:
    """Connection IDs and check usernames to their owners; ``stats`` counts the drops."""

    def __init__(
        self,
        mux: DatagramMux,
        sock: DatagramSocket,
        stats: Counter[str],
        *,
        relay_sender: SenderFactory,
        incoming: Callable[[Address, PeerId, bytes], None],
        is_relay: Callable[[Address], bool],
    ) -> None:
        """``incoming(relay, peer, initial)``: an Initial nobody owns. ``is_relay(addr)``: a
        STUN answer from there may be a relay client's keepalive answer (left to it)."""
        self._mux = mux
        self._sock = sock
        self._stats = stats
        self._relay_sender = relay_sender
        self._incoming = incoming
        self._is_relay = is_relay
        self._cids: dict[bytes, Connection] = {}
        #: Check usernames (our ufrag of each connection) to that connection's agent.
        self.ufrags: dict[str, AgentHandle] = {}

    # -- QUIC ---------------------------------------------------------------------------------
    def register_cid(self, cid: bytes, conn: Connection | None) -> None:
        """Route QUIC packets for ``cid`` (relayed or direct) to ``conn`` (``None`` removes)."""
        if conn is None:
            self._cids.pop(cid, None)
            self._mux.remove_quic_cid(cid)
        else:
            self._cids[cid] = conn
            self._mux.add_quic_cid(cid, conn._direct_packet)

    def forget(self, conn: Connection) -> None:
        """``conn`` closed: none of its connection IDs routes anywhere any more."""
        for cid in [c for c, owner in self._cids.items() if owner is conn]:
            self.register_cid(cid, None)

    def relay_data(self, relay: Address, src: PeerId, payload: bytes) -> None:
        """A QUIC packet (or an early offer) relayed from ``src`` through ``relay``."""
        if is_offer(payload):
            self._offer(src, payload)
            return
        cid = quic_destination_cid(payload)
        conn = self._cids.get(cid) if cid is not None else None
        if conn is not None:
            if conn.peer_id != src:
                self._stats["dropped_relay_wrong_peer"] += 1
                return
            path = Path.relay(relay)
            if not conn.paths.has(path):
                conn.paths.add(path, self._relay_sender(relay, src))
            conn.packet_received(payload, path)
            return
        if classify(payload) is PacketKind.QUIC_LONG and is_initial(payload):
            self._incoming(relay, src, payload)
            return
        self._stats["dropped_relay_unknown"] += 1

    def _offer(self, src: PeerId, payload: bytes) -> None:
        cid = offer_cid(payload)
        conn = self._cids.get(cid) if cid is not None else None
        if conn is None or conn.peer_id != src:
            self._stats["offers_unmatched"] += 1  # no state: its Initial is not (yet) ours
            return
        self._stats[f"offers_{conn.early_offer(payload)}"] += 1

    # -- STUN checks --------------------------------------------------------------------------
    def register_ufrag(self, ufrag: str, agent: AgentHandle | None) -> None:
        """Route checks whose USERNAME names ``ufrag`` to ``agent`` (``None`` removes)."""
        if agent is None:
            self.ufrags.pop(ufrag, None)
        else:
            self.ufrags[ufrag] = agent

    def stun_check(self, data: bytes, addr: Address) -> bool:
        """A STUN datagram the STUN client did not claim: a peer's check or check response
        (a mux STUN handler: True when handled or dropped here)."""
        try:
            msg: StunMessage = decode_stun(data)
        except StunDecodeError:
            self._stats["checks_malformed"] += 1
            return True
        if msg.method != Method.BINDING:
            return False
        local = self._sock.local_address
        if msg.message_class is MessageClass.REQUEST:
            user = msg.get(StunUsername)
            ufrag = recipient_ufrag(user.value) if user is not None else None
            agent = self.ufrags.get(ufrag) if ufrag is not None else None
            if agent is None:
                # No connection of ours has that key: drop, count, never answer.
                self._stats["checks_unknown_username"] += 1
                return True
            agent.handle_stun(data, local, addr)
            return True
        if msg.message_class in (MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE):
            for agent in list(self.ufrags.values()):
                if agent.owns(msg.transaction_id):
                    agent.handle_stun(data, local, addr)
                    return True
            if self._is_relay(addr):
                return False  # a relay's answer to its client's NAT keepalive (next handler)
            self._stats["checks_unknown_transaction"] += 1
            return True
        return False
