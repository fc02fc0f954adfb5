"""`make bench`: benchmarks that write JSON to bench/results/ (figures as ratios, with trials).

What is measured today (the foundation issue):

- ``stun_codec.json``: decode and encode of a Binding response, ours against aioice's codec, in
  one process (so the figure that matters is the ratio).
- ``classifier.json``: classify_port_allocation calls per second on 6-sample sequences.
- ``relay.json``: our relay's forwarding rate on loopback, as a separate process (asyncio and
  uvloop), driven by two registered clients in this process sending 160-byte frames in paced
  bursts; the figure is frames forwarded per second at the highest offered rate with < 1% loss.
- ``netcheck_lab.json`` (root only): wall time of a full netcheck behind each kernel NAT profile,
  against coturn's turnutils_natdiscovery (mapping + filtering only) for the same NAT,
  and whether both classified it the same way.
- ``relay_vs_coturn.json`` (bench/relay_vs_coturn.py): our relay (asyncio and uvloop) against
  coturn's TURN relay at the same message rate, server pinned to one core: CPU per message.
- ``birthday.json`` (bench/birthday.py): birthday-attack success over seeded trials of the pure
  model against 1 - exp(-n*m/N) with Wilson intervals; CPU and heap per attempt.
- ``hardnat_sim.json`` (bench/hardnat_sim.py): the hard-NAT stages end to end in the simulator
  (real endpoints, relay, QUIC, virtual time): port prediction vs a sequential NAT at background
  churn 0/1/5/10 flows/s, the birthday attack at n=256 and m=256/512/1024 against
  1 - exp(-n*m/R), success with Wilson intervals and p50/p95 time to direct; CPU and heap of one
  attempt.
- ``connect_lab.json`` (root; bench/connect_lab.py): time to the relayed connection, first echo
  and direct path for a cone pair in the lab at a stated RTT (NFQUEUE router delay), against the
  round trips needed.
- ``attack.json`` (bench/attack.py): the relay under the issue-12 floods on loopback (junk
  Initials 3,000/s, 370-attribute STUN requests 1,000/s): registration time and a 50 pps relayed
  call's frame loss, against no attack.
- ``forged_frames.json`` (bench/forged_frames.py): the per-frame cost of the frame-token check
  in the relay's hot path, and (root) a call under 10,000/s forged-source SEND and DATA frames.
- ``relay_saturation.json`` (bench/relay_saturation.py): forwarding at saturation, server pinned
  to one core, against coturn in the same run (asyncio, uvloop, the fast path): packets/s per
  core and CPU-s per million packets; 1 vs 2 relay processes; 500 paced calls x 50 pps.
- ``relay_memory.json`` (bench/relay_memory.py): the relay's heap (tracemalloc, simulator) under
  12,000 half-open QUIC Initials with Retry on load and never, and per registered client.
- ``fleet_failover_sim.json`` (bench/fleet.py): a relay fleet in the simulator, the relay
  carrying a relayed call dies: p50/p95 recovery and frames lost over 200 seeded trials.
- ``fleet_directory.json`` (bench/fleet.py): one relay's registrations/s and lookups/s with the
  directory in a real redis-server vs in memory, lookup latency p50/p95, raw directory ops/s.
- ``fleet_cores.json`` (bench/fleet.py): forwarded packets/s of N relay processes (one per
  core) against one, each driven by its own load generator process.
- ``ipv6_sim.json`` (bench/ipv6_sim.py): IPv6 in the simulator, 200 trials per cell: random NATs
  on both sides with IPv6 stateful firewalls (direct over IPv6?), the same pair IPv4 only, and
  IPv6-only calling IPv4-only through the dual-stack relay.
- ``aioice_lab.json`` (root; bench/aioice_lab.py): aioice against ours on the same lab hosts,
  every UDP NAT pair (``--aioice-subset``: 7 of them): which pairs each gets direct, how fast.

- ``relay_stream.json`` (bench/relay_stream.py): relay CPU per forwarded message over TLS and
  WebSocket against UDP (same load, server pinned to one core), and a loopback call whose UDP
  to the relay is blocked mid-call (time to the stream, gap, frames lost; 10 runs).
- ``relay_stream_lab.json`` (root; bench/relay_stream_lab.py): time to a usable call behind
  udp-blocked against a UDP caller over RTT 0/50/100 ms, and the mid-call UDP block in the lab
  (10 runs).

Each JSON holds trial counts and a ``how`` text saying how it was measured.
`--only NAME[,NAME]` runs a subset (``hardnat`` is short for ``hardnat_sim``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Short names accepted by ``--only`` (``--only hardnat`` runs ``hardnat_sim``).
ALIASES: dict[str, str] = {"hardnat": "hardnat_sim"}


def _env() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _rate(fn: Callable[[], object], min_time: float = 0.5) -> float:
    """Calls per second, measured over at least ``min_time`` seconds."""
    n = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(200):
            fn()
        n += 200
        el = time.perf_counter() - t0
        if el >= min_time:
            return n / el


def bench_stun_codec() -> dict[str, Any]:
    from aioice import stun as aio

    from punchthrough.stun import (
        Message,
        MessageClass,
        Method,
        Software,
        XorMappedAddress,
        decode_message,
        encode,
    )

    msg = Message(
        Method.BINDING,
        MessageClass.SUCCESS_RESPONSE,
        attributes=[XorMappedAddress(("203.0.113.7", 40000)), Software("bench")],
    )
    data = encode(msg, fingerprint=True)
    runs = []
    for _ in range(5):
        runs.append(
            {
                "ours_decode_per_s": _rate(lambda: decode_message(data), 0.3),
                "aioice_decode_per_s": _rate(lambda: aio.parse_message(data), 0.3),
                "ours_encode_per_s": _rate(lambda: encode(msg, fingerprint=True), 0.3),
            }
        )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {
        "trials": len(runs),
        "median": med,
        "decode_ratio_ours_over_aioice": med["ours_decode_per_s"] / med["aioice_decode_per_s"],
        "message_bytes": len(data),
        "note": "ours validates more (FINGERPRINT, duplicate and length rules) than aioice",
    }


def bench_classifier() -> dict[str, Any]:
    from punchthrough.nat import classify_port_allocation

    rng = random.Random(1)
    seqs = {
        "sequential": [40000 + k for k in range(6)],
        "churned": [40000, 40001, 40004, 40005, 40006, 40011],
        "random": [rng.randint(1024, 65535) for _ in range(6)],
    }
    return {
        name: {"calls_per_s": _rate(lambda s=s: classify_port_allocation(s), 0.3)}
        for name, s in seqs.items()
    }


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _relay_rate(relay: tuple[str, int], offered_pps: int, seconds: float) -> dict[str, Any]:
    from relay_load import offer_load

    r = await offer_load(relay, offered_pps, int(offered_pps * seconds))
    return {
        "offered_pps": offered_pps,
        "sent": r.sent,
        "forwarded": r.delivered,
        "loss": round(1 - r.delivered / r.sent, 4),
        "achieved_pps": round(r.delivered / r.elapsed),
    }


def bench_relay() -> dict[str, Any]:
    import asyncio
    import subprocess

    out: dict[str, Any] = {}
    for loop_name, flag in (("asyncio", "--no-uvloop"), ("uvloop", "--uvloop")):
        port = _free_udp_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "punchthrough",
                "relay",
                "--listen",
                f"127.0.0.1:{port}",
                "--pps",
                "1000000",
                "--bps",
                "1000000000",
                "--stats-interval",
                "0",
                flag,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)  # start-up (imports); registration retries cover the rest
            runs = []
            for offered in (10_000, 20_000, 25_000, 30_000, 35_000, 40_000, 50_000, 60_000, 80_000):
                r = asyncio.run(_relay_rate(("127.0.0.1", port), offered, 2.0))
                runs.append(r)
                if r["loss"] > 0.01:
                    break
            ok = [r for r in runs if r["loss"] <= 0.01]
            out[loop_name] = {
                "runs": runs,
                "max_pps_under_1pct_loss": max((r["achieved_pps"] for r in ok), default=0),
            }
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    out["note"] = (
        "relay and load generator share this machine's 2 cores; the load generator is itself "
        "Python/asyncio and may be the bottleneck at the top rates"
    )
    return out


def bench_netcheck_lab(trials: int) -> dict[str, Any]:
    from punchthrough.lab import PROFILE_NAMES, PROFILES, Lab
    from punchthrough.lab import addresses as A
    from punchthrough.lab.natdiscovery import run_natdiscovery

    rows: dict[str, Any] = {}
    with Lab(PROFILE_NAMES) as lab:
        argv = [sys.executable, "-m", "punchthrough", "netcheck", "--json", "--timeout", "2"]
        for host, port in lab.stun_servers():
            argv += ["--stun", f"{host}:{port}"]
        for name in PROFILE_NAMES:
            if not PROFILES[name].udp:
                continue
            h = lab.host(name)
            ours_ms, ours_wall, theirs_wall, agree = [], [], [], []
            for _ in range(trials):
                t0 = time.perf_counter()
                res = h.run(argv, timeout=60, check=True)
                ours_wall.append(time.perf_counter() - t0)
                report = json.loads(res.stdout)
                ours_ms.append(report["duration_ms"])
                t0 = time.perf_counter()
                nd = run_natdiscovery(h.ns, A.COTURN_PRIMARY, local_ip=h.ip)
                theirs_wall.append(time.perf_counter() - t0)
                agree.append((report["mapping"], report["filtering"]) == (nd.mapping, nd.filtering))
            rows[name] = {
                "trials": trials,
                "netcheck_duration_ms_median": statistics.median(ours_ms),
                "netcheck_process_wall_s_median": statistics.median(ours_wall),
                "natdiscovery_process_wall_s_median": statistics.median(theirs_wall),
                "wall_ratio_ours_over_natdiscovery": statistics.median(ours_wall)
                / statistics.median(theirs_wall),
                "agreement": f"{sum(agree)}/{trials}",
                "note": "netcheck also measures port allocation and hairpinning; "
                "natdiscovery only mapping and filtering",
            }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--trials", type=int, default=3, help="lab trials per profile")
    ap.add_argument("--only", default="", help="comma-separated benchmark names to run")
    ap.add_argument(
        "--aioice-subset",
        action="store_true",
        help="aioice on a 7-pair subset (aioice_lab.PAIRS) instead of every UDP NAT pair",
    )
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import aioice_lab
    import attack
    import birthday
    import connect_lab
    import fleet
    import forged_frames
    import hardnat_sim
    import ipv6_sim
    import relay_memory
    import relay_saturation
    import relay_stream
    import relay_stream_lab
    import relay_vs_coturn

    args.out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("stun_codec", bench_stun_codec),
        ("classifier", bench_classifier),
        ("relay", bench_relay),
        ("relay_vs_coturn", relay_vs_coturn.bench_relay_vs_coturn),
        ("birthday", birthday.bench_birthday),
        ("hardnat_sim", hardnat_sim.bench_hardnat_sim),
        ("ipv6_sim", ipv6_sim.bench_ipv6_sim),
        ("attack", lambda: attack.bench_attack(_free_udp_port())),
        ("relay_memory", relay_memory.bench_relay_memory),
        ("relay_saturation", relay_saturation.bench_relay_saturation),
        ("forged_frames", forged_frames.bench_forged_frames),
        ("fleet_failover_sim", fleet.bench_fleet_failover_sim),
        ("fleet_directory", fleet.bench_fleet_directory),
        ("fleet_cores", fleet.bench_fleet_cores),
        ("relay_stream", relay_stream.bench_relay_stream),
    ]
    if os.geteuid() == 0:
        jobs.append(("netcheck_lab", lambda: bench_netcheck_lab(args.trials)))
        jobs.append(("connect_lab", connect_lab.bench_connect_lab))
        jobs.append(("relay_stream_lab", relay_stream_lab.bench_relay_stream_lab))
        pairs = aioice_lab.PAIRS
        if not args.aioice_subset:
            from itertools import combinations_with_replacement

            from punchthrough.lab import PROFILE_NAMES, PROFILES

            udp = [p for p in PROFILE_NAMES if PROFILES[p].udp]
            pairs = list(combinations_with_replacement(udp, 2))
        jobs.append(("aioice_lab", lambda: aioice_lab.bench_aioice_lab(pairs)))
    else:
        print("not root: skipping the lab benchmarks", file=sys.stderr)
    if args.only:
        wanted = {ALIASES.get(n, n) for n in args.only.split(",")}
        unknown = wanted - {name for name, _ in jobs}
        if unknown:
            ap.error(f"unknown or unavailable benchmarks: {sorted(unknown)}")
        jobs = [(n, j) for n, j in jobs if n in wanted]
    for name, job in jobs:
        print(f"bench {name} ...", file=sys.stderr, flush=True)
        result = {"benchmark": name, "env": _env(), "results": job()}
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["results"], indent=2))
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
