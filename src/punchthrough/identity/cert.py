"""The self-signed QUIC certificate bound to an identity, and pinning it to a peer id.

The certificate carries the identity's Ed25519 key; nothing else in it matters. TLS 1.3's
CertificateVerify (RFC 8446 section 4.4.3) proves the peer holds that key for this very
handshake, so "the certificate's key equals the expected peer id" is the whole authentication:
no CA, no names, no validity dates to check. The certificate is a pure function of the key
(fixed dates, serial from the key, deterministic Ed25519 signature): no wall clock is read, and
every process derives the same bytes.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from typing import Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from punchthrough.identity.errors import PeerIdMismatch, UnsupportedCertificate
from punchthrough.identity.peerid import PeerId

#: notBefore: a fixed past date; validity is never checked (the key is pinned).
NOT_BEFORE: Final = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
#: notAfter 99991231235959Z means "no well-defined expiration date" (RFC 5280 section 4.1.2.5).
NOT_AFTER: Final = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
#: Serial numbers are positive and at most 20 octets (RFC 5280 section 4.1.2.2); 16 bytes of a
#: hash of the key, top bit cleared, lowest bit set (so it is never 0).
_SERIAL_BYTES: Final = 16


class KeyPair(Protocol):
    """What a certificate is made from: an :class:`~punchthrough.identity.Identity`.

    A protocol, not the class, so that ``keys`` (which caches the certificate) can import this
    module without an import cycle.
    """

    @property
    def peer_id(self) -> PeerId: ...

    @property
    def private_key(self) -> Ed25519PrivateKey: ...


def make_certificate(identity: KeyPair) -> x509.Certificate:
    """Build the self-signed certificate whose subject public key is ``identity``'s key."""
    raw = identity.peer_id.raw
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity.peer_id))])
    serial = int.from_bytes(hashlib.sha256(b"punchthrough cert serial" + raw).digest()[:16])
    serial = (serial >> 1) | 1
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(identity.private_key.public_key())
        .serial_number(serial)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(identity.private_key, algorithm=None)  # Ed25519 takes no hash


def peer_id_from_certificate(cert: x509.Certificate) -> PeerId:
    """The peer id a certificate names: its Ed25519 subject public key.

    Raises :class:`UnsupportedCertificate` for any other key type (e.g. a normal web server's
    RSA or ECDSA certificate).
    """
    try:
        key = cert.public_key()
    except ValueError as exc:  # unparseable key
        raise UnsupportedCertificate(f"certificate key cannot be parsed: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UnsupportedCertificate(
            f"certificate key is {type(key).__name__.removeprefix('_')}, not Ed25519, "
            "so it is not a punchthrough peer"
        )
    return PeerId.from_public_key(key)


def verify_peer_certificate(
    chain: x509.Certificate | Sequence[x509.Certificate] | None, expected: PeerId
) -> PeerId:
    """Check that a presented chain's leaf certificate carries ``expected``'s key.

    Only the leaf counts (a peer presents its own self-signed certificate; anything after it is
    ignored). Raises :class:`PeerIdMismatch` for a different key, a non-Ed25519 key or no
    certificate at all; returns the verified peer id.
    """
    if chain is None:
        leaf = None
    elif isinstance(chain, x509.Certificate):
        leaf = chain
    else:
        leaf = chain[0] if len(chain) else None
    if leaf is None:
        raise PeerIdMismatch(expected, None, "no certificate was presented")
    try:
        actual = peer_id_from_certificate(leaf)
    except UnsupportedCertificate as exc:
        raise PeerIdMismatch(expected, None, str(exc)) from None
    if actual != expected:
        raise PeerIdMismatch(expected, actual)
    return actual
