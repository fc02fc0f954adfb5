"""Stateless QUIC Retry for the relay under load (RFC 9000 sections 8.1.2 and 17.2.5).

A Retry answers an Initial with ~120 bytes and keeps nothing: the client must echo the
token from the address it claimed, proving it receives there, before the relay spends a
new-connection token or ~70 KB of connection state on it. Spoofed floods therefore create
no state and get less back than they send (no amplification). A Retry costs the client one
round trip, so the relay only asks for it under load (:func:`under_load`); with no load it
behaves exactly as before.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections import Counter
from collections.abc import Callable
from typing import Final, Literal

from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicHeader,
    QuicPacketType,
    encode_quic_retry,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from punchthrough.netio import Address
from punchthrough.relay.limits import TokenBucket
from punchthrough.transport.quic import Buffer

#: A Retry token is valid this long. The client echoes it at once (one RTT); 10 s also covers
#: aioquic's client retransmitting a lost Initial at PTO backoff 1 + 2 + 4 s (RFC 9002 6.2),
#: and stays short as RFC 9000 section 8.1.4 asks, so a captured token is soon useless.
RETRY_TOKEN_LIFETIME: Final = 10.0
#: Under load = the new-connection bucket below this fraction of its burst. A full bucket is
#: a quiet relay; once half of it is spent (200 Initials at the defaults, well beyond any
#: normal reconnect wave) unvalidated Initials pay a round trip, and the other half stays for
#: validated clients, so a spoofed flood can never empty it.
RETRY_LOAD_FRACTION: Final = 0.5
#: ... or this many control connections half-open (not registered). A real client is half-open
#: for a handshake and one register round trip (well under 1 s), so even a reconnect wave at
#: the full default rate (200/s) keeps fewer; more are handshakes nobody finishes. Without it
#: the bucket's refill (200/s, each held register_timeout = 10 s) would let a spoofed flood
#: hold ~2,200; with it, unvalidated state stays under this many (~96 KB each: ~19 MB).
HALF_OPEN_LOAD: Final = 200
#: Our Retry Source Connection ID: aioquic's connection_id_length (QuicConfiguration default).
RETRY_CID_LENGTH: Final = 8
#: AES-GCM nonce (NIST SP 800-38D's recommended 96 bits) and key size.
_NONCE: Final = 12
_KEY_BITS: Final = 128
#: Room for a TRANSPORT_CLOSE frame (aioquic's packet_builder reserves the same).
_CLOSE_CAPACITY: Final = 32
#: RFC 9000 section 14.1's smallest datagram size; the close is far smaller than that.
_CLOSE_DATAGRAM: Final = 1200


def under_load(bucket: TokenBucket, now: float, half_open: int) -> bool:
    """Whether new Initials must first prove their address (the two thresholds above)."""
    return half_open >= HALF_OPEN_LOAD or bucket.available(now) < bucket.burst * RETRY_LOAD_FRACTION


def parse_initial(data: bytes) -> QuicHeader | None:
    """The long header of a client Initial (None if it does not parse)."""
    try:
        return pull_quic_header(Buffer(data=data), host_cid_length=RETRY_CID_LENGTH)
    except ValueError:
        return None


def _encode_address(addr: Address) -> bytes:
    try:
        packed = ipaddress.ip_address(addr[0].split("%", 1)[0]).packed
    except ValueError:
        packed = addr[0].encode()
    return bytes([len(packed)]) + packed + struct.pack("!H", addr[1])


class RetryTokens:
    """Issue and check Retry tokens: AES-GCM under a per-process key, bound to the client's
    address and port, the Original and Retry connection IDs, and the issue time."""

    __slots__ = ("_aead", "lifetime")

    def __init__(self, lifetime: float = RETRY_TOKEN_LIFETIME) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=_KEY_BITS))
        self.lifetime = lifetime

    def issue(self, addr: Address, odcid: bytes, retry_scid: bytes, now: float) -> bytes:
        plain = bytes([len(odcid)]) + odcid + bytes([len(retry_scid)]) + retry_scid
        plain += struct.pack("!Q", int(now * 1000))
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, plain, _encode_address(addr))

    def validate(self, addr: Address, dcid: bytes, token: bytes, now: float) -> bytes | None:
        """The Original Destination Connection ID if ``token`` is ours, for ``addr``, for this
        ``dcid`` (the client must send to our Retry SCID, RFC 9000 17.2.5.2), and fresh."""
        try:
            plain = self._aead.decrypt(token[:_NONCE], token[_NONCE:], _encode_address(addr))
        except (InvalidTag, ValueError):
            return None
        n = plain[0]
        odcid = plain[1 : 1 + n]
        m = plain[1 + n]
        scid = plain[2 + n : 2 + n + m]
        (issued_ms,) = struct.unpack_from("!Q", plain, 2 + n + m)
        if scid != dcid or not 0 <= now - issued_ms / 1000 <= self.lifetime:
            return None
        return odcid


def retry_packet(tokens: RetryTokens, header: QuicHeader, addr: Address, now: float) -> bytes:
    """A Retry for the client Initial ``header`` from ``addr`` (a fresh SCID, a new token)."""
    assert header.version is not None
    scid = os.urandom(RETRY_CID_LENGTH)
    return encode_quic_retry(
        version=header.version,
        source_cid=scid,
        destination_cid=header.source_cid,
        original_destination_cid=header.destination_cid,
        retry_token=tokens.issue(addr, header.destination_cid, scid, now),
    )


def invalid_token_close(header: QuicHeader) -> bytes:
    """An Initial closing with INVALID_TOKEN (RFC 9000 8.1.3: the client will not accept a
    second Retry, so tell it at once rather than let it time out). Mirrors aioquic's
    asyncio server, whose helper is private."""
    assert header.version is not None
    crypto = CryptoPair()
    crypto.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    builder = QuicPacketBuilder(
        host_cid=header.destination_cid,
        is_client=False,
        max_datagram_size=_CLOSE_DATAGRAM,
        peer_cid=header.source_cid,
        version=header.version,
    )
    builder.start_packet(QuicPacketType.INITIAL, crypto)
    buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=_CLOSE_CAPACITY)
    buf.push_uint_var(QuicErrorCode.INVALID_TOKEN)
    buf.push_uint_var(QuicFrameType.PADDING)
    buf.push_uint_var(0)
    datagrams, _ = builder.flush()
    return datagrams[0]


class RetryGate:
    """Decides, per new client Initial, between a Retry, a refusal and going ahead."""

    __slots__ = ("_bucket", "_half_open", "_mode", "_stats", "tokens")

    def __init__(
        self,
        mode: Literal["load", "always", "never"],
        bucket: TokenBucket,
        stats: Counter[str],
        half_open: Callable[[], int],
    ) -> None:
        self._half_open = half_open
        self._mode = mode
        self._bucket = bucket
        self._stats = stats
        self.tokens = RetryTokens()

    def screen(
        self, header: QuicHeader, addr: Address, now: float, send: Callable[[bytes], None]
    ) -> tuple[bytes, bytes | None] | None:
        """``(original_dcid, retry_scid or None)`` to go ahead; None if answered (a Retry or an
        INVALID_TOKEN close, counted) and nothing more is to be done or kept."""
        if header.token:
            # a Retry token (we issue no NEW_TOKEN): honoured with or without load, since the
            # client now expects retry_source_connection_id in our transport parameters
            odcid = self.tokens.validate(addr, header.destination_cid, header.token, now)
            if odcid is None:
                send(invalid_token_close(header))
                self._stats["connections_refused"] += 1
                self._stats["retry_tokens_invalid"] += 1
                return None
            return odcid, header.destination_cid
        if self._mode == "always" or (
            self._mode == "load" and under_load(self._bucket, now, self._half_open())
        ):
            send(retry_packet(self.tokens, header, addr, now))
            self._stats["retries_sent"] += 1
            return None
        return header.destination_cid, None
