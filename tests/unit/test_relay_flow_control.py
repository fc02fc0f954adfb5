"""A client that opens gaps at the edge of its stream window cannot grow the relay's memory.

aioquic doubles a stream's receive window as soon as the peer's highest offset passes half of it
and zero-fills the gap; QuicDriver bounds the undelivered data a peer may make us hold and closes
the connection with FLOW_CONTROL_ERROR past it (found in review: 256 MiB in 14 packets before).
"""

from __future__ import annotations

import asyncio
import ssl

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, QuicEvent
from aioquic.quic.rangeset import RangeSet

from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayServer
from punchthrough.relay.control import CONTROL_RECEIVE_BUFFER
from punchthrough.relay.frames import RELAY_ALPN
from punchthrough.transport import DatagramMux
from punchthrough.transport.quic import QuicDriver


async def test_stream_gap_attack_is_cut_off_at_the_receive_buffer_bound() -> None:
    net = UdpNetwork()
    server = await RelayServer.start(net, [("127.0.0.1", 0)])
    sock = await net.bind("127.0.0.1")
    mux = DatagramMux(sock)
    done = asyncio.Event()

    def on_event(ev: QuicEvent) -> None:
        if isinstance(ev, HandshakeCompleted):
            done.set()

    cfg = QuicConfiguration(is_client=True, alpn_protocols=[RELAY_ALPN], verify_mode=ssl.CERT_NONE)
    d = QuicDriver.client(cfg, sock.sendto, server.addresses[0], on_event=on_event, mux=mux)
    try:
        async with asyncio.timeout(5):
            await done.wait()
        conn = d.connection
        sid = conn.get_next_available_stream_id()
        conn.send_stream_data(sid, b"\x00\x00", end_stream=False)  # half a frame header
        d.transmit()
        largest_held = 0
        for _ in range(20):  # bounded: 20 doublings would be 32 GiB without the bound
            if d.closed:
                break
            st = conn._streams[sid]
            target = min(st.max_stream_data_remote, conn._remote_max_data) - 1
            sender = st.sender
            sender._buffer = bytearray()
            sender._buffer_start = sender._buffer_stop = target
            sender._acked = RangeSet()
            sender._pending = RangeSet()
            conn.send_stream_data(sid, b"x")
            d.transmit()
            await asyncio.sleep(0.05)
            for ctl in list(server._controls):
                if ctl.driver is not None and sid in ctl.driver.connection._streams:
                    held = len(ctl.driver.connection._streams[sid].receiver._buffer)
                    largest_held = max(largest_held, held)
        async with asyncio.timeout(5):
            await d.wait_closed()
        assert d.terminated is not None
        assert d.terminated.error_code == 0x3  # FLOW_CONTROL_ERROR, RFC 9000 section 20.1
        assert largest_held <= 2 * CONTROL_RECEIVE_BUFFER
    finally:
        d.abort()
        await server.close()
        mux.close()
        sock.close()
