"""aioquic, driven through its sans-IO API, completes a handshake across a lossy simulated NAT.

This is the proof that aioquic's timers (``get_timer`` / ``handle_timer`` scheduled with
``loop.call_at``) run on virtual time: with 15 % loss the handshake needs retransmissions.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl

from aioquic._buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import HandshakeCompleted, StreamDataReceived
from aioquic.quic.packet import pull_quic_header
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from punchthrough.netio import Address, DatagramSocket
from punchthrough.sim import Link, World, nat_config, run

SERVER = ("198.51.100.1", 4433)
#: A seed whose losses hit the handshake itself, so aioquic's PTO timer must fire to finish.
SEED = 4


def _cert() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sim")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    return cert, key


class Driver:
    """Minimal asyncio glue for one QuicConnection on one simulated socket."""

    def __init__(self, sock: DatagramSocket, conn: QuicConnection | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.sock = sock
        self.conn = conn
        self.timer: asyncio.TimerHandle | None = None
        self.done = self.loop.create_future()
        self.received = b""
        self.server_config: QuicConfiguration | None = None
        sock.set_receiver(self.datagram)

    def datagram(self, data: bytes, addr: Address) -> None:
        if self.conn is None:  # server: first Initial creates the connection
            assert self.server_config is not None
            header = pull_quic_header(Buffer(data=data), host_cid_length=8)
            self.conn = QuicConnection(
                configuration=self.server_config,
                original_destination_connection_id=header.destination_cid,
            )
        self.conn.receive_datagram(data, addr, now=self.loop.time())
        self.pump()

    def on_timer(self) -> None:
        self.timer = None
        assert self.conn is not None
        self.conn.handle_timer(now=self.loop.time())
        self.pump()

    def pump(self) -> None:
        conn = self.conn
        assert conn is not None
        while (event := conn.next_event()) is not None:
            if isinstance(event, HandshakeCompleted) and not self.done.done():
                self.done.set_result(self.loop.time())
            elif isinstance(event, StreamDataReceived):
                self.received += event.data
                if conn.configuration.is_client is False:
                    conn.send_stream_data(event.stream_id, event.data, event.end_stream)
        for data, addr in conn.datagrams_to_send(now=self.loop.time()):
            self.sock.sendto(data, addr)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        when = conn.get_timer()
        if when is not None:
            self.timer = self.loop.call_at(when, self.on_timer)


def test_quic_handshake_and_stream_through_lossy_nat() -> None:
    async def main() -> tuple[float, bytes, dict[str, int], float]:
        world = World()
        lossy = Link(0.02, jitter=0.005, loss=0.15)
        server_host = world.add_host("server", SERVER[0], link=lossy)
        nat = world.add_nat("home", nat_config("eim-apdf"), "203.0.113.1")
        client_host = nat.add_host("alice", "10.0.1.2", link=lossy)

        cert, key = _cert()
        server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["pt"])
        server_cfg.certificate, server_cfg.private_key = cert, key
        server = Driver(await server_host.bind(*SERVER))
        server.server_config = server_cfg

        client_cfg = QuicConfiguration(is_client=True, alpn_protocols=["pt"])
        client_cfg.verify_mode = ssl.CERT_NONE
        client = Driver(await client_host.bind(), QuicConnection(configuration=client_cfg))
        assert client.conn is not None
        client.conn.connect(SERVER, now=world.now)
        client.pump()
        handshake_at = await asyncio.wait_for(client.done, 30)
        stream = client.conn.get_next_available_stream_id()
        client.conn.send_stream_data(stream, b"hello through the NAT", end_stream=True)
        client.pump()
        while client.received != b"hello through the NAT":
            await asyncio.sleep(0.05)
        return handshake_at, client.received, world.drop_reasons, world.now

    handshake_at, echoed, drops, end = run(main(), seed=SEED)
    assert echoed == b"hello through the NAT"
    assert drops.get("loss on link of alice", 0) + drops.get("loss on link of server", 0) > 0
    # one RTT is ~0.1 s; this seed loses a handshake packet, so only the PTO timer got it done
    assert 0.25 < handshake_at < 1.0 and end < 60
