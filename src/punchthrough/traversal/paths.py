"""The call's paths as traversal moves it: a direct path per verified pair (on the socket that
found it), the switch with its relay overlap and deferred connection-ID change, the relay
mirror while a direct path is suspect, and the way back to the relay."""

from __future__ import annotations

import logging
import math
from typing import Final

from punchthrough.netio import Address, DatagramSocket
from punchthrough.transport.path import Path
from punchthrough.traversal.checks import CandidatePair
from punchthrough.traversal.host import ConnectionSide

log = logging.getLogger(__name__)

#: One-way delay assumed before QUIC has measured the round-trip time (RFC 9002 section 6.2.2
#: uses 333 ms as the initial RTT; our connection has always measured it by now).
DEFAULT_OWD: Final = 0.05
#: Relay mirroring after a switch to a direct path: at least this long, or 2 round trips.
OVERLAP_MIN: Final = 0.25


class CallPaths:
    """One connection's paths, seen from traversal (the path manager is the connection's)."""

    def __init__(self, conn: ConnectionSide, main: DatagramSocket) -> None:
        self._conn = conn
        self._main = main
        #: Sockets checks and direct paths may use: the main socket and hard stages' sockets.
        self.sockets: dict[Address, DatagramSocket] = {main.local_address: main}
        #: The direct path the call is on (or was, last).
        self.direct: Path | None = None
        #: When to change the QUIC connection ID after a switch (None: nothing pending).
        self.cid_change_at: float | None = None

    def on_direct(self) -> bool:
        current = self._conn.paths.current
        return current is not None and current.kind == "direct"

    def relay(self) -> Path | None:
        return next((p for p in self._conn.paths.paths if p.kind == "relay"), None)

    def path_for(self, local: Address, remote: Address) -> Path:
        """The direct path ``local -> remote``, known to the path manager from now on."""
        path = Path.direct(local, remote)
        paths = self._conn.paths
        if not paths.has(path):
            sock = self.sockets.get(local, self._main)

            def send(data: bytes, _remote: Address = remote) -> None:
                sock.sendto(data, _remote)

            paths.add(path, send)
        return path

    def forget(self, local: Address) -> None:
        """An extra socket closed: no direct path on it any more."""
        self.sockets.pop(local, None)
        paths = self._conn.paths
        for path in [p for p in paths.paths if p.kind == "direct" and p.local == local]:
            paths.remove(path, "its socket closed")

    def switch(self, pair: CandidatePair, now: float, reason: str) -> None:
        paths = self._conn.paths
        previous = paths.current
        path = self.path_for(pair.local, pair.remote)
        if paths.switch_to(path, f"{reason}: {pair.describe()}"):
            self._conn.path_switched()
        self.direct = path
        rtt = self._conn.quic_rtt() or 2 * DEFAULT_OWD
        overlap = max(OVERLAP_MIN, 2 * rtt)
        if previous is not None and previous != path:
            # Overlap: the peer may not take packets on the new path for another round trip
            # (its own check of the pair is in flight); the old path still delivers them.
            relay = previous if previous.kind == "relay" else self.relay()
            if relay is not None:
                paths.mirror(relay, now + overlap)
        # New connection ID for the new path, but only once the overlap's packets (old CID)
        # have arrived through the relay: the RETIRE_CONNECTION_ID frame races ahead on the
        # faster direct path, and the peer's QUIC stack drops packets for a retired CID.
        self.cid_change_at = now + overlap + rtt

    def change_cid(self) -> bool:
        """The deferred connection-ID change; False when it failed (no spare CID yet)."""
        self.cid_change_at = None
        if not self.on_direct():
            return True
        try:
            self._conn.change_connection_id()
        except Exception:  # no spare CID from the peer yet: linkability only, not correctness
            log.debug("change_connection_id failed", exc_info=True)
            return False
        return True

    def mirror_relay(self) -> None:
        """The direct path is suspect: everything goes on the relay too (and a PING on both:
        the relay's copy re-opens our NAT's relay binding if it was forgotten)."""
        relay = self.relay()
        if relay is not None:
            self._conn.paths.mirror(relay, math.inf)
            self._conn.ping()

    def stop_mirror(self) -> None:
        relay = self.relay()
        if relay is not None:
            self._conn.paths.stop_mirror(relay)

    def back_to_relay(self, reason: str) -> None:
        relay = self.relay()
        paths = self._conn.paths
        paths.stop_mirror()
        if relay is not None and paths.switch_to(relay, reason):
            self._conn.path_switched()
