"""First-byte demultiplexing of one UDP socket (RFC 9443 style), then QUIC connection IDs.

An endpoint's main socket carries STUN (to servers, and peer connectivity checks), relay frames,
and QUIC packets for any number of connections. The first byte decides (RFC 9443 section 3):

======== =========== ==========================================================================
bytes    protocol    notes
======== =========== ==========================================================================
0-3      STUN        RFC 8489: the two top bits of a STUN message are zero
16-19    relay frame punchthrough relay data frames (RFC 9443's ZRTP range, unused by us)
64-127   QUIC short  RFC 9000 17.3: header form 0, fixed bit 1
192-255  QUIC long   RFC 9000 17.2: header form 1, fixed bit 1
others   dropped     counted in ``stats["dropped_first_byte"]`` (DTLS, RTP, TURN channels,
                     QUIC with the fixed bit cleared: nothing we speak)
======== =========== ==========================================================================

QUIC packets are then routed by destination connection ID. All our connection IDs have
``QUIC_CID_LENGTH`` bytes, which is what makes short headers (which do not carry a CID length)
routable; a long-header packet with an unknown DCID goes to the ``on_new_quic`` handler (a server
connection may be created there, if it is an Initial).
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Callable

from punchthrough.netio import Address, DatagramSocket

log = logging.getLogger(__name__)

#: Bytes in every connection ID we issue (aioquic's default ``connection_id_length``).
QUIC_CID_LENGTH = 8
#: RFC 9000 section 17.2: a long header DCID is at most 20 bytes in QUIC v1.
MAX_LONG_CID_LENGTH = 20

#: (first byte range, kind) per RFC 9443 section 3 and our relay frame choice above.
STUN_FIRST_BYTES = range(0, 4)
RELAY_FIRST_BYTES = range(16, 20)


class PacketKind(enum.Enum):
    STUN = "stun"
    RELAY = "relay"
    QUIC_SHORT = "quic-short"
    QUIC_LONG = "quic-long"
    UNKNOWN = "unknown"


def classify(data: bytes) -> PacketKind:
    """What protocol a datagram belongs to, by its first byte alone."""
    if not data:
        return PacketKind.UNKNOWN
    b = data[0]
    if b in STUN_FIRST_BYTES:
        return PacketKind.STUN
    if b in RELAY_FIRST_BYTES:
        return PacketKind.RELAY
    if 64 <= b <= 127:
        return PacketKind.QUIC_SHORT
    if b >= 192:
        return PacketKind.QUIC_LONG
    return PacketKind.UNKNOWN


def quic_destination_cid(data: bytes) -> bytes | None:
    """The destination connection ID of a QUIC packet, or None if the header is truncated."""
    kind = classify(data)
    if kind is PacketKind.QUIC_SHORT:
        if len(data) < 1 + QUIC_CID_LENGTH:
            return None
        return data[1 : 1 + QUIC_CID_LENGTH]
    if kind is PacketKind.QUIC_LONG:
        # first byte, 4-byte version, 1-byte DCID length, DCID (RFC 9000 section 17.2)
        if len(data) < 6:
            return None
        n = data[5]
        if n > MAX_LONG_CID_LENGTH or len(data) < 6 + n:
            return None
        return data[6 : 6 + n]
    return None


Handler = Callable[[bytes, Address], None]
#: Called for STUN datagrams; returns True when it consumed the datagram.
StunHandler = Callable[[bytes, Address], bool]


class DatagramMux:
    """Owns the receiver slot of one socket and hands each datagram to the right protocol.

    Handlers run synchronously in the receive callback: they must not block. A handler that
    raises is logged and counted; the socket keeps serving the others.
    """

    def __init__(self, sock: DatagramSocket) -> None:
        self.sock = sock
        self._stun: list[StunHandler] = []
        self._relay: Handler | None = None
        self._relay_sources: dict[Address, Handler] = {}
        self._quic: dict[bytes, Handler] = {}
        self._on_new_quic: Handler | None = None
        self.stats: Counter[str] = Counter()
        sock.set_receiver(self._receive)

    # -- registration ----------------------------------------------------------------------
    def add_stun_handler(self, handler: StunHandler) -> None:
        """STUN handlers are tried in order until one consumes the datagram."""
        self._stun.append(handler)

    def remove_stun_handler(self, handler: StunHandler) -> None:
        if handler in self._stun:
            self._stun.remove(handler)

    def set_relay_handler(self, handler: Handler | None) -> None:
        """Catch-all for relay frames (the relay server's side: frames from any client)."""
        self._relay = handler

    def add_relay_source(self, addr: Address, handler: Handler) -> None:
        """Relay frames from ``addr`` (one relay we are a client of) go to ``handler``."""
        self._relay_sources[addr] = handler

    def remove_relay_source(self, addr: Address) -> None:
        self._relay_sources.pop(addr, None)

    def add_quic_cid(self, cid: bytes, handler: Handler) -> None:
        self._quic[bytes(cid)] = handler

    def remove_quic_cid(self, cid: bytes) -> None:
        self._quic.pop(bytes(cid), None)

    def set_new_quic_handler(self, handler: Handler | None) -> None:
        """Where long-header packets with an unknown DCID go (server side: a new Initial)."""
        self._on_new_quic = handler

    def close(self) -> None:
        self.sock.set_receiver(None)
        self._stun.clear()
        self._quic.clear()
        self._relay_sources.clear()
        self._relay = self._on_new_quic = None

    # -- routing ---------------------------------------------------------------------------
    def _receive(self, data: bytes, addr: Address) -> None:
        kind = classify(data)
        try:
            if kind is PacketKind.STUN:
                for h in list(self._stun):
                    if h(data, addr):
                        self.stats["stun"] += 1
                        return
                self.stats["dropped_stun_unclaimed"] += 1
            elif kind is PacketKind.RELAY:
                relay = self._relay_sources.get(addr, self._relay)
                if relay is None:
                    self.stats["dropped_relay_no_handler"] += 1
                else:
                    self.stats["relay"] += 1
                    relay(data, addr)
            elif kind in (PacketKind.QUIC_SHORT, PacketKind.QUIC_LONG):
                self._route_quic(kind, data, addr)
            else:
                self.stats["dropped_first_byte"] += 1
        except Exception:
            self.stats["handler_errors"] += 1
            log.exception("handler for %s datagram from %s:%d failed", kind.value, *addr)

    def _route_quic(self, kind: PacketKind, data: bytes, addr: Address) -> None:
        cid = quic_destination_cid(data)
        if cid is None:
            self.stats["dropped_quic_truncated"] += 1
            return
        handler = self._quic.get(cid)
        if handler is not None:
            self.stats["quic"] += 1
            handler(data, addr)
        elif kind is PacketKind.QUIC_LONG and self._on_new_quic is not None:
            self.stats["quic_new"] += 1
            self._on_new_quic(data, addr)
        else:
            self.stats["dropped_quic_unknown_cid"] += 1
