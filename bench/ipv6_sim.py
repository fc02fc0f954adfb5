"""IPv6 in the simulator: the issue's headline cells, many trials (``make bench`` style).

Usage: python bench/ipv6_sim.py [--trials 200] [--jobs 2] [--out bench/results/ipv6_sim.json]

Cells (seed 1, trial k uses seed 1_000_000 + k, 10 s calls at 50 frames/s, 40 ms direct RTT):

- apdm-random x apdm-random, both dual stack (IPv6 behind RFC 6092 stateful firewalls): how
  often direct over IPv6, frames lost, and how often the report says IPv4 alone would have
  stayed on the relay;
- apdm-random x apdm-random, IPv4 only: the same pair without IPv6 (relay-only by design);
- IPv6-only x IPv4-only (eim-apdf both): relayed through the dual-stack relay, frames lost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from punchthrough.matrix.model import trial_seed
from punchthrough.matrix.sim import one_way_ms
from punchthrough.scenario.call import run_call_scenario

HOW = (
    "bench/ipv6_sim.py: run_call_scenario per trial (the real endpoints, relay and QUIC in the "
    "simulator), seed 1 (trial k: 1000000+k), 10 s calls at 50 frames/s, direct RTT 40 ms; "
    "dual stack = IPv4 behind the NAT profile plus 2001:db8:n::2 behind an RFC 6092 stateful "
    "firewall on the same router; 2 worker processes"
)
CELLS: dict[str, tuple[str, str, tuple[str, str]]] = {
    "apdm-random x2, dual stack": ("apdm-random", "apdm-random", ("dual", "dual")),
    "apdm-random x2, IPv4 only": ("apdm-random", "apdm-random", ("ipv4", "ipv4")),
    "IPv6-only calls IPv4-only": ("eim-apdf", "eim-apdf", ("ipv6", "ipv4")),
}


def one(args: tuple[str, int]) -> dict[str, Any]:
    name, trial = args
    a, b, stacks = CELLS[name]
    out = run_call_scenario(
        a, b, seed=trial_seed(1, trial), duration=10.0, one_way_ms=one_way_ms(40.0), stacks=stacks
    )
    call = out["call"]
    t = call["traversal"]
    return {
        "cell": name,
        "path": call["path"],
        "family": call.get("family"),
        "frames_lost": call["frames_lost"],
        "frames_sent": call["frames_sent"],
        "direct_ms": call["direct_ms"],
        "ipv4_alone": t.get("ipv4_alone"),
    }


def bench_ipv6_sim(trials: int = 200, jobs: int = 2) -> dict[str, Any]:
    """The cells above, ``trials`` each (what ``make bench`` records in ipv6_sim.json)."""
    work = [(name, k) for name in CELLS for k in range(trials)]
    with ProcessPoolExecutor(jobs) as pool:
        rows = list(pool.map(one, work, chunksize=4))
    doc: dict[str, Any] = {"backend": "sim", "trials_per_cell": trials, "how": HOW, "cells": {}}
    for name in CELLS:
        mine = [r for r in rows if r["cell"] == name]
        times = [r["direct_ms"] for r in mine if r["direct_ms"] is not None]
        doc["cells"][name] = {
            "paths": dict(Counter(f"{r['path']}/{r['family']}" for r in mine)),
            "frames_lost": sum(r["frames_lost"] for r in mine),
            "frames_sent": sum(r["frames_sent"] for r in mine),
            "ipv4_alone": dict(Counter(str(r["ipv4_alone"]) for r in mine)),
            "p50_direct_ms": statistics.median(times) if times else None,
            "max_direct_ms": max(times) if times else None,
        }
    return doc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="bench/results/ipv6_sim.json")
    args = ap.parse_args()
    doc = {"benchmark": "ipv6_sim", "results": bench_ipv6_sim(args.trials, args.jobs)}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    json.dump(doc, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
