"""Early call keys (issue 17): the static-static agreement, the call secret, the sealed offer
and the gate that holds an unproven peer's path moves."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from punchthrough.identity import Identity, InvalidPeerId, PeerId
from punchthrough.identity.agreement import static_secret, x25519_private, x25519_public
from punchthrough.signal import Candidate, Candidates, CheckStart
from punchthrough.signal import NatReportSummary as NatSummary
from punchthrough.traversal.keys import call_secret, derive_credentials, offer_key
from punchthrough.traversal.offer import (
    MAX_OFFER_SIZE,
    Offer,
    OfferError,
    is_offer,
    offer_cid,
    open_offer,
    seal_offer,
)
from punchthrough.traversal.proofgate import MAX_HELD, ProofGate
from punchthrough.traversal.race import ProbeNow, SendControl, StartRound


def _raw(pub: object) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)  # type: ignore[attr-defined,no-any-return]


def test_the_x25519_public_key_of_a_peer_id_matches_its_private_key() -> None:
    for _ in range(5):
        me = Identity.generate()
        assert _raw(x25519_private(me).public_key()) == _raw(x25519_public(me.peer_id))


def test_both_sides_compute_the_same_static_secret_and_a_third_party_another() -> None:
    a, b, c = Identity.generate(), Identity.generate(), Identity.generate()
    ab = static_secret(a, b.peer_id)
    assert ab == static_secret(b, a.peer_id) and len(ab) == 32
    assert static_secret(c, b.peer_id) != ab and static_secret(c, a.peer_id) != ab


def test_a_low_order_peer_id_is_refused() -> None:
    # y = 1 is the identity point of edwards25519 (u would divide by zero).
    with pytest.raises(InvalidPeerId):
        static_secret(Identity.generate(), PeerId((1).to_bytes(32, "little")))
    # y = -1 maps to u = 0, a low-order point: the secret would be all zeros.
    minus_one = (2**255 - 19 - 1).to_bytes(32, "little")
    with pytest.raises(InvalidPeerId):
        static_secret(Identity.generate(), PeerId(minus_one))


def test_the_call_secret_differs_per_connection_and_per_direction() -> None:
    static, a, b = os.urandom(32), os.urandom(32), os.urandom(32)
    one = call_secret(static, b"cid-one!", a, b)
    assert one == call_secret(static, b"cid-one!", a, b)
    assert one != call_secret(static, b"cid-two!", a, b)  # another connection
    assert one != call_secret(static, b"cid-one!", b, a)  # the roles swapped
    dialer = derive_credentials(one, is_dialer=True)
    acceptor = derive_credentials(one, is_dialer=False)
    assert dialer.key == acceptor.key
    assert dialer.request_username == acceptor.expected_username
    assert dialer.local_ufrag != acceptor.local_ufrag  # a reflected check never verifies
    with pytest.raises(ValueError):
        call_secret(static, b"", a, b)


def _offer() -> Offer:
    cands = Candidates(
        candidates=(
            Candidate(kind="host", address="10.0.1.2", port=4000, priority=100, foundation="h1"),
            Candidate(kind="srflx", address="203.0.113.1", port=4000, priority=50, foundation="s1"),
        )
    )
    summary = NatSummary(
        udp=True,
        mapping="endpoint-independent",
        filtering="address-and-port-dependent",
        allocation="port-preserving",
    )
    return Offer(cands, summary)


def test_an_offer_opens_only_with_its_key_and_connection_id() -> None:
    key, cid = offer_key(os.urandom(32)), os.urandom(8)
    payload = seal_offer(key, cid, _offer())
    assert is_offer(payload) and offer_cid(payload) == cid
    assert b"10.0.1.2" not in payload and b"203.0.113.1" not in payload  # sealed
    assert open_offer(key, cid, payload) == _offer()
    with pytest.raises(OfferError, match="does not authenticate"):
        open_offer(offer_key(os.urandom(32)), cid, payload)  # another call's key
    with pytest.raises(OfferError, match="another connection"):
        open_offer(key, os.urandom(8), payload)  # replayed into another connection
    for i in (2, 5, len(payload) - 1):  # header (cid length, cid) and the sealed part
        bad = bytearray(payload)
        bad[i] ^= 1
        with pytest.raises(OfferError):
            open_offer(key, cid, bytes(bad))


def test_malformed_offers_are_refused_not_raised() -> None:
    key, cid = os.urandom(32), os.urandom(8)
    good = seal_offer(key, cid, _offer())
    for junk in (b"", b"\x20", b"\x20\x01", b"\x20\x02" + good[2:], b"\x20\x01\x00", good[:20]):
        assert offer_cid(junk) is None or junk == good[:20]
        with pytest.raises(OfferError):
            open_offer(key, cid, junk)
    with pytest.raises(OfferError, match="too large"):
        open_offer(key, cid, good + bytes(MAX_OFFER_SIZE))


def test_a_sealed_offer_of_wrong_contents_is_refused() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    from punchthrough.signal import encode_frame

    key, cid = os.urandom(32), os.urandom(8)
    header = bytes((0x20, 1, len(cid))) + cid
    nonce = os.urandom(12)
    msg = CheckStart(call_id="x", stage="hole-punch", generation=1, start_at_ms=0, sent_at_ms=0)
    wrong = encode_frame(msg)
    payload = header + nonce + ChaCha20Poly1305(key).encrypt(nonce, wrong, header)
    with pytest.raises(OfferError, match="expected Candidates"):
        open_offer(key, cid, payload)


def test_the_gate_holds_moves_until_the_proof_and_passes_checks() -> None:
    from punchthrough.traversal.race import KeepWinner, SwitchPath

    gate = ProofGate(proven=False)
    switch_a = SwitchPath(pair=object(), strategy=None, reason="a")  # type: ignore[arg-type]
    switch_b = SwitchPath(pair=object(), strategy=None, reason="b")  # type: ignore[arg-type]
    keep = KeepWinner(attempt=1, local=("0.0.0.0", 1))
    passed = gate.admit([StartRound(1, True), switch_a, keep, ProbeNow(), switch_b])
    assert passed == [StartRound(1, True), ProbeNow()]
    assert gate.held == 2  # the newer switch replaced the older one
    assert gate.open() == [keep, switch_b]
    assert gate.admit([switch_a, SendControl(msg=None)]) == [switch_a, SendControl(msg=None)]  # type: ignore[arg-type]


def test_the_gate_is_bounded() -> None:
    from punchthrough.traversal.race import KeepWinner

    gate = ProofGate(proven=False)
    gate.admit([KeepWinner(attempt=i, local=("0.0.0.0", i)) for i in range(MAX_HELD + 10)])
    assert gate.held == MAX_HELD and gate.stats["held_dropped"] == 10
