"""Peer identities: Ed25519 keys, peer ids, key files, and the QUIC certificate bound to them.

A peer id *is* a public key, so authenticating a peer needs no authority: the dialer pins the
acceptor's certificate key to the peer id it dialled (:func:`verify_peer_certificate`), and the
acceptor checks the dialer's signature over the connection's channel binding
(:func:`sign_exporter` / :func:`verify_exporter`).
"""

from punchthrough.identity.auth import (
    PEER_AUTH_CONTEXT,
    RELAY_REGISTER_CONTEXT,
    sign_exporter,
    verify_exporter,
)
from punchthrough.identity.cert import (
    make_certificate,
    peer_id_from_certificate,
    verify_peer_certificate,
)
from punchthrough.identity.errors import (
    BadSignature,
    IdentityError,
    InsecureKeyFile,
    InvalidPeerId,
    KeyFileError,
    MalformedKeyFile,
    PeerIdMismatch,
    UnsupportedCertificate,
)
from punchthrough.identity.keys import KEY_FILE_MODE, Identity
from punchthrough.identity.peerid import PEER_ID_LENGTH, PeerId, signed_message
from punchthrough.identity.quic import (
    ChannelBindingUnavailable,
    apply_identity,
    channel_binding,
    handshake_complete,
    peer_certificate_chain,
    verify_quic_peer,
)

__all__ = [
    "KEY_FILE_MODE",
    "PEER_AUTH_CONTEXT",
    "PEER_ID_LENGTH",
    "RELAY_REGISTER_CONTEXT",
    "BadSignature",
    "ChannelBindingUnavailable",
    "Identity",
    "IdentityError",
    "InsecureKeyFile",
    "InvalidPeerId",
    "KeyFileError",
    "MalformedKeyFile",
    "PeerId",
    "PeerIdMismatch",
    "UnsupportedCertificate",
    "apply_identity",
    "channel_binding",
    "handshake_complete",
    "make_certificate",
    "peer_certificate_chain",
    "peer_id_from_certificate",
    "sign_exporter",
    "signed_message",
    "verify_exporter",
    "verify_peer_certificate",
    "verify_quic_peer",
]
