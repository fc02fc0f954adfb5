"""Relay fleet benchmarks (issue 14).

- ``fleet_failover_sim``: the relay carrying a relayed 50 pps call (both ways) dies; recovery
  time (first frame after the failure, the slower direction) and frames lost, over seeded
  simulator trials (``punchthrough.scenario.fleet``), also with a slow directory (200 ms).
- ``fleet_directory``: one relay's directory work against a real redis-server on loopback vs
  the in-memory directory: registrations/s (a real RelayClient registering: QUIC handshake +
  RelayRegister, which waits for the directory write), lookups/s of a peer homed on another
  relay (RelayLookup through the relay, answered from the directory), lookup latency p50/p95;
  and the raw directory operations per second.
- ``fleet_cores``: forwarded packets/s of N relay processes against one.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def bench_fleet_failover_sim(trials: int = 200) -> dict[str, Any]:
    from punchthrough.scenario.fleet import run_failover_trial

    out: dict[str, Any] = {
        "how": "simulator: 3 relays (5/10/15 ms access links) sharing an in-memory directory; "
        "alice homed on r1, bob on r2 (no r1 in his map), both apdm-random, relayed 50 pps "
        "both ways; r2 blackholed (SIGKILL as the network sees it) at a seeded moment in the "
        "probe cycle; recovery = first frame after the failure in the slower direction"
    }
    for label, kw in (("directory_lag_0ms", {}), ("directory_lag_200ms", {"directory_lag": 0.2})):
        rec: list[float] = []
        lost: list[int] = []
        failed = 0
        t0 = time.perf_counter()
        for seed in range(trials):
            r = run_failover_trial(seed=seed, **kw)
            if r["recovered"] and r["same_connection"] and r["recovery_s"] is not None:
                rec.append(r["recovery_s"])
                lost.append(r["frames_lost"])
            else:
                failed += 1
        out[label] = {
            "trials": trials,
            "recovered_same_connection": trials - failed,
            "recovery_s_p50": round(statistics.median(rec), 3) if rec else None,
            "recovery_s_p95": round(_pct(rec, 0.95), 3) if rec else None,
            "recovery_s_max": round(max(rec), 3) if rec else None,
            "frames_lost_p50": statistics.median(lost) if lost else None,
            "frames_lost_p95": _pct([float(x) for x in lost], 0.95) if lost else None,
            "frames_sent_per_trial": 2 * 50 * 6,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    return out


async def _relay_side(directory_spec: str, n_reg: int, n_lookup: int) -> dict[str, Any]:
    from punchthrough.identity import Identity
    from punchthrough.netio import UdpNetwork
    from punchthrough.relay import RelayClient, RelayLimits, RelayServer
    from punchthrough.relay.directory import open_directory
    from punchthrough.relay.fleet import FleetConfig
    from punchthrough.transport.demux import DatagramMux

    net = UdpNetwork()
    d1, d2 = open_directory(directory_spec), open_directory(directory_spec)
    if directory_spec == "memory":
        d2 = d1  # one process: the fleet shares the object
    limits = RelayLimits(
        shutdown_grace=0.05,
        new_connections_per_second=1e6,
        new_connection_burst=1e6,
        lookups_per_second=1e6,
        lookup_burst=1e6,
    )
    r1 = await RelayServer.start(
        net, [("127.0.0.1", 0)], limits=limits, fleet=FleetConfig("r1", d1)
    )
    r2 = await RelayServer.start(
        net, [("127.0.0.1", 0)], limits=limits, fleet=FleetConfig("r2", d2)
    )
    clients: list[tuple[RelayClient, DatagramMux]] = []
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(n_reg):
            sock = await net.bind("127.0.0.1", 0)
            mux = DatagramMux(sock)
            c = await RelayClient.connect(mux, r2.addresses[0], Identity.generate(), timeout=5)
            clients.append((c, mux))
        reg_s = loop.time() - t0
        sock = await net.bind("127.0.0.1", 0)
        asker_mux = DatagramMux(sock)
        asker = await RelayClient.connect(asker_mux, r1.addresses[0], Identity.generate())
        lat: list[float] = []
        targets = [c.peer_id for c, _ in clients]
        t0 = loop.time()
        for i in range(n_lookup):
            s = time.perf_counter()
            found = await asker.lookup(targets[i % len(targets)])
            lat.append(time.perf_counter() - s)
            assert found == tuple(r2.addresses)
        look_s = loop.time() - t0
        await asker.close()
        asker_mux.close()
        sock.close()
        return {
            "registrations": n_reg,
            "registrations_per_s": round(n_reg / reg_s, 1),
            "lookups": n_lookup,
            "lookups_per_s": round(n_lookup / look_s, 1),
            "lookup_ms_p50": round(1000 * statistics.median(lat), 3),
            "lookup_ms_p95": round(1000 * _pct(lat, 0.95), 3),
        }
    finally:
        for c, mux in clients:
            await c.close()
            mux.close()
            mux.sock.close()
        await r1.close()
        await r2.close()
        await d1.close()
        if d2 is not d1:
            await d2.close()


async def _raw_ops(directory_spec: str, n: int) -> dict[str, Any]:
    from punchthrough.identity import Identity
    from punchthrough.relay.directory import HomeEntry, open_directory

    d = open_directory(directory_spec)
    entry = HomeEntry("r1", (("198.51.100.20", 3478),))
    peers = [Identity.generate().peer_id for _ in range(n)]
    try:
        t0 = time.perf_counter()
        for p in peers:
            await d.publish({p: entry}, 30)
        pub = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        await d.publish(dict.fromkeys(peers, entry), 30)  # a relay's refresh: one batch
        batch = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for p in peers:
            await d.lookup(p)
        look = n / (time.perf_counter() - t0)
        return {
            "ops": n,
            "publish_per_s": round(pub),
            "refresh_batch_entries_per_s": round(batch),
            "lookup_per_s": round(look),
        }
    finally:
        await d.close()


def bench_fleet_directory(
    n_reg: int = 200, n_lookup: int = 2000, n_raw: int = 5000
) -> dict[str, Any]:
    from punchthrough.lab.redis import RedisServer, redis_available

    out: dict[str, Any] = {
        "how": "loopback, one process (client and relays share the event loop, asyncio); Redis "
        "is a real redis-server (no persistence) on 127.0.0.1; registrations are sequential "
        "real RelayClient registrations (QUIC handshake + RelayRegister, answered after the "
        "directory write); lookups are sequential RelayLookups at relay r1 for peers homed on "
        "r2 (answered from the directory)",
        "memory": {
            "relay": asyncio.run(_relay_side("memory", n_reg, n_lookup)),
            "raw": asyncio.run(_raw_ops("memory", n_raw)),
        },
    }
    if redis_available():
        with RedisServer() as redis:
            out["redis"] = {
                "relay": asyncio.run(_relay_side(redis.url, n_reg, n_lookup)),
                "raw": asyncio.run(_raw_ops(redis.url, n_raw)),
            }
    return out


if __name__ == "__main__":
    import json
    import sys

    which = sys.argv[1] if len(sys.argv) > 1 else "directory"
    if which == "failover":
        print(
            json.dumps(
                bench_fleet_failover_sim(int(sys.argv[2]) if len(sys.argv) > 2 else 200), indent=2
            )
        )
    else:
        print(json.dumps(bench_fleet_directory(), indent=2))


_GENERATOR = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[4])
from relay_load import offer_load
r = asyncio.run(offer_load((sys.argv[1], int(sys.argv[2])), int(sys.argv[3]), int(sys.argv[3]) * 2))
print(json.dumps({"sent": r.sent, "delivered": r.delivered, "elapsed": r.elapsed}))
"""


def bench_fleet_cores(max_relays: int = 2) -> dict[str, Any]:
    """Forwarded packets/s of N relay processes against one: each relay driven by its own load
    generator process (``relay_load.offer_load``: two registered clients, 160-byte frames),
    offered rate per relay raised until a relay loses more than 1 %."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    out: dict[str, Any] = {
        "how": "N relay processes (asyncio) on loopback, one generator process per relay, all "
        f"on this machine's {os.cpu_count()} cores: the generators compete with the relays for "
        "CPU, so N > cores/2 cannot scale here; figure = summed forwarded frames/s at the "
        "highest offered rate where every relay lost <= 1 %"
    }
    for n in range(1, max_relays + 1):
        ports = []
        procs = []
        for _ in range(n):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "punchthrough", "relay", "--listen",
                     f"127.0.0.1:{ports[-1]}", "--pps", "1000000", "--bps", "1000000000",
                     "--stats-interval", "0", "--no-uvloop"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        try:
            time.sleep(1.5)
            best = 0.0
            runs = []
            for per_relay in (5_000, 10_000, 15_000, 20_000, 25_000, 30_000, 40_000):
                argv = [sys.executable, "-c", _GENERATOR, "127.0.0.1"]
                gens = [
                    subprocess.Popen(
                        [*argv, str(p), str(per_relay), here], stdout=subprocess.PIPE, text=True
                    )
                    for p in ports
                ]
                results = [json.loads(g.communicate(timeout=120)[0]) for g in gens]
                total = sum(r["delivered"] / r["elapsed"] for r in results)
                worst = max(1 - r["delivered"] / r["sent"] for r in results)
                runs.append({"offered_per_relay": per_relay, "forwarded_pps_total": round(total),
                             "worst_loss": round(worst, 4)})  # fmt: skip
                if worst > 0.01:
                    break
                best = max(best, total)
            out[f"relays_{n}"] = {"max_forwarded_pps_under_1pct_loss": round(best), "runs": runs}
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    return out
