"""Does an Initial nobody owns prove anything, before it may cost us a connection?

Anyone can send bytes shaped like a QUIC Initial; a server that builds a connection for each
(~90 KiB, a slot in the accept backlog, a TLS context) can be starved by a few per second of
junk. Initial packet protection (RFC 9001 section 5.2) is keyed from the packet's own
destination connection ID, so it authenticates nobody, but removing it proves the sender ran a
QUIC stack over exactly these bytes: random or altered bytes fail the AEAD tag. Checking that
costs ~18 us per junk packet (one HKDF, one AES-GCM attempt; a fresh ``QuicConnection`` fed the
same packet costs ~200 us), and keeps no state.
"""

from __future__ import annotations

from typing import Final

from aioquic import tls
from aioquic.quic.crypto import (
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoContext,
)
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    pull_quic_header,
)

from punchthrough.transport.demux import QUIC_CID_LENGTH
from punchthrough.transport.quic import Buffer, CryptoError

#: RFC 9001 section 5.2: the label of the client's Initial secret (the one a server decrypts).
_CLIENT_INITIAL_LABEL: Final = b"client in"
#: The QUIC versions aioquic speaks (its default ``supported_versions``), with their salts
#: (RFC 9001 section 5.2, RFC 9369 section 3.3.1).
_SALTS: Final[dict[int, bytes]] = {
    QuicProtocolVersion.VERSION_1: INITIAL_SALT_VERSION_1,
    QuicProtocolVersion.VERSION_2: INITIAL_SALT_VERSION_2,
}
#: The first packet number a client sends in the Initial space (RFC 9000 section 12.3).
_FIRST_PACKET_NUMBER: Final = 0
#: TLS handshake message type of a ClientHello (RFC 8446 section 4).
_TLS_CLIENT_HELLO: Final = 1
_HASH: Final = tls.cipher_suite_hash(INITIAL_CIPHER_SUITE)


def initial_decrypts(data: bytes) -> bool:
    """True if ``data`` is a client Initial whose packet protection comes off with the keys
    its destination CID derives, and which opens a TLS handshake (a CRYPTO frame; at offset 0
    it must start a ClientHello, as aioquic requires of a server's first packet).

    Stateless and never raises: a False packet should be dropped before any state is made.
    """
    buf = Buffer(data=data)
    try:
        header = pull_quic_header(buf, host_cid_length=QUIC_CID_LENGTH)
    except ValueError:
        return False
    version = header.version
    if header.packet_type != QuicPacketType.INITIAL or version is None or version not in _SALTS:
        return False
    salt = _SALTS[version]
    initial_secret = tls.hkdf_extract(_HASH, salt, header.destination_cid)
    secret = tls.hkdf_expand_label(
        _HASH, initial_secret, _CLIENT_INITIAL_LABEL, b"", _HASH.digest_size
    )
    recv = CryptoContext()
    recv.setup(cipher_suite=INITIAL_CIPHER_SUITE, secret=secret, version=version)
    try:
        _, payload, _, _ = recv.decrypt_packet(
            data[: header.packet_length], buf.tell(), _FIRST_PACKET_NUMBER
        )
    except CryptoError:
        return False
    return _opens_handshake(payload)


def _opens_handshake(payload: bytes) -> bool:
    """The first frame past any PADDING and PING is CRYPTO (a ClientHello if at offset 0)."""
    buf = Buffer(data=payload)
    try:
        while not buf.eof():
            frame_type = buf.pull_uint_var()
            if frame_type in (QuicFrameType.PADDING, QuicFrameType.PING):
                continue
            if frame_type != QuicFrameType.CRYPTO:
                return False
            offset = buf.pull_uint_var()
            length = buf.pull_uint_var()
            if length == 0:
                return False
            return offset != 0 or buf.pull_uint8() == _TLS_CLIENT_HELLO
    except ValueError:  # BufferReadError: a truncated frame
        return False
    return False
