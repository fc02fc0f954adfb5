"""One connection's call secret and early offer, from the two identities and its first Initial.

Why here: the call secret needs three things only the connection has together: our identity,
the peer's id (dialled, or stamped by the relay on the Initial: the dialer proves it later),
and the QUIC connection's original destination connection ID. The traversal side
(:mod:`punchthrough.traversal.keys`, :mod:`punchthrough.traversal.offer`) does the
cryptography; this module only gathers its inputs, so the connection stays about its state.
"""

from __future__ import annotations

import logging
import os

from aioquic.quic.connection import QuicConnection

from punchthrough.identity import Identity, InvalidPeerId, PeerId
from punchthrough.identity.agreement import static_secret
from punchthrough.transport.quic import original_destination_cid
from punchthrough.traversal.keys import call_secret, offer_key
from punchthrough.traversal.local import LocalCandidates
from punchthrough.traversal.offer import Offer, OfferError, offer_of, open_offer, seal_offer

log = logging.getLogger(__name__)


class CallKeys:
    """The call secret of one connection (computed once: one X25519, ~0.1 ms)."""

    def __init__(self, identity: Identity, peer: PeerId, quic: QuicConnection, *, dialer: bool):
        self._cid = original_destination_cid(quic)
        ours, theirs = identity.peer_id.raw, peer.raw
        try:
            static = static_secret(identity, peer)
        except InvalidPeerId as exc:
            # Not a usable key: nothing this secret guards can succeed (a fresh random secret
            # nobody shares), and the peer fails to authenticate anyway.
            log.info("no key agreement with %s: %s", peer.short, exc)
            static = os.urandom(32)
        pair = (ours, theirs) if dialer else (theirs, ours)
        self.secret = call_secret(static, self._cid, *pair)
        self._offer_key = offer_key(self.secret)

    def seal(self, local: LocalCandidates) -> bytes | None:
        """The dialer's offer of ``local`` (``None`` if it does not fit a datagram)."""
        try:
            return seal_offer(self._offer_key, self._cid, offer_of(local))
        except OfferError as exc:
            log.info("no early offer: %s", exc)
            return None

    def open(self, payload: bytes) -> Offer:
        """The acceptor opens an offer; raises :class:`OfferError`."""
        return open_offer(self._offer_key, self._cid, payload)
