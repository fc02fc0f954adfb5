"""SEND frames that overtook their sender's registration (issue 17: registration pipelined
with the first call).

A client sends ``RelayRegister`` on its control connection and, in the same flight, SEND frames
(its first call's QUIC Initial) without waiting for ``RelayRegistered``: both ends derive the
frame token from the control connection's channel binding (``frames.derive_frame_token``). The
frames arrive in order, but the relay registers on its control task, which runs only after the
datagrams already read in the same batch (a batched socket, uvloop, the simulator's same-instant
deliveries) have been handled. So a SEND frame from an address whose control connection has
completed its handshake but is not registered yet, carrying *that connection's* token, is held
here, and forwarded through the ordinary path the moment the registration is made (dropped,
counted, if it never is).

Nothing is held for a frame that proved nothing: the address must have a completed handshake
(an address proven by QUIC, a certificate, a key exchange) and the frame its secret token. At
most :data:`MAX_EARLY_FRAMES` per connection, and connections are bounded by the relay's
connection limits, so the memory is bounded too. A SEND frame that arrives even before the
client's Finished (real reordering on the path) is dropped as unregistered, as before: its QUIC
Initial is retransmitted after one probe timeout (2 x aioquic's initial RTT, 200 ms).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from hmac import compare_digest
from typing import Final

from punchthrough.netio import Address
from punchthrough.relay.frames import FRAME_SEND, MAX_SEND_FRAME, PEER_ID_END, SEND_HEADER_LENGTH

#: Frames held per connection until it registers: a dialer's first flight through the relay is
#: two datagrams per call (its QUIC Initial, one 1200-byte packet, and its sealed early offer,
#: ``traversal.offer``); 4 leaves room for a retransmission or a second call started at once.
MAX_EARLY_FRAMES: Final = 4

#: The forwarding handler a held frame is replayed through (``Forwarder.handler``'s closure of
#: the socket it arrived on).
FrameHandler = Callable[[bytes, Address], None]


class _Expected:
    __slots__ = ("frames", "owner", "token")

    def __init__(self, token: bytes, owner: object) -> None:
        self.token = token
        self.owner = owner
        self.frames: list[tuple[bytes, FrameHandler]] = []


class EarlyFrames:
    """Held SEND frames by source address (sans-IO: the caller says when things happen)."""

    def __init__(self, stats: Counter[str]) -> None:
        self._stats = stats
        self._expected: dict[Address, _Expected] = {}

    def expect(self, address: Address, token: bytes, owner: object) -> None:
        """``owner`` (a control connection from ``address``) completed its handshake and is not
        registered yet: frames from there with ``token`` may be held."""
        self.forget(address)
        self._expected[address] = _Expected(token, owner)

    def hold(self, data: bytes, address: Address, handler: FrameHandler) -> bool:
        """Hold ``data`` (a frame from an unregistered ``address``) if it may be; True when it
        was taken (held, or dropped over the bound), False when it is not ours to judge."""
        entry = self._expected.get(address)
        n = len(data)
        if (
            entry is None
            or n <= SEND_HEADER_LENGTH
            or n > MAX_SEND_FRAME
            or data[0] != FRAME_SEND
            or not compare_digest(data[PEER_ID_END:SEND_HEADER_LENGTH], entry.token)
        ):
            return False
        if len(entry.frames) >= MAX_EARLY_FRAMES:
            self._stats["early_frames_dropped"] += 1
            return True
        entry.frames.append((data, handler))
        self._stats["early_frames_held"] += 1
        return True

    def release(self, address: Address, owner: object) -> None:
        """``owner`` registered: forward what it sent early, in order, and stop expecting."""
        entry = self._expected.get(address)
        if entry is None or entry.owner is not owner:
            return
        del self._expected[address]
        for data, handler in entry.frames:
            handler(data, address)

    def forget(self, address: Address, owner: object | None = None) -> None:
        """Stop expecting frames from ``address`` (of ``owner``, when given): what was held is
        dropped and counted."""
        entry = self._expected.get(address)
        if entry is None or (owner is not None and entry.owner is not owner):
            return
        del self._expected[address]
        self._stats["early_frames_dropped"] += len(entry.frames)

    def __len__(self) -> int:
        return len(self._expected)
