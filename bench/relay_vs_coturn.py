"""Relay forwarding: our relay against coturn's TURN relay, same machine, same load, one core.

Both servers run on loopback pinned to CPU 1 (``taskset``; coturn with ``--relay-threads 1``),
the load generators on CPU 0, so the server's CPU is its own. Load: 160-byte messages.

- coturn: ``turnserver --lt-cred-mech --user u:p --realm r`` (TURN, not -S) on 127.0.0.1, loaded
  by ``turnutils_uclient -y -c -m SESSIONS -n MSGS -l 160 -z INTERVAL``: client-to-client, each
  session's messages go client -> coturn -> (its relay port) -> (the peer's relay port) ->
  coturn -> peer client as ChannelData. Per delivered message coturn receives 2 datagrams and
  sends 2 (client side + relay side); this is TURN's design, not a measurement artefact.
- ours: ``punchthrough relay`` (asyncio, then uvloop) loaded by two registered RelayClients
  sending DATA frames A -> B at coturn's achieved message rate (same count): 1 datagram in and
  1 out per delivered message.

Measured per trial: messages delivered, the server's CPU seconds (utime+stime of its process from
/proc/PID/stat, all threads, sampled right before and after the load), messages/s over the load
period, and CPU microseconds per delivered message. The figure to read is the CPU ratio at the
same load; uclient itself tops out at a few thousand messages/s here, so coturn's maximum rate is
NOT measured (ours is, in relay.json).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SERVER_CPU = "1"
LOAD_CPU = "0"
PAYLOAD = 160  # bytes: a voice frame, as in relay.json
SESSIONS = 50
MSGS_PER_SESSION = 400
INTERVAL_MS = 2
TRIALS = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 10.0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds (proc(5) fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_udp(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        out = subprocess.run(["ss", "-H", "-uln"], capture_output=True, text=True).stdout
        if f"127.0.0.1:{port} " in out:
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _uclient_totals(text: str) -> tuple[int, int, int]:
    """(sent, received, transmit seconds) from uclient's final report lines."""
    sent = recv = secs = -1
    for m in re.finditer(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$", text, re.M):
        sent, recv = int(m.group(1)), int(m.group(2))
    m2 = re.search(r"Total transmit time is (\d+)", text)
    if m2:
        secs = int(m2.group(1))
    return sent, recv, secs


def coturn_trials(trials: int) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-coturn-"))
    port = _free_port()
    argv = [
        "taskset", "-c", SERVER_CPU,
        "turnserver", "-n", "--lt-cred-mech", "--user", "u:p", "--realm", "r",
        "-L", "127.0.0.1", "--relay-ip", "127.0.0.1", "--listening-port", str(port),
        "--min-port", "52000", "--max-port", "52999", "--relay-threads", "1",
        "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--no-stdout-log",
        "--log-file", str(tmp / "turn.log"), "--pidfile", str(tmp / "turn.pid"),
        "--userdb", str(tmp / "turn.db"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out: list[dict[str, Any]] = []
    try:
        _wait_udp(port, proc)
        uclient = [
            "taskset", "-c", LOAD_CPU, "turnutils_uclient", "-y", "-c",
            "-m", str(SESSIONS), "-n", str(MSGS_PER_SESSION), "-l", str(PAYLOAD),
            "-z", str(INTERVAL_MS), "-u", "u", "-w", "p", "-p", str(port), "127.0.0.1",
        ]  # fmt: skip
        for _ in range(trials):
            c0 = cpu_seconds(proc.pid)
            t0 = time.perf_counter()
            res = subprocess.run(
                uclient,
                capture_output=True,
                text=True,
                timeout=120,
            )
            wall = time.perf_counter() - t0
            cpu = cpu_seconds(proc.pid) - c0
            sent, recv, secs = _uclient_totals(res.stdout + res.stderr)
            out.append(
                {
                    "sent": sent,
                    "delivered": recv,
                    "transmit_s_uclient": secs,
                    "process_wall_s": round(wall, 3),
                    "pps": round(recv / secs) if secs > 0 else None,
                    "server_cpu_s": round(cpu, 3),
                    "cpu_us_per_msg": round(cpu / recv * 1e6, 2) if recv > 0 else None,
                }
            )
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


async def _our_load(relay: tuple[str, int], pid: int, pps: float, total: int) -> dict[str, Any]:
    from relay_load import offer_load

    c0 = 0.0

    def start() -> None:
        nonlocal c0
        c0 = cpu_seconds(pid)

    # settle: registration traffic is over before the CPU window opens
    r = await offer_load(relay, pps, total, payload_size=PAYLOAD, settle=0.2, on_start=start)
    cpu = cpu_seconds(pid) - c0
    return {
        "sent": r.sent,
        "delivered": r.delivered,
        "load_s": round(r.elapsed, 3),
        "pps": round(r.delivered / r.elapsed),
        "server_cpu_s": round(cpu, 3),
        "cpu_us_per_msg": round(cpu / r.delivered * 1e6, 2) if r.delivered else None,
        "note_cpu_window": "includes 0.3 s idle tail (QUIC keepalives only)",
    }


def ours_trials(flag: str, pps: float, total: int, trials: int) -> list[dict[str, Any]]:
    port = _free_port()
    argv = [
        "taskset", "-c", SERVER_CPU, sys.executable, "-m", "punchthrough", "relay",
        "--listen", f"127.0.0.1:{port}", "--pps", "1000000", "--bps", "1000000000",
        "--stats-interval", "0", flag,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_udp(port, proc)
        os.sched_setaffinity(0, {int(LOAD_CPU)})
        try:
            return [
                asyncio.run(_our_load(("127.0.0.1", port), proc.pid, pps, total))
                for _ in range(trials)
            ]
        finally:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    finally:
        _stop(proc)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    vals = [r["cpu_us_per_msg"] for r in runs if r["cpu_us_per_msg"] is not None]
    pps = [r["pps"] for r in runs if r["pps"] is not None]
    return {
        "trials": len(runs),
        "runs": runs,
        "cpu_us_per_msg_median": statistics.median(vals) if vals else None,
        "pps_median": statistics.median(pps) if pps else None,
        "loss": round(
            1 - sum(r["delivered"] for r in runs) / max(1, sum(r["sent"] for r in runs)), 4
        ),
    }


def bench_relay_vs_coturn(trials: int = TRIALS) -> dict[str, Any]:
    if shutil.which("turnserver") is None or shutil.which("turnutils_uclient") is None:
        return {"skipped": "coturn (turnserver, turnutils_uclient) not installed"}
    if (os.cpu_count() or 1) < 2:
        return {"skipped": "needs 2 CPUs (server and load generator pinned apart)"}
    coturn = _summary(coturn_trials(trials))
    pps = float(coturn["pps_median"] or 2000)
    total = SESSIONS * MSGS_PER_SESSION
    ours = {
        name: _summary(ours_trials(flag, pps, total, trials))
        for name, flag in (("asyncio", "--no-uvloop"), ("uvloop", "--uvloop"))
    }
    c = coturn["cpu_us_per_msg_median"]
    return {
        "how": __doc__,
        "payload_bytes": PAYLOAD,
        "messages_per_trial": total,
        "coturn": {
            "load": f"turnutils_uclient -y -c -m {SESSIONS} -n {MSGS_PER_SESSION} "
            f"-l {PAYLOAD} -z {INTERVAL_MS}",
            **coturn,
        },
        "ours": {"offered_pps": round(pps), **ours},
        "cpu_ratio_ours_over_coturn": {
            k: (v["cpu_us_per_msg_median"] / c if c and v["cpu_us_per_msg_median"] else None)
            for k, v in ours.items()
        },
        "datagrams_per_delivered_message": {"coturn": 4, "ours": 2},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_relay_vs_coturn(1), indent=2))
