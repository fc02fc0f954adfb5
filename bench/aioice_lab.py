"""Against an independent ICE stack: aioice (aiortc's ICE) and ours, same lab hosts, same NATs.

Per NAT pair, one lab (two hosts, each behind its own router with that profile; routers delayed
so the peers' RTT is RTT_MS on every path), with our STUN server and relay and a coturn TURN
server (`turnserver --lt-cred-mech --user u:p --realm r` on 198.51.100.12:3490, relay addresses
on the same IP) on the public segment. Per trial, conntrack is flushed on both routers, then:

- ours: `listen --echo` / `connect --json` (the matrix's lab backend): ``path``, ``direct_ms``
  (first verified direct check, from the caller process's loop start) and ``strategy``;
- aioice: bench/aioice_peer.py in each host namespace (controlling = host a). Each peer gathers
  host, server-reflexive (our STUN server 198.51.100.1:3478) and relayed (coturn TURN)
  candidates, exchanges them through files as an offer/answer (the controlled answerer starts
  its checks when it has the offer, the controlling offerer ``signal_ms`` = max(RTT,
  MIN_SIGNAL_MS) later, when the answer would reach it through a signalling server; see
  aioice_peer.py for why the lab needs that offset), then runs aioice's connectivity checks.
  Reported per trial: the nominated pair's candidate types on both sides (``pair_types``,
  ``controlled_pair_types``; ``path`` direct unless one side is a TURN relay candidate, and
  None unless *both* sides completed ICE),
  ``total_ms`` from "both peer processes up" (the later of their loop starts) to the
  controlling side connected (gathering, the exchange with signal_ms, the checks) and
  ``connect_ms`` (the checks alone, from the offerer's connect() call); the same for the
  controlled side (``controlled_*``); ``both_ms``, the later of the two ``total_ms``.

coturn is started with ``--denied-peer-ip 10.0.0.0-10.255.255.255`` (the lab's private LAN range,
as a production coturn denies private ranges). Without it aioice's TURN fallback never works:
aioice pairs its relayed candidate with the other peer's private host candidate (10.0.N.2) too,
so coturn's relay socket sends a check to 10.0.N.2; the public namespace has no route there, the
send fails with ENETUNREACH, and coturn marks the relay socket to be closed on any send error,
which deletes the whole allocation (log: "udp send: Network is unreachable", then "closed (2nd
stage) ... reason: general"), taking every relay pair down with it. Denied, the peer is refused
with 403 at ChannelBind and nothing is sent. (On the Internet such a packet is silently dropped.)

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
#: The lab hosts' private (LAN) range: never a valid TURN peer from the public segment.
DENIED_PEERS = "10.0.0.0-10.255.255.255"
PEER_SCRIPT = Path(__file__).with_name("aioice_peer.py")
PEER_TIMEOUT = 60.0
#: One-way signalling delay of the answer (offer/answer exchange). It must exceed 2 router delays
#: (= RTT / 2 here) to keep the peers' first checks from crossing inside the routers' delay
#: queues (aioice_peer.py); one RTT is used, 20 ms when the lab has no delay.
MIN_SIGNAL_MS = 20.0


def _turn_argv(workdir: Path) -> list[str]:
    # --denied-peer-ip: see the module docstring (coturn drops an allocation on a failed relay
    # send, and the public segment has no route to the hosts' private 10.x host candidates).
    # Logging goes to stdout, which Lab.spawn writes to <workdir>/turn-bench.log (a --log-file of
    # that same path would collide with it and coturn would date-suffix its own file).
    return [
        "turnserver", "-n", "--lt-cred-mech", "--user", "u:p", "--realm", "r",
        "-L", TURN[0], "--relay-ip", TURN[0], "--listening-port", str(TURN[1]),
        "--min-port", "49152", "--max-port", "49999", "--no-tls", "--no-dtls", "--no-cli",
        "--denied-peer-ip", DENIED_PEERS, "-v", "--log-file", "stdout",
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


def _aioice_trial(cell: Any, trial: int, signal_ms: float) -> dict[str, Any]:
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
            "--signal-ms", str(signal_ms),
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
    up = max(a.get("t0", 0.0), b.get("t0", 0.0))

    def since_up(r: dict[str, Any]) -> float | None:
        t = r.get("t_connected")
        return round((t - up) * 1000, 1) if isinstance(t, float) and up else None

    both = "connect_ms" in a and "connect_ms" in b
    return {
        # a trial counts as connected only when both sides completed ICE
        "path": a.get("path") if both else None,
        "pair_types": [a.get("local_type"), a.get("remote_type")],
        "controlled_pair_types": [b.get("local_type"), b.get("remote_type")],
        "gather_ms": a.get("gather_ms"),
        "connect_ms": a.get("connect_ms"),
        "controlled_connect_ms": b.get("connect_ms"),
        "total_ms": since_up(a),
        "controlled_total_ms": since_up(b),
        # both ends connected: the connection is usable in both directions from here
        "both_ms": max(since_up(a) or 0.0, since_up(b) or 0.0) if both else None,
        "echo_rtt_ms": a.get("echo_rtt_ms"),
        "local_types": [a.get("local_types"), b.get("local_types")],
        "error": a.get("error") or b.get("error") or a.get("echo_error"),
        "fail_ms": a.get("fail_ms") or b.get("fail_ms"),
        "controlling_path": a.get("path"),
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
                signal_ms = max(rtt_ms or 0.0, MIN_SIGNAL_MS)
                theirs = [_aioice_trial(cell, t, signal_ms) for t in range(trials)]
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
                "aioice_both_ms_median": _med([r.get("both_ms") for r in theirs]),
                "ours": ours,
                "aioice": theirs,
                "wall_s": round(time.monotonic() - t0, 1),
            }
        )
    return {
        "how": __doc__,
        "rtt_ms": rtt_ms,
        "signal_ms": max(rtt_ms or 0.0, MIN_SIGNAL_MS),
        "pairs_run": len(rows),
        "cells": rows,
    }


if __name__ == "__main__":
    print(json.dumps(bench_aioice_lab([("eim-apdf", "eim-apdf")], 1), indent=2))
