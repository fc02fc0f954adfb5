"""The echo session behind ``punchthrough connect`` / ``listen --echo``, as library functions.

An application of the public API, kept out of the CLI so the simulator scenarios run exactly the
same code on virtual time. A frame is
``magic | seq | send time`` followed by a pattern hashed from that header, so an
echoed frame can be checked byte for byte (``frames_corrupt`` must stay 0: the path under the
end-to-end QUIC connection cannot alter data).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import struct
from collections.abc import Callable
from typing import Final

from punchthrough.endpoint import Connection, ConnectionClosed, Endpoint
from punchthrough.identity import PeerId
from punchthrough.netio import Address
from punchthrough.transport.quic import QuicStreamWriter

log = logging.getLogger(__name__)

#: A 20 ms voice frame at ~64 kbit/s is 160 bytes (G.711: 8000 samples/s x 1 byte x 20 ms).
DEFAULT_FRAME_SIZE: Final = 160
DEFAULT_PPS: Final = 50  # one frame per 20 ms
#: How long to wait for stragglers after the last frame was sent (seconds).
STRAGGLER_WAIT: Final = 1.0
_MAGIC: Final = b"PTEF"
#: magic, sequence number, send time in microseconds of the sender's loop clock.
_HEADER: Final = struct.Struct("!4sIQ")
#: Cap on the number of frames one session may send (bounded loops; 1 h at 50 pps).
MAX_FRAMES: Final = 180_000


def make_frame(seq: int, sent_us: int, size: int = DEFAULT_FRAME_SIZE) -> bytes:
    head = _HEADER.pack(_MAGIC, seq, sent_us)
    pad = size - len(head)
    if pad < 0:
        raise ValueError(f"frames are at least {_HEADER.size} bytes")
    digest = hashlib.blake2b(head, digest_size=64).digest()
    return head + (digest * (pad // len(digest) + 1))[:pad]


def parse_frame(data: bytes) -> tuple[int, int] | None:
    """``(seq, sent_us)`` of an intact frame, ``None`` for anything else."""
    if len(data) < _HEADER.size:
        return None
    magic, seq, sent_us = _HEADER.unpack_from(data)
    if magic != _MAGIC or data != make_frame(seq, sent_us, len(data)):
        return None
    return seq, sent_us


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[k], 2)


async def run_echo_session(
    ep: Endpoint,
    peer_id: PeerId | str,
    duration: float = 10.0,
    pps: float = DEFAULT_PPS,
    *,
    frame_size: int = DEFAULT_FRAME_SIZE,
    connect_timeout: float | None = None,
    straggler_wait: float = STRAGGLER_WAIT,
    process_started_at: float | None = None,
    on_connected: Callable[[Connection], None] | None = None,
) -> dict[str, object]:
    """Connect to an echoing peer, stream numbered frames at ``pps`` for ``duration`` seconds.

    Returns the ``connect --json`` summary. Every time in it (``*_ms``, ``path_changes``, the
    ``traversal`` report) is milliseconds from the ``connect()`` call, the origin every report of
    this package uses. ``process_started_at`` (loop time) adds ``from_process_start_ms``: the
    same moments counted from the process's start, named as such. Connection errors propagate
    (:class:`ConnectError` subclasses).
    """
    if duration < 0 or pps <= 0:
        raise ValueError("duration must be >= 0 and pps > 0")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    conn = await ep.connect(peer_id, timeout=connect_timeout)
    connected = loop.time()
    relays = ep.relay_addresses
    dial_relay = relays[0] if relays else None  # the dialer's relay (endpoint.dialer)
    if on_connected is not None:
        on_connected(conn)
    n_frames = min(MAX_FRAMES, round(duration * pps))
    received: set[int] = set()
    arrivals: list[float] = []
    rtts: list[float] = []
    counters = {"duplicates": 0, "corrupt": 0}
    sent = 0
    all_back = asyncio.Event()

    async def receive() -> None:
        async for data in conn.datagrams():
            now = loop.time()
            parsed = parse_frame(data)
            if parsed is None:
                counters["corrupt"] += 1
                continue
            seq, sent_us = parsed
            if seq in received or seq >= n_frames:
                counters["duplicates"] += 1
                continue
            received.add(seq)
            arrivals.append(now)
            rtts.append((now - sent_us / 1e6) * 1000.0)
            if len(received) == sent == n_frames:
                all_back.set()

    receiver = loop.create_task(receive())
    try:
        start = loop.time()
        for seq in range(n_frames):
            delay = start + seq / pps - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_us = round(loop.time() * 1e6)
            try:
                conn.send_datagram(make_frame(seq, sent_us, frame_size))
            except ConnectionClosed:
                break
            sent += 1
        if len(received) == sent:
            all_back.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(straggler_wait):
                await all_back.wait()
    finally:
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        path = conn.path
        closed = conn.close_reason
        report = conn.traversal_report()
        traversal = report.to_json()
        agent = conn.traversal
        direct_at = agent.race.waterfall.direct_at if agent is not None else None
        changes = [c.to_json(t0) for c in conn.paths.changes]
        await conn.close("echo session done")
    gaps = [(b - a) * 1000.0 for a, b in itertools.pairwise(arrivals)]
    out: dict[str, object] = {
        "peer_id": str(conn.peer_id),
        "connected_ms": round((connected - t0) * 1000.0, 1),
        "first_echo_ms": round((arrivals[0] - t0) * 1000.0, 1) if arrivals else None,
        "path": path,
        "duration_s": duration,
        "pps": pps,
        "frame_size": frame_size,
        "frames_sent": sent,
        "frames_received": len(received),
        "frames_lost": sent - len(received),
        "frames_duplicate": counters["duplicates"],
        "frames_corrupt": counters["corrupt"],
        "max_gap_ms": round(max(gaps), 1) if gaps else None,
        "rtt_ms": {
            "p50": _percentile(rtts, 0.5),
            "p95": _percentile(rtts, 0.95),
            "max": _percentile(rtts, 1.0),
        },
        "path_changes": changes,
        # When the call first went direct (ms from connect(), like connected_ms), and
        # which stage found the path: "port-mapping", "hole-punch", or None (relay only).
        "direct_ms": round((direct_at - t0) * 1000.0, 1) if direct_at is not None else None,
        "strategy": report.strategy,
        # The direct path's address family ("ipv4" / "ipv6"), None on the relay.
        "family": report.family,
        "traversal": traversal,
        "closed_early": closed.reason if closed is not None else None,
    }
    transports = relay_transport_summary(ep, dial_relay, t0)
    out.update(transports)
    # the traversal report says what carries the relay stage too, and why it is not UDP
    traversal["relay_transport"] = {
        "transport": transports["relay_transport"],
        "reason": transports["relay_transport_reason"],
    }
    if process_started_at is not None:

        def since(t: float | None) -> float | None:
            return None if t is None else round((t - process_started_at) * 1000.0, 1)

        out["from_process_start_ms"] = {
            "connect_called": since(t0),
            "connected": since(connected),
            "direct": since(direct_at),
        }
    return out


def relay_transport_summary(
    ep: Endpoint, relay: Address | None, origin: float
) -> dict[str, object]:
    """``relay_transport`` (``udp``/``tls``/``websocket``, what carries the call's relay now),
    its changes over the call (the first may be the bind's choice, before ``connect()``), and
    why the relay is not on UDP (``None`` when it is)."""
    changes = [c for c in ep.relay_transport_changes if c.relay == relay]
    transport = ep.relay_transports.get(relay) if relay is not None else None
    return {
        "relay_transport": transport,
        "relay_transport_changes": [c.to_json(origin) for c in changes],
        "relay_transport_reason": (
            changes[-1].reason if changes and transport not in (None, "udp") else None
        ),
    }


async def _echo_stream(reader: asyncio.StreamReader, writer: QuicStreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass


async def serve_echo(conn: Connection) -> None:
    """Echo every datagram and every stream the peer opens until the connection closes."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def streams() -> None:
        while True:
            try:
                reader, writer = await conn.accept_stream()
            except ConnectionClosed:
                return
            task = loop.create_task(_echo_stream(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    stream_task = loop.create_task(streams())
    try:
        async for data in conn.datagrams():
            try:
                conn.send_datagram(data)
            except ConnectionClosed:
                break
            except ValueError:  # cannot happen for what we received, but never crash the echo
                continue
    finally:
        stream_task.cancel()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(stream_task, *tasks, return_exceptions=True)


async def serve_endpoint(
    ep: Endpoint,
    *,
    echo: bool = True,
    on_accept: Callable[[Connection], None] | None = None,
    on_close: Callable[[Connection], None] | None = None,
) -> None:
    """Accept calls until the endpoint closes; echo them (``echo``) or just hold them."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(conn: Connection) -> None:
        try:
            if echo:
                await serve_echo(conn)
            else:
                async for _ in conn.datagrams():
                    pass
            await conn.wait_closed()
        finally:
            if on_close is not None:
                on_close(conn)

    try:
        async for conn in ep:
            if on_accept is not None:
                on_accept(conn)
            task = loop.create_task(handle(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
