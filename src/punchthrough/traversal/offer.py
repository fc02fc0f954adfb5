"""The dialer's early offer: its candidates, sealed, beside its first Initial through the relay.

Why: an acceptor behind a filtering NAT cannot let the dialer's checks in before it has sent
something to the dialer's public address, and without an offer it learns that address only from
the dialer's first 1-RTT flight (1.5 relayed round trips after ``connect()``). With the offer it
knows the dialer's candidates half a relayed round trip after ``connect()``, starts checking at
once, and the dialer's first checks (one relayed round trip after ``connect()``) find its NAT
open: direct one direct round trip later. Tailscale's ``CallMeMaybe`` over DERP plays this role.

The offer is sealed (ChaCha20-Poly1305, RFC 8439) with a key from the call secret
(:func:`punchthrough.traversal.keys.offer_key`), which only the two key holders can compute:
the relay learns no address from it (LAN ones included) and cannot forge or alter one. The
header (type, version, connection id) is authenticated as associated data. A replayed offer
opens only for the connection whose Initial it came with (the connection id is bound into the
key); what a replay can cause is bounded (design notes, "early check keys").

Wire format, inside a relay DATA payload only (never on a socket by itself): ``0x20`` (not a
QUIC, STUN or relay first byte, RFC 9443 section 3), version ``1``, the connection id's length
and bytes, a 12-byte random nonce, then the sealed signal frames (``Candidates``, then
``NatReportSummary`` when known).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from punchthrough.signal import (
    Candidates,
    FrameDecoder,
    Message,
    NatReportSummary,
    SignalDecodeError,
    encode_frame,
)
from punchthrough.traversal.local import LocalCandidates

#: First byte of an offer payload (RFC 9443's DTLS range 20-63, which nothing here speaks).
OFFER_TYPE: Final = 0x20
OFFER_VERSION: Final = 1
NONCE_LENGTH: Final = 12
#: RFC 9000 section 17.2: a connection id is at most 20 bytes.
MAX_CID_LENGTH: Final = 20
#: One offer fits one relay DATA payload without fragmentation (QUIC's 1,200-byte minimum
#: path MTU, RFC 9000 section 14, minus the relay's frame header and AEAD overhead).
MAX_OFFER_SIZE: Final = 1_100


class OfferError(ValueError):
    """An offer that does not open: malformed, for another connection, forged or altered."""


@dataclass(frozen=True, slots=True)
class Offer:
    """What the dialer offers: its candidates and, when known, its NAT summary."""

    candidates: Candidates
    summary: NatReportSummary | None = None


def offer_of(local: LocalCandidates) -> Offer:
    """What each side says first: its ``Candidates`` and its NAT summary. The summary may be only
    its mapping half (filtering "unknown" while the endpoint's filtering test runs; the agent
    sends the final one when it is known)."""
    summary = local.summary.to_signal() if local.summary_ready else None
    return Offer(Candidates(candidates=tuple(local.candidates)), summary)


def first_flight(local: LocalCandidates) -> list[Message]:
    """:func:`offer_of` as control messages (the acceptor's 0.5-RTT flight, the dialer's first)."""
    offer = offer_of(local)
    return [offer.candidates] if offer.summary is None else [offer.candidates, offer.summary]


def is_offer(payload: bytes) -> bool:
    """Is this relay payload an offer (by its first byte alone)?"""
    return bool(payload) and payload[0] == OFFER_TYPE


def offer_cid(payload: bytes) -> bytes | None:
    """The connection id an offer names (unauthenticated until :func:`open_offer`)."""
    if len(payload) < 3 or payload[0] != OFFER_TYPE or payload[1] != OFFER_VERSION:
        return None
    n = payload[2]
    if not 0 < n <= MAX_CID_LENGTH or len(payload) < 3 + n + NONCE_LENGTH:
        return None
    return bytes(payload[3 : 3 + n])


def seal_offer(key: bytes, cid: bytes, offer: Offer) -> bytes:
    """The offer's payload. Raises :class:`OfferError` if it would not fit one datagram."""
    if not 0 < len(cid) <= MAX_CID_LENGTH:
        raise OfferError(f"connection id of {len(cid)} bytes")
    header = bytes((OFFER_TYPE, OFFER_VERSION, len(cid))) + cid
    plain = encode_frame(offer.candidates)
    if offer.summary is not None:
        plain += encode_frame(offer.summary)
    nonce = os.urandom(NONCE_LENGTH)
    out = header + nonce + ChaCha20Poly1305(key).encrypt(nonce, plain, header)
    if len(out) > MAX_OFFER_SIZE:
        raise OfferError(f"offer of {len(out)} bytes is over {MAX_OFFER_SIZE}")
    return out


def open_offer(key: bytes, cid: bytes, payload: bytes) -> Offer:
    """Open an offer for connection ``cid``; :class:`OfferError` says why it does not."""
    if len(payload) > MAX_OFFER_SIZE:
        raise OfferError("offer too large")
    if offer_cid(payload) != cid:
        raise OfferError("malformed, or for another connection")
    header_len = 3 + len(cid)
    header, nonce = payload[:header_len], payload[header_len : header_len + NONCE_LENGTH]
    try:
        plain = ChaCha20Poly1305(key).decrypt(nonce, payload[header_len + NONCE_LENGTH :], header)
    except InvalidTag:
        raise OfferError("does not authenticate (forged, altered, or another key)") from None
    decoder = FrameDecoder(MAX_OFFER_SIZE)
    decoder.feed(plain)
    try:
        msgs: list[Message] = list(decoder.messages())
    except SignalDecodeError as exc:  # MessageTooLarge included
        raise OfferError(f"bad contents: {exc}") from None
    if decoder.buffered or not msgs or not isinstance(msgs[0], Candidates) or len(msgs) > 2:
        raise OfferError("bad contents: expected Candidates, then an optional NAT summary")
    summary = msgs[1] if len(msgs) == 2 else None
    if summary is not None and not isinstance(summary, NatReportSummary):
        raise OfferError("bad contents: the second message is not a NAT summary")
    return Offer(msgs[0], summary)
