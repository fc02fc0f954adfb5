"""The relay data plane: DATA and NOTICE frames (sans-IO codec).

Wire format (first byte in 16-19, the range the socket multiplexer routes to the relay; see
:mod:`punchthrough.transport.demux`)::

    0x10 DATA    | peer id (32 raw bytes) | frame token (8) | payload (1..MAX_RELAY_PAYLOAD)
    0x11 NOTICE  | code (1 byte) | peer id (32 raw bytes) | frame token (8)   exactly 42 bytes
    0x12 SEND    | peer id (32 raw bytes) | frame token (8) | payload (1..MAX_RELAY_PAYLOAD)

Every frame carries the frame token of the registration it belongs to, a secret only that
client and the relay know: both derive it from the control connection's channel binding
(:func:`derive_frame_token`), so the client may send SEND frames right behind its
``RelayRegister``, before the answer (issue 17); the relay repeats it in
``RelayRegistered.frame_token``. A source address alone proves nothing (issue 12). Client ->
relay is SEND: the *destination* peer id and the sender's token, so a frame forged with a
registered client's source address is dropped before it costs that client anything (finding
3). Relay -> client is DATA (the *source* peer id, stamped by the relay from the sender's
registration, never trusted from the sender) and NOTICE, both with the *recipient's* token, so
a frame forged with the relay's source address (an off-path attacker who knows a peer's public
mapping) is dropped by the client before it takes an incoming-connection slot or ends a call
(finding 1, its forged-source variant). The payload is one opaque, end-to-end encrypted inner
packet. Anything else in 16-19, and anything shorter than its header, is malformed.

The relay's hot path (``relay.forward``) builds no objects: it checks a SEND frame's length,
type and token inline and slices. The object API (:func:`decode_frame`,
:func:`data_header_ok`) is for clients and tests.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from punchthrough.identity import PeerId
from punchthrough.relay.errors import RelayFrameError

#: ALPN of the relay control connection (QUIC, RFC 9001 section 8.1).
RELAY_ALPN: Final = "punchthrough-relay/1"

#: Frame types (first byte); 0x13 is reserved, currently malformed.
FRAME_DATA: Final = 0x10
FRAME_NOTICE: Final = 0x11
FRAME_SEND: Final = 0x12
#: Raw Ed25519 public key = peer id (RFC 8032 section 5.1.5).
PEER_ID_BYTES: Final = 32
#: A registration's frame token: 64 random bits, which an off-path sender cannot guess (a 2^-64
#: chance per forged frame). It is not a MAC: someone on the path to the relay sees it, and
#: could already drop or delay that client's packets anyway.
FRAME_TOKEN_BYTES: Final = 8
#: Domain separation of :func:`derive_frame_token` (the same binding also keys the
#: registration signature, under ``RELAY_REGISTER_CONTEXT``).
FRAME_TOKEN_LABEL: Final = b"punchthrough relay frame token v1"
#: Where a frame's peer id ends and its token starts (type byte + peer id).
PEER_ID_END: Final = 1 + PEER_ID_BYTES
#: Type byte + peer id + frame token: the header of SEND and of DATA.
SEND_HEADER_LENGTH: Final = PEER_ID_END + FRAME_TOKEN_BYTES
DATA_HEADER_LENGTH: Final = SEND_HEADER_LENGTH
#: Type byte + code byte + peer id + frame token: never longer than the shortest SEND
#: (header + 1 byte), so a NOTICE answering a frame never amplifies it.
NOTICE_LENGTH: Final = 2 + PEER_ID_BYTES + FRAME_TOKEN_BYTES
#: Largest inner packet: QUIC packets are <= 1200 bytes on our connections (RFC 9000 section
#: 14: we never raise max_datagram_size), plus headroom; 41 + 1400 stays under a 1500-byte MTU
#: with IPv6 (40) and UDP (8) headers.
MAX_RELAY_PAYLOAD: Final = 1400
MAX_DATA_FRAME: Final = DATA_HEADER_LENGTH + MAX_RELAY_PAYLOAD
MAX_SEND_FRAME: Final = SEND_HEADER_LENGTH + MAX_RELAY_PAYLOAD

#: NOTICE codes.
NOTICE_UNKNOWN_DESTINATION: Final = 1  # destination peer id is not registered here
NOTICE_RATE_LIMITED: Final = 2  # your frames are being dropped by the rate limiter

_DATA_PREFIX: Final = bytes([FRAME_DATA])
_SEND_PREFIX: Final = bytes([FRAME_SEND])


@dataclass(frozen=True, slots=True)
class DataFrame:
    peer_id: PeerId
    token: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class NoticeFrame:
    code: int
    peer_id: PeerId
    token: bytes


Frame = DataFrame | NoticeFrame


def _peer_and_token(peer_id: PeerId | bytes, token: bytes) -> bytes:
    raw = peer_id.raw if isinstance(peer_id, PeerId) else peer_id
    if len(raw) != PEER_ID_BYTES:
        raise RelayFrameError(f"a peer id is {PEER_ID_BYTES} bytes, got {len(raw)}")
    if len(token) != FRAME_TOKEN_BYTES:
        raise RelayFrameError(f"a frame token is {FRAME_TOKEN_BYTES} bytes, got {len(token)}")
    return raw + token


def _check_payload(payload: bytes) -> None:
    if not payload:
        raise RelayFrameError("a relay frame carries a packet; the payload is empty")
    if len(payload) > MAX_RELAY_PAYLOAD:
        raise RelayFrameError(f"payload of {len(payload)} bytes exceeds {MAX_RELAY_PAYLOAD}")


def encode_data(peer_id: PeerId | bytes, token: bytes, payload: bytes) -> bytes:
    """One DATA frame (relay -> client): ``payload`` from ``peer_id``, under the recipient's
    frame token. Raises :class:`RelayFrameError` for an empty or oversize payload."""
    _check_payload(payload)
    return _DATA_PREFIX + _peer_and_token(peer_id, token) + payload


def encode_send(peer_id: PeerId | bytes, token: bytes, payload: bytes) -> bytes:
    """One SEND frame (client -> relay): ``payload`` to ``peer_id``, under our frame token."""
    _check_payload(payload)
    return _SEND_PREFIX + _peer_and_token(peer_id, token) + payload


def encode_notice(code: int, peer_id: PeerId | bytes, token: bytes) -> bytes:
    """One NOTICE (relay -> client) about ``peer_id``, under the recipient's frame token."""
    if not 0 <= code <= 255:
        raise RelayFrameError(f"notice code {code} does not fit one byte")
    return bytes([FRAME_NOTICE, code]) + _peer_and_token(peer_id, token)


def derive_frame_token(binding: bytes) -> bytes:
    """The frame token of the registration made on a control connection with ``binding``
    (``identity.channel_binding``): HMAC-SHA256 keyed by the binding, truncated. Both ends
    compute it once the handshake is complete, without a round trip; nobody else can (the
    binding comes from the connection's (EC)DHE secret and is never sent)."""
    return hmac.new(binding, FRAME_TOKEN_LABEL, hashlib.sha256).digest()[:FRAME_TOKEN_BYTES]


def data_header_ok(data: bytes) -> bool:
    """Whether ``data`` is a well-formed DATA frame (the relay's allocation-free check)."""
    return len(data) > DATA_HEADER_LENGTH and data[0] == FRAME_DATA and len(data) <= MAX_DATA_FRAME


def decode_frame(data: bytes) -> Frame:
    """Parse one frame; raises only :class:`RelayFrameError`."""
    if not data:
        raise RelayFrameError("empty datagram")
    kind = data[0]
    if kind == FRAME_DATA:
        if len(data) <= DATA_HEADER_LENGTH:
            raise RelayFrameError(f"DATA frame of {len(data)} bytes has no payload")
        if len(data) > MAX_DATA_FRAME:
            raise RelayFrameError(f"DATA frame of {len(data)} bytes exceeds {MAX_DATA_FRAME}")
        return DataFrame(
            PeerId(bytes(data[1:PEER_ID_END])),
            bytes(data[PEER_ID_END:DATA_HEADER_LENGTH]),
            bytes(data[DATA_HEADER_LENGTH:]),
        )
    if kind == FRAME_NOTICE:
        if len(data) != NOTICE_LENGTH:
            raise RelayFrameError(f"NOTICE frame is {NOTICE_LENGTH} bytes, got {len(data)}")
        return NoticeFrame(
            data[1], PeerId(bytes(data[2 : 2 + PEER_ID_BYTES])), bytes(data[2 + PEER_ID_BYTES :])
        )
    raise RelayFrameError(f"unknown relay frame type 0x{kind:02x}")
