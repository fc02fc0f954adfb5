"""``initial_decrypts``: which Initials nobody owns may cost the endpoint a connection."""

from __future__ import annotations

import random

from aioquic.quic.connection import QuicConnection

from punchthrough.endpoint import EndpointConfig
from punchthrough.endpoint.config import quic_configuration
from punchthrough.identity import Identity
from punchthrough.transport.initial import initial_decrypts
from punchthrough.transport.quic import is_initial


def _client_initial() -> bytes:
    cfg = quic_configuration(Identity.generate(), is_client=True, config=EndpointConfig())
    quic = QuicConnection(configuration=cfg)
    quic.connect(("192.0.2.1", 1), now=0.0)
    (data, _), *_ = quic.datagrams_to_send(now=0.0)
    return data


def test_a_real_client_initial_decrypts() -> None:
    data = _client_initial()
    assert is_initial(data) and initial_decrypts(data)


def test_one_flipped_bit_in_the_protected_packet_does_not() -> None:
    data = _client_initial()
    for i in (20, 100, 400):  # header protection, CRYPTO frame, AEAD-covered payload
        altered = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]
        assert not initial_decrypts(altered), i


def test_junk_shaped_like_an_initial_does_not() -> None:
    rng = random.Random(1)
    for _ in range(50):
        head = bytes([0xC0, 0, 0, 0, 1, 8]) + rng.randbytes(8) + bytes([8]) + rng.randbytes(8)
        head += b"\x00"
        rest = 1200 - len(head) - 2
        junk = head + (0x4000 | rest).to_bytes(2, "big") + rng.randbytes(rest)
        assert is_initial(junk) and not initial_decrypts(junk)
    assert not initial_decrypts(b"") and not initial_decrypts(b"\xc0" * 1200)
