"""The relay's data plane: DATA frames from registered clients to registered peers.

* SEND frames are accepted only from a registered address and with that registration's frame
  token (a forged source address alone costs the client nothing: no rate-limit tokens, no
  forwarding); the source peer id stamped on the forwarded DATA frame is the registration's,
  and the frame carries the *destination's* token so that its client can tell it from one
  forged with the relay's address. Payloads are never decrypted or inspected.
* Each client has packet and byte token buckets (:class:`~punchthrough.relay.limits.
  ClientLimiter`). NOTICE replies go only to registered senders, at most one per dropped frame
  (never amplifying: a NOTICE is 34 bytes, a DATA frame at least 34) and rate limited.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from hmac import compare_digest

from punchthrough.netio import Address, DatagramSocket
from punchthrough.relay.early import EarlyFrames
from punchthrough.relay.frames import (
    FRAME_DATA,
    FRAME_SEND,
    MAX_SEND_FRAME,
    NOTICE_RATE_LIMITED,
    NOTICE_UNKNOWN_DESTINATION,
    PEER_ID_END,
    SEND_HEADER_LENGTH,
    encode_notice,
)
from punchthrough.relay.registry import LocalRegistry, Registration

#: Test-only hook: transform (or drop, with None) each forwarded payload.
PayloadFilter = Callable[[bytes], bytes | None]


class Forwarder:
    """Forwards DATA frames between the registrations of one relay, on any of its sockets."""

    def __init__(
        self,
        sockets: dict[Address, DatagramSocket],
        registry: LocalRegistry,
        stats: Counter[str],
        payload_filter: PayloadFilter | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self.registry = registry
        self._stats = stats
        self._payload_filter = payload_filter
        #: Frames from a handshake-complete, not yet registered sender (``.early``); set by the
        #: server to its control plane's.
        self.early: EarlyFrames | None = None

    def handler(self, local: Address, sock: DatagramSocket) -> Callable[[bytes, Address], None]:
        """The forwarding hot path, as a closure (no attribute lookups per frame)."""
        by_addr = self.registry._by_addr
        by_peer = self.registry._by_peer
        stats = self._stats
        now_fn = self._loop.time
        prefix = bytes([FRAME_DATA])

        def on_frame(data: bytes, addr: Address) -> None:
            src = by_addr.get(addr)
            if src is None:
                early = self.early
                if early is None or not early.hold(data, addr, on_frame):
                    stats["dropped_unregistered"] += 1
                return
            n = len(data)
            if n <= SEND_HEADER_LENGTH or n > MAX_SEND_FRAME or data[0] != FRAME_SEND:
                stats["malformed"] += 1
                src.stats["malformed"] += 1
                return
            if not compare_digest(data[PEER_ID_END:SEND_HEADER_LENGTH], src.frame_token):
                # From the client's address but not from the client: nothing is charged to it.
                stats["dropped_bad_token"] += 1
                return
            size = n - SEND_HEADER_LENGTH
            stats["frames_in"] += 1
            stats["bytes_in"] += size
            cstats = src.stats
            cstats["frames_in"] += 1
            cstats["bytes_in"] += size
            now = now_fn()
            dest_raw = data[1:PEER_ID_END]
            if not src.limiter.allow_frame(now, size):
                stats["dropped_rate"] += 1
                cstats["dropped_rate"] += 1
                self._notice(src, NOTICE_RATE_LIMITED, dest_raw, now)
                return
            dest = by_peer.get(dest_raw)
            if dest is None:
                stats["dropped_unknown_dest"] += 1
                cstats["dropped_unknown_dest"] += 1
                self._notice(src, NOTICE_UNKNOWN_DESTINATION, dest_raw, now)
                return
            payload = data[SEND_HEADER_LENGTH:]
            if self._payload_filter is not None:
                filtered = self._payload_filter(payload)
                if not filtered:
                    stats["dropped_filter"] += 1
                    return
                payload = filtered
            out_sock = sock if dest.local == local else self._sockets.get(dest.local, sock)
            try:
                out_sock.sendto(prefix + src.raw + dest.frame_token + payload, dest.address)
            except OSError:
                stats["send_errors"] += 1
                return
            stats["frames_out"] += 1
            stats["bytes_out"] += size
            dest.stats["frames_out"] += 1
            dest.stats["bytes_out"] += size

        return on_frame

    def _notice(self, reg: Registration, code: int, peer_raw: bytes, now: float) -> None:
        if not reg.limiter.notices.take(now):
            return
        sock = self._sockets.get(reg.local)
        if sock is None or sock.closed:
            return
        try:
            sock.sendto(encode_notice(code, peer_raw, reg.frame_token), reg.address)
        except OSError:
            self._stats["send_errors"] += 1
            return
        self._stats["notices_sent"] += 1
        reg.stats["notices_sent"] += 1
