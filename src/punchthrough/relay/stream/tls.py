"""TLS for stream links: the relay's contexts, and how a client authenticates the relay.

One TCP port serves both stream transports, chosen by ALPN (RFC 7301) inside TLS:
``punchthrough-relay/1`` is the raw length-prefixed stream, ``http/1.1`` is a WebSocket upgrade
(``wss://``: what an HTTPS-only network or a browser-shaped proxy lets through).

Two ways for a client to know it reached the right relay, as the relay list says:

* **pinned** (``id=`` in the relay spec): the relay presents its identity-bound self-signed
  certificate (``identity.cert``: the Ed25519 key is the relay's peer id); the client accepts
  exactly that key. No CA, no names: the same rule as the relay's QUIC control connection.
* **CA-issued** (``--tls-cert``/``--tls-key`` on the relay): the client verifies the chain
  against its trust store (or ``ca_file``) and checks the host name it dialled.

Without either (a pin or a CA-verifiable certificate) the handshake fails: TLS is not turned
into an unauthenticated tunnel silently. The QUIC control connection inside is encrypted again
(double encryption: ~16 bytes and one AEAD pass per datagram, accepted to keep one protocol).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from punchthrough.identity import Identity, IdentityError, PeerId
from punchthrough.identity.cert import verify_peer_certificate
from punchthrough.relay.frames import RELAY_ALPN

#: ALPN of the WebSocket transport: HTTP/1.1, where the Upgrade happens (RFC 6455 section 4).
HTTP_ALPN: Final = "http/1.1"
STREAM_ALPNS: Final = (RELAY_ALPN, HTTP_ALPN)


class RelayTlsError(ConnectionError):
    """The relay's certificate is not the one the relay list names (or none could be checked)."""


def server_context(
    identity: Identity | None = None,
    *,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """The relay's TLS context: a CA-issued certificate when given, else ``identity``'s own.

    TLS 1.2 at least (the WebSocket side may meet older middleboxes' clients); ALPN offers the
    raw stream and HTTP/1.1. Ed25519 certificates need TLS 1.3 (RFC 8446 section 4.2.3), which
    every client of ours speaks.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(list(STREAM_ALPNS))
    if cert_file is not None:
        if key_file is None:
            raise ValueError("--tls-cert needs --tls-key")
        ctx.load_cert_chain(cert_file, key_file)
        return ctx
    if identity is None:
        raise ValueError("a relay TLS context needs an identity or a certificate")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    cert_pem = identity.certificate().public_bytes(serialization.Encoding.PEM)
    key_pem = identity.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # ssl loads keys from files only: a private temporary directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="punchthrough-tls-") as tmp:
        cert_path, key_path = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_path.write_bytes(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def client_context(
    alpn: str, *, pin: PeerId | None, ca_file: str | os.PathLike[str] | None = None
) -> ssl.SSLContext:
    """A client context offering ``alpn``. With ``pin`` the chain is not CA-checked here (the
    caller must run :func:`check_pin` before sending anything); without, it is verified
    against ``ca_file`` (or the system trust store) with host-name checking."""
    if pin is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        ctx = ssl.create_default_context(cafile=None if ca_file is None else str(ca_file))
    ctx.set_alpn_protocols([alpn])
    return ctx


def check_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, pin: PeerId | None) -> None:
    """With a pin: the relay's certificate must carry that key (:class:`RelayTlsError`)."""
    if pin is None:
        return
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise RelayTlsError("the relay presented no certificate")
    try:
        verify_peer_certificate(x509.load_der_x509_certificate(der), pin)
    except (IdentityError, ValueError) as exc:
        raise RelayTlsError(f"relay certificate: {exc}") from None
