"""Against an independent ICE stack: aioice (aiortc's ICE) and ours, same lab hosts, same NATs.

Per NAT pair, one lab (two hosts, each behind its own router with that profile; routers delayed
so the peers' RTT is RTT_MS on every path), with our STUN server and relay and a coturn TURN
server (`turnserver --lt-cred-mech --user u:p --realm r` on 198.51.100.12:3490, relay addresses
on the same IP) on the public segment. Per trial, conntrack is flushed on both routers, then:

- ours: `listen --echo` / `connect --json` (the matrix's lab backend): ``path``, ``direct_ms``
  (first verified direct check, from the caller process's loop start) and ``strategy``;
- aioice: bench/aioice_peer.py in each host namespace (controlling = host a). Each peer gathers
  host, server-reflexive (our STUN server 198.51.100.1:3478) and relayed (coturn TURN)
  candidates, exchanges them through files, then runs aioice's connectivity checks. Reported:
  the nominated pair's candidate types (``path`` direct unless one side is a TURN relay
  candidate), ``total_ms`` from the peer process's loop start to connected (gathering, the
  file exchange and the checks) and ``connect_ms`` (the checks alone).

ICE has no port prediction nor birthday attack, so on symmetric NATs aioice either falls back to
TURN or (when a peer-reflexive candidate happens to work) connects direct; that is the contrast.
Not every pair is run by default (see PAIRS); trials per pair are few (TRIALS).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from punchthrough.lab import addresses as A

RTT_MS = 50.0
TRIALS = 2
DURATION_S = 1.5
PPS = 50.0
TURN = (A.COTURN2_PRIMARY, 3490)
STUN = (A.OUR_STUN_PRIMARY, A.STUN_PORT)
#: A subset covering each row of the DESIGN table's interesting cells (cone/cone, cone/symmetric
#: sequential and random, symmetric/symmetric, open/symmetric).
PAIRS = [
    ("eim-eif", "eim-eif"),
    ("eim-apdf", "eim-apdf"),
    ("eim-adf", "eim-apdf"),
    ("eim-apdf", "apdm-sequential"),
    ("eim-apdf", "apdm-random"),
    ("open", "apdm-random"),
    ("apdm-random", "apdm-random"),
]
PEER_SCRIPT = Path(__file__).with_name("aioice_peer.py")
PEER_TIMEOUT = 60.0


def _turn_argv(workdir: Path) -> list[str]:
    return [
        "turnserver", "-n", "--lt-cred-mech", "--user", "u:p", "--realm", "r",
        "-L", TURN[0], "--relay-ip", TURN[0], "--listening-port", str(TURN[1]),
        "--min-port", "49152", "--max-port", "49999", "--no-tls", "--no-dtls", "--no-cli",
        "--no-stdout-log", "--log-file", str(workdir / "turn-bench.log"),
        "--pidfile", str(workdir / "turn-bench.pid"), "--userdb", str(workdir / "turn-bench.db"),
    ]  # fmt: skip


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return {"error": f"no JSON: {text[-300:]!r}"}


def _aioice_trial(cell: Any, trial: int) -> dict[str, Any]:
    lab = cell.lab
    ha, hb = lab.hosts
    for h in (ha, hb):
        h.router_run(["conntrack", "-F"], check=False)
    d = lab.workdir / f"ice-{trial}"
    d.mkdir()
    procs = []
    for h, role, me, other in ((ha, "controlling", "a", "b"), (hb, "controlled", "b", "a")):
        argv = [
            sys.executable, str(PEER_SCRIPT), role,
            "--stun", f"{STUN[0]}:{STUN[1]}", "--turn", f"{TURN[0]}:{TURN[1]}",
            "--out", str(d / f"{me}.json"), "--in", str(d / f"{other}.json"),
        ]  # fmt: skip
        procs.append(
            h.popen(argv, name=f"aioice-{role}-{trial}", stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE)
        )  # fmt: skip
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=PEER_TIMEOUT)
            res = _last_json(out.decode())
            if "error" in res and err:
                res["stderr"] = err.decode()[-300:]
        except subprocess.TimeoutExpired:
            p.kill()
            p.communicate()
            res = {"error": "peer timed out"}
        results.append(res)
    a, b = results
    return {
        "path": a.get("path") if "connect_ms" in a else None,
        "pair_types": [a.get("local_type"), a.get("remote_type")],
        "gather_ms": a.get("gather_ms"),
        "connect_ms": a.get("connect_ms"),
        "total_ms": a.get("total_ms"),
        "echo_rtt_ms": a.get("echo_rtt_ms"),
        "local_types": [a.get("local_types"), b.get("local_types")],
        "error": a.get("error") or b.get("error"),
        "controlled_path": b.get("path"),
    }


def _ours_trial(cell: Any, trial: int) -> dict[str, Any]:
    from punchthrough.lab import LabError

    try:
        c = cell.call(trial)
    except LabError as e:
        return {"error": str(e)[-300:]}
    return {
        "path": c.get("path"),
        "strategy": c.get("strategy"),
        "connected_ms": c.get("connected_ms"),
        "direct_ms": c.get("direct_ms"),
        "frames_lost": c.get("frames_lost"),
        "call_rtt_p50_ms": (c.get("rtt_ms") or {}).get("p50"),
    }


def _med(xs: list[Any]) -> float | None:
    vals = sorted(float(x) for x in xs if isinstance(x, int | float))
    return vals[len(vals) // 2] if vals else None


def bench_aioice_lab(
    pairs: list[tuple[str, str]] = PAIRS, trials: int = TRIALS, rtt_ms: float = RTT_MS
) -> dict[str, Any]:
    from punchthrough.lab.proc import udp_listening, wait_until
    from punchthrough.matrix.lab import LabCell

    rows = []
    for a, b in pairs:
        t0 = time.monotonic()
        with LabCell(a, b, DURATION_S, PPS, rtt_ms or None) as cell:
            lab = cell.lab
            assert lab.workdir is not None
            turn = lab.spawn(lab.pub_ns, _turn_argv(lab.workdir), name="turn-bench")
            try:
                wait_until(
                    lambda ns=lab.pub_ns: udp_listening(ns, *TURN), timeout=10, what="coturn TURN"
                )
                ours = [_ours_trial(cell, t) for t in range(trials)]
                theirs = [_aioice_trial(cell, t) for t in range(trials)]
            finally:
                lab.stop(turn)
        rows.append(
            {
                "a": a,
                "b": b,
                "trials": trials,
                "ours_direct": sum(1 for r in ours if r.get("path") == "direct"),
                "aioice_direct": sum(1 for r in theirs if r.get("path") == "direct"),
                "aioice_connected": sum(1 for r in theirs if r.get("path") is not None),
                "ours_direct_ms_median": _med([r.get("direct_ms") for r in ours]),
                "ours_connected_ms_median": _med([r.get("connected_ms") for r in ours]),
                "aioice_total_ms_median": _med([r.get("total_ms") for r in theirs]),
                "aioice_checks_ms_median": _med([r.get("connect_ms") for r in theirs]),
                "ours": ours,
                "aioice": theirs,
                "wall_s": round(time.monotonic() - t0, 1),
            }
        )
    return {"how": __doc__, "rtt_ms": rtt_ms, "pairs_run": len(rows), "cells": rows}


if __name__ == "__main__":
    print(json.dumps(bench_aioice_lab([("eim-apdf", "eim-apdf")], 1), indent=2))
