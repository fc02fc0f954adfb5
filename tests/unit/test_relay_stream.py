"""The relay over TCP (relay.stream) on loopback: real TLS (ssl), real WebSocket (websockets).

Registration and forwarding over TLS and WebSocket, UDP <-> TCP forwarding, and every kind of
bad input on the TCP port (garbage, half-open, slow headers, oversize and truncated frames,
wrong pin, wrong path, caps) closed and counted while the relay keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from punchthrough.identity import Identity, PeerId
from punchthrough.netio import DatagramSocket, UdpNetwork
from punchthrough.relay import RelayClient, RelayLimits, RelayServer
from punchthrough.relay.stream import (
    LinkError,
    StreamLimits,
    StreamLink,
    StreamListener,
    encode_datagram,
    open_link,
    parse_stream_url,
    server_context,
)
from punchthrough.relay.stream.framing import FrameDecoder, StreamFrameError
from punchthrough.relay.stream.tls import client_context
from punchthrough.transport import DatagramMux

FAST = RelayLimits(shutdown_grace=0.05)


@dataclass
class Relay:
    server: RelayServer
    listener: StreamListener
    identity: Identity
    inboxes: list[asyncio.Queue[tuple[PeerId, bytes]]] = field(default_factory=list)
    closers: list[object] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.listener.address[1]

    def url(self, kind: str) -> str:
        return (
            f"tls://127.0.0.1:{self.port}"
            if kind == "tls"
            else f"wss://127.0.0.1:{self.port}/relay"
        )

    async def stream_client(self, kind: str) -> tuple[RelayClient, StreamLink, Identity]:
        link = await open_link(parse_stream_url(self.url(kind)), pin=self.identity.peer_id)
        ident = Identity.generate()
        client = await RelayClient.connect(
            DatagramMux(link), link.remote, ident, relay_peer_id=self.identity.peer_id, timeout=5
        )
        self.closers.append((client, link))
        return client, link, ident

    async def udp_client(self) -> tuple[RelayClient, DatagramSocket, Identity]:
        sock = await UdpNetwork().bind("127.0.0.1")
        ident = Identity.generate()
        client = await RelayClient.connect(
            DatagramMux(sock), self.server.addresses[0], ident, timeout=5
        )
        self.closers.append((client, sock))
        return client, sock, ident


@contextlib.asynccontextmanager
async def relay(limits: StreamLimits | None = None, **ctx: object) -> AsyncIterator[Relay]:
    ident = Identity.generate()
    server = await RelayServer.start(UdpNetwork(), [("127.0.0.1", 0)], ident, limits=FAST)
    listener = await StreamListener.start(
        server,
        "127.0.0.1",
        0,
        server_context(ident, **ctx),
        limits,  # type: ignore[arg-type]
    )
    r = Relay(server, listener, ident)
    try:
        yield r
    finally:
        for client, sock in r.closers:  # type: ignore[misc]
            await client.close()
            sock.close()
        await server.close()


def inbox(client: RelayClient) -> asyncio.Queue[tuple[PeerId, bytes]]:
    q: asyncio.Queue[tuple[PeerId, bytes]] = asyncio.Queue()
    client.set_receiver(lambda src, data: q.put_nowait((src, data)))
    return q


async def wait_for_stat(r: Relay, key: str, at_least: int = 1, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while r.server.stats.get(key, 0) < at_least:
            await asyncio.sleep(0.02)


# -- framing (sans-IO) --------------------------------------------------------------------------
def test_decoder_reassembles_split_and_coalesced_datagrams() -> None:
    stream = b"".join(encode_datagram(bytes([i]) * (i + 1)) for i in range(50))
    dec = FrameDecoder()
    out: list[bytes] = []
    for i in range(0, len(stream), 7):  # arbitrary TCP segmentation
        out += dec.feed(stream[i : i + 7])
    assert out == [bytes([i]) * (i + 1) for i in range(50)]
    assert dec.pending == 0


@pytest.mark.parametrize("length", [0, 1501, 65535])
def test_decoder_refuses_zero_and_oversize_lengths(length: int) -> None:
    with pytest.raises(StreamFrameError):
        FrameDecoder().feed(length.to_bytes(2, "big") + b"x" * 10)


def test_encode_refuses_what_the_decoder_would() -> None:
    with pytest.raises(StreamFrameError):
        encode_datagram(b"")
    with pytest.raises(StreamFrameError):
        encode_datagram(b"x" * 1501)


@pytest.mark.parametrize(
    ("url", "kind", "host", "port", "path"),
    [
        ("tls://relay.example:443", "tls", "relay.example", 443, "/relay"),
        ("tls://198.51.100.20", "tls", "198.51.100.20", 443, "/relay"),
        ("wss://relay.example/relay", "websocket", "relay.example", 443, "/relay"),
        ("wss://[2001:db8::1]:8443/r", "websocket", "2001:db8::1", 8443, "/r"),
    ],
)
def test_stream_urls(url: str, kind: str, host: str, port: int, path: str) -> None:
    t = parse_stream_url(url)
    assert (t.kind, t.host, t.port, t.path) == (kind, host, port, path)


@pytest.mark.parametrize("url", ["http://x:1", "tls://x:1/path", "wss://:443/r", "tls://x:99999"])
def test_bad_stream_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_stream_url(url)


# -- the relay protocol over TCP ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tls", "websocket"])
async def test_register_and_forward_between_tcp_and_udp_clients(kind: str) -> None:
    async with relay() as r:
        tcp, link, tcp_id = await r.stream_client(kind)
        udp, _, udp_id = await r.udp_client()
        assert link.kind == kind
        assert tcp.relay_peer_id == r.identity.peer_id
        q_tcp, q_udp = inbox(tcp), inbox(udp)
        for i in range(20):
            tcp.send(udp_id.peer_id, b"to udp %d" % i)
            udp.send(tcp_id.peer_id, b"to tcp %d" % i)
        async with asyncio.timeout(5):
            got_udp = [await q_udp.get() for _ in range(20)]
            got_tcp = [await q_tcp.get() for _ in range(20)]
        assert got_udp == [(tcp_id.peer_id, b"to udp %d" % i) for i in range(20)]
        assert got_tcp == [(udp_id.peer_id, b"to tcp %d" % i) for i in range(20)]
        stats = r.server.stats
        assert stats[f"stream_{'tls' if kind == 'tls' else 'websocket'}"] == 1
        assert stats["frames_out"] == 40
        # the STUN keepalive path works over the stream too (the client's liveness check)
        assert await tcp.refresh(1.0) is None  # keepalives are off for this client
        assert stats["clients"] == 2


async def test_stream_clients_reach_each_other_and_the_observed_address_is_virtual() -> None:
    async with relay() as r:
        a, _, a_id = await r.stream_client("tls")
        b, _, b_id = await r.stream_client("websocket")
        qb = inbox(b)
        a.send(b_id.peer_id, b"x" * 1400)  # the largest relay payload fits a stream datagram
        async with asyncio.timeout(5):
            assert await qb.get() == (a_id.peer_id, b"x" * 1400)
        # one /64 per connection in 0100::/8, never a UDP source address
        assert a.observed_address[0].startswith("100:")
        assert a.observed_address[0] != b.observed_address[0]


async def test_wrong_pin_refused_before_anything_is_sent() -> None:
    async with relay() as r:
        other = Identity.generate().peer_id
        for kind in ("tls", "websocket"):
            with pytest.raises(LinkError, match="certificate"):
                await open_link(parse_stream_url(r.url(kind)), pin=other)
        # no CA vouches for an identity-bound certificate: unpinned is refused too
        with pytest.raises(LinkError):
            await open_link(parse_stream_url(r.url("tls")), pin=None)


def _ca_and_leaf(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


async def test_ca_issued_certificate_is_checked_by_host_name(tmp_path: Path) -> None:
    ca, cert, key = _ca_and_leaf(tmp_path, "localhost")
    async with relay(cert_file=cert, key_file=key) as r:
        for url in (f"tls://localhost:{r.port}", f"wss://localhost:{r.port}/relay"):
            link = await open_link(parse_stream_url(url), ca_file=ca)
            client = await RelayClient.connect(
                DatagramMux(link), link.remote, Identity.generate(), timeout=5
            )
            r.closers.append((client, link))
        # the name is checked: the same certificate under another name is refused
        with pytest.raises(LinkError, match=r"(?i)hostname|match"):
            await open_link(parse_stream_url(f"tls://127.0.0.1:{r.port}"), ca_file=ca)
        # and the chain: without our CA, the system store does not know it
        with pytest.raises(LinkError, match=r"(?i)verify"):
            await open_link(parse_stream_url(f"tls://localhost:{r.port}"))


# -- bad input on the TCP port -------------------------------------------------------------------
async def _raw_tcp(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _tls(r: Relay, alpn: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = client_context(alpn, pin=r.identity.peer_id)
    return await asyncio.open_connection("127.0.0.1", r.port, ssl=ctx)


async def _closed_by_relay(reader: asyncio.StreamReader, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                if not await reader.read(4096):
                    return
            except (ConnectionError, ssl.SSLError):
                return


async def test_garbage_half_open_and_slow_connections_are_closed_and_counted() -> None:
    limits = StreamLimits(handshake_timeout=0.3, header_timeout=0.3, register_timeout=0.5)
    async with relay(limits) as r:
        # garbage instead of a ClientHello
        reader, writer = await _raw_tcp(r.port)
        writer.write(b"\x00" * 64 + b"GET / HTTP/1.1\r\n\r\n")
        await _closed_by_relay(reader)
        writer.close()
        await wait_for_stat(r, "stream_tls_failed")
        # half-open: TCP connected, nothing sent
        reader, writer = await _raw_tcp(r.port)
        await _closed_by_relay(reader)
        writer.close()
        await wait_for_stat(r, "stream_tls_timeout")
        # slowloris: TLS done, the upgrade request never ends
        reader, writer = await _tls(r, "http/1.1")
        writer.write(b"GET /relay HTTP/1.1\r\nHost: x\r\n")
        await _closed_by_relay(reader)
        writer.close()
        await wait_for_stat(r, "stream_header_timeout")
        # a raw link that never registers
        reader, writer = await _tls(r, "punchthrough-relay/1")
        await _closed_by_relay(reader)
        writer.close()
        await wait_for_stat(r, "stream_unregistered_closed")
        # and everyone else is still served
        a, _, _ = await r.stream_client("tls")
        _, _, b_id = await r.udp_client()
        a.send(b_id.peer_id, b"still here")
        await wait_for_stat(r, "frames_out")


async def test_oversize_and_truncated_frames_close_only_that_connection() -> None:
    async with relay() as r:
        good, _, good_id = await r.stream_client("tls")
        q = inbox(good)
        reader, writer = await _tls(r, "punchthrough-relay/1")
        writer.write((1501).to_bytes(2, "big") + b"x" * 1501)
        await _closed_by_relay(reader)
        writer.close()
        await wait_for_stat(r, "stream_bad_frame")
        reader, writer = await _tls(r, "punchthrough-relay/1")
        writer.write((100).to_bytes(2, "big") + b"x" * 10)
        await writer.drain()
        writer.close()
        await wait_for_stat(r, "stream_truncated")
        # a WebSocket text message breaks the one-binary-message-per-datagram rule
        link = await open_link(parse_stream_url(r.url("websocket")), pin=r.identity.peer_id)
        carrier = link._carrier
        carrier.protocol.send_text(b"hello")  # type: ignore[attr-defined]
        carrier.flush()  # type: ignore[attr-defined]
        await wait_for_stat(r, "stream_bad_frame", 2)
        link.close()
        other, _, other_id = await r.udp_client()
        other.send(good_id.peer_id, b"unaffected")
        async with asyncio.timeout(5):
            assert await q.get() == (other_id.peer_id, b"unaffected")


async def test_bad_upgrades_are_refused_with_http_errors() -> None:
    async with relay() as r:
        with pytest.raises(LinkError, match="404"):
            await open_link(
                parse_stream_url(f"wss://127.0.0.1:{r.port}/elsewhere"), pin=r.identity.peer_id
            )
        # no subprotocol: a generic WebSocket client is refused (400)
        reader, writer = await _tls(r, "http/1.1")
        writer.write(
            b"GET /relay HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        async with asyncio.timeout(5):
            head = await reader.read(4096)
        assert head.startswith(b"HTTP/1.1 400")
        writer.close()
        # too large a request head
        reader, writer = await _tls(r, "http/1.1")
        writer.write(b"GET /relay HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 5000 + b"\r\n")
        for _ in range(3):
            writer.write(b"X-Pad: " + b"a" * 5000 + b"\r\n")
        await _closed_by_relay(reader)
        writer.close()
        assert r.server.stats["stream_ws_rejected"] >= 2
        await wait_for_stat(r, "stream_header_too_large")


async def test_connection_caps_refuse_before_tls() -> None:
    limits = StreamLimits(max_connections_per_ip=2)
    async with relay(limits) as r:
        held = [await _raw_tcp(r.port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await _raw_tcp(r.port)
        await _closed_by_relay(reader)
        writer.close()
        await wait_for_stat(r, "stream_refused_per_ip")
        for _, w in held:
            w.close()
    async with relay(StreamLimits(max_connections=1)) as r:
        first = await _raw_tcp(r.port)
        await asyncio.sleep(0.1)
        reader, writer = await _raw_tcp(r.port)
        await _closed_by_relay(reader)
        writer.close()
        await wait_for_stat(r, "stream_refused_full")
        first[1].close()


async def test_a_dropped_stream_ends_its_registration_at_once() -> None:
    async with relay() as r:
        _client, link, _ = await r.stream_client("tls")
        assert r.server.stats["clients"] == 1
        link.close()  # the TCP connection goes, no CONNECTION_CLOSE inside it
        async with asyncio.timeout(2):  # not the 30 s QUIC idle timeout
            while r.server.stats["clients"] or r.server.stats["connections"]:
                await asyncio.sleep(0.02)
        assert r.server.stats["clients_forgotten"] == 1


async def test_relay_close_ends_every_link() -> None:
    async with relay() as r:
        client, link, _ = await r.stream_client("websocket")
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        link.on_lost(lambda why: lost.done() or lost.set_result(why))
        await r.server.close()
        async with asyncio.timeout(5):
            await lost
            await client.wait_closed()


async def test_a_client_that_does_not_read_costs_a_bounded_write_buffer() -> None:
    from punchthrough.relay.stream.carrier import MAX_WRITE_BUFFER

    async with relay() as r:
        _reader, writer = await _tls(r, "punchthrough-relay/1")
        hub = r.listener.hub
        async with asyncio.timeout(5):
            while not len(hub):
                await asyncio.sleep(0.01)
        (addr,) = hub._conns
        (carrier,) = hub._conns.values()
        for _ in range(20):  # ~14 MB offered; the client never reads
            for _ in range(500):
                hub.sendto(b"x" * 1400, addr)
            await asyncio.sleep(0)
        assert r.server.stats["stream_dropped_backlog"] > 0
        assert carrier.transport.get_write_buffer_size() <= MAX_WRITE_BUFFER + 1500  # type: ignore[attr-defined]
        writer.close()
