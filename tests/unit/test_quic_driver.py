"""QuicDriver: two real aioquic connections over loopback sockets, routed by the demux."""

from __future__ import annotations

import asyncio

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import DatagramFrameReceived, HandshakeCompleted, QuicEvent

from punchthrough.identity import Identity, apply_identity, verify_quic_peer
from punchthrough.netio import Address, UdpNetwork
from punchthrough.transport import DatagramMux
from punchthrough.transport.quic import QuicDriver, is_initial

ALPN = ["punchthrough-test"]


def config(is_client: bool, ident: Identity) -> QuicConfiguration:
    cfg = QuicConfiguration(is_client=is_client, alpn_protocols=ALPN, max_datagram_frame_size=1500)
    apply_identity(cfg, ident)
    return cfg


async def test_handshake_stream_echo_and_datagrams_over_loopback() -> None:
    net = UdpNetwork()
    a_sock, b_sock = await net.bind("127.0.0.1"), await net.bind("127.0.0.1")
    a_mux, b_mux = DatagramMux(a_sock), DatagramMux(b_sock)
    server_id, client_id = Identity.generate(), Identity.generate()
    servers: list[QuicDriver] = []
    server_datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def server_event(ev: QuicEvent) -> None:
        if isinstance(ev, DatagramFrameReceived):
            server_datagrams.put_nowait(ev.data)
            servers[0].connection.send_datagram_frame(b"echo:" + ev.data)

    def on_new(data: bytes, addr: Address) -> None:
        if not is_initial(data):
            return
        drv = QuicDriver.server(
            config(False, server_id), data, b_sock.sendto, addr, on_event=server_event, mux=b_mux
        )

        def echo(reader: asyncio.StreamReader, writer: object) -> None:
            async def run() -> None:
                data = await reader.read()
                writer.write(data.upper())  # type: ignore[attr-defined]
                writer.write_eof()  # type: ignore[attr-defined]

            asyncio.get_running_loop().create_task(run())

        drv.set_stream_handler(echo)
        servers.append(drv)

    b_mux.set_new_quic_handler(on_new)
    handshake = asyncio.get_running_loop().create_future()
    client_datagrams: asyncio.Queue[bytes] = asyncio.Queue()

    def client_event(ev: QuicEvent) -> None:
        if isinstance(ev, HandshakeCompleted) and not handshake.done():
            handshake.set_result(None)
        elif isinstance(ev, DatagramFrameReceived):
            client_datagrams.put_nowait(ev.data)

    client = QuicDriver.client(
        config(True, client_id),
        a_sock.sendto,
        b_sock.local_address,
        on_event=client_event,
        mux=a_mux,
    )
    try:
        async with asyncio.timeout(5):
            await handshake
            assert verify_quic_peer(client.connection, server_id.peer_id) == server_id.peer_id
            reader, writer = client.open_stream()
            writer.write(b"hello over quic")
            writer.write_eof()
            assert await reader.read() == b"HELLO OVER QUIC"
            client.connection.send_datagram_frame(b"d1")
            client.transmit()
            assert await server_datagrams.get() == b"d1"
            servers[0].transmit()
            assert await client_datagrams.get() == b"echo:d1"
            client.close(reason="done")
            await servers[0].wait_closed()
            await client.wait_closed()
        assert servers[0].terminated is not None
        assert servers[0].terminated.reason_phrase == "done"
        # every CID the connections registered is gone from the demux tables
        assert not a_mux._quic and not b_mux._quic
    finally:
        for d in (client, *servers):
            d.abort()
        a_mux.close()
        b_mux.close()
        a_sock.close()
        b_sock.close()


def test_is_initial_rejects_short_and_garbage() -> None:
    assert not is_initial(b"")
    assert not is_initial(b"\xc0" + bytes(1300))
    assert not is_initial(bytes(1300))
