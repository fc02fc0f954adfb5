"""The identity certificate in a real aioquic handshake, driven sans-IO in memory (no sockets)."""

from __future__ import annotations

import datetime

import pytest
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from punchthrough.identity import (
    PEER_AUTH_CONTEXT,
    RELAY_REGISTER_CONTEXT,
    BadSignature,
    ChannelBindingUnavailable,
    Identity,
    PeerIdMismatch,
    UnsupportedCertificate,
    apply_identity,
    channel_binding,
    handshake_complete,
    peer_certificate_chain,
    peer_id_from_certificate,
    sign_exporter,
    verify_exporter,
    verify_peer_certificate,
    verify_quic_peer,
)
from punchthrough.signal import FrameDecoder, PeerAuth, encode_frame

CLIENT_ADDR = ("192.0.2.1", 40000)
SERVER_ADDR = ("198.51.100.1", 4433)
ALPN = ["punchthrough-test"]


class Pair:
    """A client and a server QuicConnection wired back to back through in-memory datagrams."""

    def __init__(self, server_identity: Identity, *, server_key: Identity | None = None) -> None:
        ccfg = apply_identity(
            QuicConfiguration(is_client=True, alpn_protocols=ALPN), Identity.generate()
        )
        self.scfg = apply_identity(
            QuicConfiguration(is_client=False, alpn_protocols=ALPN), server_identity
        )
        if server_key is not None:  # certificate of one identity, private key of another
            self.scfg.private_key = server_key.private_key
        self.client = QuicConnection(configuration=ccfg)
        self.server: QuicConnection | None = None
        self.now = 0.0
        self.client.connect(SERVER_ADDR, now=self.now)
        self.client_events: list[events.QuicEvent] = []
        self.server_events: list[events.QuicEvent] = []

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for data, _ in self.client.datagrams_to_send(self.now):
                moved = True
                if self.server is None:
                    header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                    self.server = QuicConnection(
                        configuration=self.scfg,
                        original_destination_connection_id=header.destination_cid,
                    )
                self.server.receive_datagram(data, CLIENT_ADDR, self.now)
            if self.server is not None:
                for data, _ in self.server.datagrams_to_send(self.now):
                    moved = True
                    self.client.receive_datagram(data, SERVER_ADDR, self.now)
            for conn, sink in (
                (self.client, self.client_events),
                (self.server, self.server_events),
            ):
                while conn is not None and (ev := conn.next_event()) is not None:
                    sink.append(ev)
            self.now += 0.005
            if not moved:
                return


def test_dialer_verifies_acceptor_peer_id_from_certificate() -> None:
    server_id = Identity.generate()
    pair = Pair(server_id)
    with pytest.raises(PeerIdMismatch, match="not completed"):
        verify_quic_peer(pair.client, server_id.peer_id)
    pair.pump()
    assert any(isinstance(e, events.HandshakeCompleted) for e in pair.client_events)
    assert pair.server is not None and handshake_complete(pair.server)
    assert verify_quic_peer(pair.client, server_id.peer_id) == server_id.peer_id
    chain = peer_certificate_chain(pair.client)
    assert chain == [server_id.certificate()]
    # The server never asks for a client certificate: the dialer authenticates by PeerAuth.
    assert peer_certificate_chain(pair.server) == []


def test_wrong_expected_peer_id_is_a_clear_error() -> None:
    server_id, expected = Identity.generate(), Identity.generate()
    pair = Pair(server_id)
    pair.pump()
    with pytest.raises(PeerIdMismatch) as info:
        verify_quic_peer(pair.client, expected.peer_id)
    assert info.value.expected == expected.peer_id
    assert info.value.actual == server_id.peer_id
    assert str(expected.peer_id) in str(info.value) and str(server_id.peer_id) in str(info.value)


def test_certificate_without_the_matching_key_fails_the_handshake() -> None:
    # A server that shows someone else's certificate cannot produce CertificateVerify for it.
    victim, impostor = Identity.generate(), Identity.generate()
    pair = Pair(victim, server_key=impostor)
    pair.pump()
    assert not any(isinstance(e, events.HandshakeCompleted) for e in pair.client_events)
    timer = pair.client.get_timer()  # the client closed; termination fires after draining
    assert timer is not None
    pair.client.handle_timer(timer)
    closed = [e for e in iter(pair.client.next_event, None)]
    assert any(isinstance(e, events.ConnectionTerminated) for e in closed)
    # decrypt_error alert (RFC 8446 section 6.2 = 51) as a QUIC CRYPTO_ERROR (RFC 9001 4.8)
    assert any(getattr(e, "error_code", None) == 0x100 + 51 for e in closed)
    with pytest.raises(PeerIdMismatch):
        verify_quic_peer(pair.client, victim.peer_id)


def test_channel_binding_and_peer_auth_over_a_stream() -> None:
    server_id, dialer = Identity.generate(), Identity.generate()
    pair = Pair(server_id)
    with pytest.raises(ChannelBindingUnavailable):
        channel_binding(pair.client)
    pair.pump()
    assert pair.server is not None
    cb_client, cb_server = channel_binding(pair.client), channel_binding(pair.server)
    assert cb_client == cb_server and len(cb_client) == 32

    # Dialer proves its identity on the control stream; acceptor verifies it.
    sig = sign_exporter(dialer, cb_client)
    stream = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(
        stream, encode_frame(PeerAuth(peer_id=dialer.peer_id, signature=sig))
    )
    pair.pump()
    dec = FrameDecoder()
    for ev in pair.server_events:
        if isinstance(ev, events.StreamDataReceived) and ev.stream_id == stream:
            dec.feed(ev.data)
    msg = dec.next_message()
    assert isinstance(msg, PeerAuth) and msg.peer_id == dialer.peer_id
    verify_exporter(msg.peer_id, channel_binding(pair.server), msg.signature)

    # The binding is per connection: the same proof does not verify on another connection,
    other = Pair(server_id)
    other.pump()
    assert other.server is not None
    assert channel_binding(other.server) != cb_server
    with pytest.raises(BadSignature):
        verify_exporter(dialer.peer_id, channel_binding(other.server), sig)
    # nor for another purpose, nor as someone else.
    with pytest.raises(BadSignature):
        verify_exporter(dialer.peer_id, cb_server, sig, context=RELAY_REGISTER_CONTEXT)
    with pytest.raises(BadSignature):
        verify_exporter(server_id.peer_id, cb_server, sig, context=PEER_AUTH_CONTEXT)


def test_binding_is_stable_after_more_traffic() -> None:
    pair = Pair(Identity.generate())
    pair.pump()
    before = channel_binding(pair.client)
    sid = pair.client.get_next_available_stream_id()
    pair.client.send_stream_data(sid, b"x" * 5000, end_stream=True)
    pair.pump()
    assert pair.server is not None
    assert channel_binding(pair.client) == before == channel_binding(pair.server)


def test_exporter_value_length_checked() -> None:
    ident = Identity.generate()
    with pytest.raises(ValueError):
        sign_exporter(ident, b"short")
    with pytest.raises(ValueError):
        verify_exporter(ident.peer_id, b"", b"x" * 64)


def test_certificate_is_a_pure_function_of_the_key() -> None:
    a = Identity.from_private_bytes(b"\x05" * 32)
    b = Identity.from_private_bytes(b"\x05" * 32)
    assert a.certificate() == b.certificate()
    cert = a.certificate()
    assert peer_id_from_certificate(cert) == a.peer_id
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == str(a.peer_id)
    assert cert.not_valid_after_utc.year == 9999
    assert cert.serial_number > 0 and cert.serial_number.bit_length() <= 159
    assert verify_peer_certificate([cert], a.peer_id) == a.peer_id
    assert verify_peer_certificate(cert, a.peer_id) == a.peer_id


def _ecdsa_cert() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.org")])
    t = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(t)
        .not_valid_after(t + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def test_non_ed25519_or_missing_certificate_is_a_mismatch() -> None:
    expected = Identity.generate().peer_id
    cert = _ecdsa_cert()
    with pytest.raises(UnsupportedCertificate, match="not Ed25519"):
        peer_id_from_certificate(cert)
    with pytest.raises(PeerIdMismatch, match="not Ed25519") as info:
        verify_peer_certificate([cert], expected)
    assert info.value.actual is None
    empties: list[list[x509.Certificate] | None] = [[], None]
    for empty in empties:
        with pytest.raises(PeerIdMismatch, match="no certificate"):
            verify_peer_certificate(empty, expected)
    # Only the leaf counts: the right certificate later in the chain does not help.
    right = Identity.generate()
    with pytest.raises(PeerIdMismatch):
        verify_peer_certificate([cert, right.certificate()], right.peer_id)
