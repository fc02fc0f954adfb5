"""The relay over TCP (issue 13): CPU per forwarded message over TLS and WebSocket against UDP,
and a live call's gap when UDP to the relay is blocked mid-call.

``relay_stream.json``:

- **cpu**: ``punchthrough relay --listen ... --tcp-listen ...`` as its own process pinned to
  CPU 1 (``taskset``), loaded from CPU 0 by two registered clients (A -> B) over one transport
  (UDP, TLS, WebSocket) sending 160-byte frames at a fixed rate; the relay's CPU seconds
  (``/proc/PID/stat`` utime+stime) over the load window, per delivered message. Same load and
  count for every transport, so the figures are ratios; the clients' own TLS cost is on CPU 0.
  UDP frames take the relay's batched fast path (the default on Linux); stream frames the
  ordinary one (stream read, demultiplexer, ``Forwarder``, one TLS record per datagram).
- **midcall** (loopback, real time): a 50 pps echo call through a UDP gate (a forwarder
  standing in for a firewall) to the relay, the relay's TLS/WebSocket port reachable; after 2 s
  the gate drops all UDP; measured: time from the block to the registration on a stream, the
  longest gap between echoed frames, frames lost; then the gate opens and the time back to UDP.
  Same QUIC connection throughout (checked). The lab figures for udp-blocked callers are in
  ``relay_stream_lab.json`` (root).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

SERVER_CPU = "1"
LOAD_CPU = "0"
PAYLOAD = 160
PPS = 2000
TOTAL = 10_000
TRIALS = 3
MIDCALL_RUNS = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _client(transport: str, udp: tuple[str, int], tcp: int, pin: Any) -> tuple[Any, Any]:
    from punchthrough.identity import Identity
    from punchthrough.netio import UdpNetwork
    from punchthrough.relay import RelayClient
    from punchthrough.relay.stream import open_link, parse_stream_url
    from punchthrough.transport import DatagramMux

    if transport == "udp":
        sock = await UdpNetwork().bind("127.0.0.1")
        client = await RelayClient.connect(DatagramMux(sock), udp, Identity.generate())
        return client, sock
    url = f"tls://127.0.0.1:{tcp}" if transport == "tls" else f"wss://127.0.0.1:{tcp}/relay"
    link = await open_link(parse_stream_url(url), pin=pin)
    client = await RelayClient.connect(DatagramMux(link), link.remote, Identity.generate())
    return client, link


async def _load(
    transport: str, udp: tuple[str, int], tcp: int, pin: Any, pid: int
) -> dict[str, Any]:
    ends = [await _client(transport, udp, tcp, pin) for _ in range(2)]
    (a, _), (b, _) = ends
    got = 0

    def on_frame(_src: object, _p: bytes) -> None:
        nonlocal got
        got += 1

    b.set_receiver(on_frame)
    loop = asyncio.get_running_loop()
    payload = bytes(PAYLOAD)
    await asyncio.sleep(0.2)
    c0 = cpu_seconds(pid)
    t0 = loop.time()
    sent = 0
    burst = PPS // 200
    while sent < TOTAL:
        for _ in range(burst):
            a.send(b.peer_id, payload)
            sent += 1
        await asyncio.sleep(max(0.0, t0 + sent / PPS - loop.time()))
    elapsed = loop.time() - t0
    await asyncio.sleep(0.3)
    cpu = cpu_seconds(pid) - c0
    for client, carrier in ends:
        await client.close()
        carrier.close()
    return {
        "sent": sent,
        "delivered": got,
        "load_s": round(elapsed, 3),
        "server_cpu_s": round(cpu, 3),
        "cpu_us_per_msg": round(cpu / got * 1e6, 2) if got else None,
    }


def bench_cpu(trials: int = TRIALS) -> dict[str, Any]:
    from punchthrough.identity import Identity

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"relay-stream-{os.getpid()}.key"
    ident = Identity.generate()
    ident.save(tmp, overwrite=True)
    udp, tcp = _free(socket.SOCK_DGRAM), _free(socket.SOCK_STREAM)
    argv = [
        "taskset", "-c", SERVER_CPU, sys.executable, "-m", "punchthrough", "relay",
        "--listen", f"127.0.0.1:{udp}", "--tcp-listen", f"127.0.0.1:{tcp}",
        "--identity", str(tmp), "--pps", "1000000", "--bps", "1000000000",
        "--stats-interval", "0", "--no-uvloop",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", tcp)) == 0:
                    break
            time.sleep(0.05)
        os.sched_setaffinity(0, {int(LOAD_CPU)})
        try:
            for transport in ("udp", "tls", "websocket"):
                runs = [
                    asyncio.run(_load(transport, ("127.0.0.1", udp), tcp, ident.peer_id, proc.pid))
                    for _ in range(trials)
                ]
                vals = [r["cpu_us_per_msg"] for r in runs if r["cpu_us_per_msg"] is not None]
                out[transport] = {
                    "trials": len(runs),
                    "runs": runs,
                    "cpu_us_per_msg_median": statistics.median(vals) if vals else None,
                }
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    finally:
        proc.terminate()
        proc.wait(5)
        tmp.unlink(missing_ok=True)
    base = out["udp"]["cpu_us_per_msg_median"]
    for t in ("tls", "websocket"):
        v = out[t]["cpu_us_per_msg_median"]
        out[t]["ratio_to_udp"] = round(v / base, 2) if v and base else None
    return out


async def _midcall_once() -> dict[str, Any]:
    from test_relay_fallback import Call, bind, echo, world

    loop = asyncio.get_running_loop()
    async with world() as w:
        b = await bind(w.relay.addresses[0])
        a = await bind(w.entry("tls", "websocket"))
        server = loop.create_task(echo(b))
        try:
            conn = await a.connect(b.peer_id, timeout=5)
            call = Call(conn)
            call.start()
            await asyncio.sleep(2.0)
            blocked = loop.time()
            w.gate.open = False
            while next(iter(a.relay_transports.values())) == "udp":
                await asyncio.sleep(0.01)
            on_stream = loop.time()
            transport = next(iter(a.relay_transports.values()))
            await asyncio.sleep(2.0)
            opened = loop.time()
            w.gate.open = True
            while next(iter(a.relay_transports.values())) != "udp":
                await asyncio.sleep(0.01)
            back = loop.time()
            await asyncio.sleep(1.0)
            await call.stop()
            arrivals = sorted(call.back.values())
            gaps = [y - x for x, y in itertools.pairwise(arrivals)]
            return {
                "to_stream_ms": round((on_stream - blocked) * 1000),
                "stream": transport,
                "back_to_udp_ms": round((back - opened) * 1000),
                "max_gap_ms": round(max(gaps) * 1000),
                "frames_sent": len(call.sent),
                "frames_lost": call.lost(),
                "lost_after_block": call.lost(since=blocked),
                "same_connection": a.connections == [conn] and not conn.closed,
            }
        finally:
            server.cancel()
            await a.close()
            await b.close()


def bench_midcall(runs: int = MIDCALL_RUNS) -> dict[str, Any]:
    rows = [asyncio.run(_midcall_once()) for _ in range(runs)]

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    return {
        "runs": len(rows),
        "rows": rows,
        "to_stream_ms_median": med("to_stream_ms"),
        "to_stream_ms_max": max(r["to_stream_ms"] for r in rows),
        "max_gap_ms_median": med("max_gap_ms"),
        "frames_lost_median": med("frames_lost"),
        "frames_lost_max": max(r["frames_lost"] for r in rows),
        "back_to_udp_ms_median": med("back_to_udp_ms"),
        "all_same_connection": all(r["same_connection"] for r in rows),
    }


def bench_relay_stream() -> dict[str, Any]:
    return {
        "how": __doc__,
        "cpu": bench_cpu(),
        "midcall": bench_midcall(),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_relay_stream(), indent=2))
