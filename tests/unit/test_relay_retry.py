"""Retry tokens and the per-prefix key of the relay's connection limits (issue 12, finding 5)."""

from __future__ import annotations

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from punchthrough.relay.frames import RELAY_ALPN
from punchthrough.relay.limits import RelayLimits, TokenBucket, address_prefix
from punchthrough.relay.retry import (
    HALF_OPEN_LOAD,
    RETRY_TOKEN_LIFETIME,
    RetryTokens,
    parse_initial,
    retry_packet,
    under_load,
)

CLIENT = ("203.0.113.7", 40000)
ODCID, SCID = b"o" * 8, b"s" * 8


def test_token_bound_to_address_cid_and_time() -> None:
    tokens = RetryTokens()
    tok = tokens.issue(CLIENT, ODCID, SCID, now=100.0)
    assert tokens.validate(CLIENT, SCID, tok, now=100.5) == ODCID
    assert tokens.validate(("203.0.113.7", 40001), SCID, tok, now=100.5) is None  # other port
    assert tokens.validate(("203.0.113.8", 40000), SCID, tok, now=100.5) is None  # other IP
    assert tokens.validate(CLIENT, ODCID, tok, now=100.5) is None  # not sent to our Retry SCID
    assert tokens.validate(CLIENT, SCID, tok, now=100.0 + RETRY_TOKEN_LIFETIME + 0.01) is None
    assert RetryTokens().validate(CLIENT, SCID, tok, now=100.5) is None  # another relay's key
    forged = bytearray(tok)
    forged[-1] ^= 1
    assert tokens.validate(CLIENT, SCID, bytes(forged), now=100.5) is None
    assert tokens.validate(CLIENT, SCID, b"short", now=100.5) is None


def test_retry_is_small_and_the_client_accepts_it() -> None:
    conn = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=[RELAY_ALPN])
    )
    conn.connect(("198.51.100.20", 3478), now=0.0)
    initial = conn.datagrams_to_send(now=0.0)[0][0]
    header = parse_initial(initial)
    assert header is not None
    retry = retry_packet(RetryTokens(), header, CLIENT, now=0.0)
    assert len(retry) * 8 < len(initial)  # no amplification: far less than a tenth back
    conn.receive_datagram(retry, ("198.51.100.20", 3478), now=0.01)
    again = conn.datagrams_to_send(now=0.01)[0][0]
    retried = parse_initial(again)
    assert retried is not None and retried.token  # the client echoes the token


def test_load_is_half_the_new_connection_bucket() -> None:
    bucket = TokenBucket(rate=0.0, burst=4.0, now=0.0)
    assert not under_load(bucket, 0.0, 0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not under_load(bucket, 0.0, 0)  # exactly half left
    assert bucket.take(0.0)
    assert under_load(bucket, 0.0, 0)


def test_load_is_also_many_half_open_connections() -> None:
    bucket = TokenBucket(rate=0.0, burst=4.0, now=0.0)  # full: no load by rate
    assert not under_load(bucket, 0.0, HALF_OPEN_LOAD - 1)
    assert under_load(bucket, 0.0, HALF_OPEN_LOAD)


@pytest.mark.parametrize(
    ("ip", "key"),
    [
        ("198.51.100.1", "198.51.100.1"),
        ("2001:db8:6:4::1", "2001:db8:6:4::/64"),
        ("2001:db8:6:4:ffff:1:2:3", "2001:db8:6:4::/64"),
        ("::ffff:198.51.100.1", "198.51.100.1"),  # IPv4-mapped counts as IPv4
        ("fe80::1%eth0", "fe80::/64"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_per_ip_limits_key_on_ipv4_or_ipv6_64(ip: str, key: str) -> None:
    assert address_prefix(ip) == key


def test_retry_mode_is_checked() -> None:
    assert RelayLimits().retry == "load"
    with pytest.raises(ValueError):
        RelayLimits(retry="sometimes")  # type: ignore[arg-type]
