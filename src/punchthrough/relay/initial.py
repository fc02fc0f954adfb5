"""Recognise a junk QUIC Initial before it costs a new-connection token or any state.

Initial keys derive from the packet's own destination connection id (RFC 9001 section 5.2),
so anyone can compute them: decrypting proves nothing about the sender. What it does prove is
that the datagram is not random bytes behind a plausible header, the cheap forgery that used
to drain the relay-wide new-connection bucket and lock legitimate clients out (issue 12,
finding 2). Checking here costs one HKDF expansion and one AES-128-GCM open; that is cheaper
than giving the token back after aioquic fails the same decryption, because building (and
aborting) a server connection is what a junk Initial used to cost. Measured on the dev box
(1,200-byte junk, loopback ``ControlPlane.accept``): about 34 us per junk Initial with this
check, 210 us without it. A junk Initial then spends no token and leaves nothing behind.

Validly encrypted forgeries still reach aioquic; that is what the bucket bounds (a stateless
Retry would be the next defence against them).
"""

from __future__ import annotations

from typing import Final

from aioquic._buffer import Buffer
from aioquic._crypto import CryptoError
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from punchthrough.transport.demux import QUIC_CID_LENGTH

#: The versions our server connections accept (aioquic's defaults: QUIC v1 and v2). An Initial
#: of another version could never become a connection here.
SUPPORTED_VERSIONS: Final = frozenset(QuicConfiguration(is_client=False).supported_versions)
#: RFC 9000 section 14.1: a server drops Initials in datagrams smaller than 1200 bytes.
MIN_INITIAL_DATAGRAM: Final = 1200


def initial_decrypts(data: bytes) -> bool:
    """True if ``data`` opens with a QUIC Initial that decrypts under its own Initial keys."""
    if len(data) < MIN_INITIAL_DATAGRAM:
        return False
    buf = Buffer(data=data)
    try:
        header = pull_quic_header(buf, host_cid_length=QUIC_CID_LENGTH)
    except ValueError:
        return False
    if header.packet_type != QuicPacketType.INITIAL or header.version not in SUPPORTED_VERSIONS:
        return False
    pair = CryptoPair()
    pair.setup_initial(cid=header.destination_cid, is_client=False, version=header.version)
    try:
        # expected packet number 0: a server's first Initial from a client (RFC 9000 17.2.2)
        pair.decrypt_packet(data[: header.packet_length], buf.tell(), 0)
    except (CryptoError, ValueError):
        return False
    return True
