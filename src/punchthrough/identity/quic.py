"""aioquic glue: put an identity into a QuicConfiguration, read and pin the peer's identity.

What aioquic (1.x) exposes: no public accessor for the peer certificate and no TLS exporter
(RFC 8446 section 7.5). The client parses the server's certificate chain when it receives the
Certificate message, before CertificateVerify is checked; by ``HandshakeCompleted``
CertificateVerify has proved the server holds that key. The chain sits in private attributes,
read by :func:`punchthrough.transport.quic.peer_certificates` (where every aioquic private read
lives); tests pin the behaviour so an aioquic upgrade that moves them fails loudly. Servers
never request a client certificate (aioquic has no public switch for it), which is why dialers
authenticate with :func:`channel_binding` + ``sign_exporter``.
"""

from __future__ import annotations

import ssl
from typing import Final

from aioquic import tls
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from cryptography import x509

from punchthrough.identity.cert import verify_peer_certificate
from punchthrough.identity.errors import IdentityError, PeerIdMismatch
from punchthrough.identity.keys import Identity
from punchthrough.identity.peerid import PeerId
from punchthrough.transport.quic import peer_certificates

#: HKDF-Expand-Label label of our channel binding (RFC 8446 section 7.1 label syntax).
CHANNEL_BINDING_LABEL: Final = b"punchthrough cb"
#: Channel binding length: 256 bits.
CHANNEL_BINDING_LENGTH: Final = 32

_POST_HANDSHAKE: Final = (tls.State.CLIENT_POST_HANDSHAKE, tls.State.SERVER_POST_HANDSHAKE)


class ChannelBindingUnavailable(IdentityError):
    """The connection has not completed its TLS handshake, so there is nothing to bind to."""


def apply_identity(config: QuicConfiguration, identity: Identity) -> QuicConfiguration:
    """Make ``config`` present ``identity``'s certificate and skip CA verification.

    CA verification is replaced by pinning: the dialer must call :func:`verify_quic_peer`
    on ``HandshakeCompleted`` before it sends anything. Returns ``config`` for chaining.
    """
    config.certificate = identity.certificate()
    config.private_key = identity.private_key
    config.verify_mode = ssl.CERT_NONE
    return config


def _tls(conn: QuicConnection) -> tls.Context | None:
    return getattr(conn, "tls", None)  # created on connect()/first datagram


def peer_certificate_chain(conn: QuicConnection) -> list[x509.Certificate]:
    """The certificates the peer presented, leaf first; empty if none (yet)."""
    ctx = _tls(conn)
    return [] if ctx is None else peer_certificates(ctx)


def handshake_complete(conn: QuicConnection) -> bool:
    ctx = _tls(conn)
    return ctx is not None and ctx.state in _POST_HANDSHAKE


def verify_quic_peer(conn: QuicConnection, expected: PeerId) -> PeerId:
    """Dialer side: check the acceptor's certificate names ``expected``.

    Call on ``HandshakeCompleted`` (then CertificateVerify has proved key possession). Raises
    :class:`PeerIdMismatch` (also if the handshake is not complete yet).
    """
    if not handshake_complete(conn):
        raise PeerIdMismatch(expected, None, "the TLS handshake has not completed")
    return verify_peer_certificate(peer_certificate_chain(conn), expected)


def channel_binding(conn: QuicConnection) -> bytes:
    """A 32-byte value both ends of one QUIC connection share and nobody else knows.

    ``HKDF-Expand-Label(master_secret, "punchthrough cb", transcript_hash, 32)`` where the
    transcript runs through the client Finished: built like RFC 8446's resumption_master_secret,
    it depends on the (EC)DHE secret and on the whole handshake, certificates included, so a
    man in the middle holds two different values. aioquic has no exporter API; this reads the
    public ``tls.key_schedule`` (stable after the handshake: post-handshake NewSessionTicket
    messages are not hashed).
    """
    ctx = _tls(conn)
    if ctx is None or ctx.state not in _POST_HANDSHAKE or ctx.key_schedule is None:
        raise ChannelBindingUnavailable("the QUIC handshake has not completed")
    ks = ctx.key_schedule
    return tls.hkdf_expand_label(
        algorithm=ks.algorithm,
        secret=ks.secret,
        label=CHANNEL_BINDING_LABEL,
        hash_value=ks.hash.copy().finalize(),
        length=CHANNEL_BINDING_LENGTH,
    )
