"""The relay tells junk QUIC Initials from genuine ones before they cost anything."""

from __future__ import annotations

import random

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from punchthrough.relay.control import MIN_INITIAL_DATAGRAM
from punchthrough.relay.frames import RELAY_ALPN
from punchthrough.transport.initial import initial_decrypts
from punchthrough.transport.quic import is_initial


def client_initial() -> bytes:
    """A genuine client Initial, as aioquic (our client's QUIC stack) sends it."""
    conn = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=[RELAY_ALPN])
    )
    conn.connect(("127.0.0.1", 3478), now=0.0)
    return conn.datagrams_to_send(now=0.0)[0][0]


def test_initial_check_tells_genuine_from_junk() -> None:
    genuine = client_initial()
    assert initial_decrypts(genuine)
    flipped = bytearray(genuine)
    flipped[100] ^= 1  # one bit of the protected payload
    assert not initial_decrypts(bytes(flipped))
    assert len(genuine) >= MIN_INITIAL_DATAGRAM  # RFC 9000 14.1: the relay refuses shorter ones
    rng = random.Random(1)
    for _ in range(200):
        # a plausible v1 Initial header (random CIDs, no token, Length 1200) on random bytes:
        # what the old relay spent a new-connection token on
        junk = b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + b"\x08" + rng.randbytes(8)
        junk += b"\x00\x44\xb0" + rng.randbytes(1200)
        assert is_initial(junk) and not initial_decrypts(junk)
