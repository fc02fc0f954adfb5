"""`relay --tcp-listen` and `connect --relay 'UDP,tls://...,id=...'` as real processes: a caller
whose relay UDP address never answers calls over TLS, and ``connect --json`` says so."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from punchthrough.identity import Identity

PY = sys.executable


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _free(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [PY, "-c", "from punchthrough.cli.app import main; main()", *args]


def test_connect_over_tls_when_the_relays_udp_is_silent(tmp_path: Path) -> None:
    env = _env()
    lkey, ckey = tmp_path / "l.key", tmp_path / "c.key"
    listener_id = Identity.generate()
    listener_id.save(lkey)
    Identity.generate().save(ckey)
    procs: list[subprocess.Popen[str]] = []
    # a UDP port where nothing answers: the caller's "blocked" UDP route to the relay
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    try:
        relay = subprocess.Popen(
            _cli("relay", "--listen", f"127.0.0.1:{_free(socket.SOCK_DGRAM)}",
                 "--tcp-listen", f"127.0.0.1:{_free(socket.SOCK_STREAM)}",
                 "--json-stats", "--stats-interval", "0", "--no-uvloop"),
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        procs.append(relay)
        assert relay.stdout is not None
        up = json.loads(relay.stdout.readline())
        assert up["event"] == "listening" and len(up["tcp_addresses"]) == 1
        udp, tcp = up["addresses"][0], up["tcp_addresses"][0]
        listener = subprocess.Popen(
            _cli("listen", "--identity", str(lkey), "--relay", udp, "--echo", "--json",
                 "--bind", "127.0.0.1"),
            stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        procs.append(listener)
        assert listener.stdout is not None
        assert json.loads(listener.stdout.readline())["event"] == "listening"
        entry = (
            f"127.0.0.1:{sink.getsockname()[1]},tls://{tcp},wss://{tcp}/relay,id={up['peer_id']}"
        )
        caller = subprocess.run(
            _cli("connect", str(listener_id.peer_id), "--identity", str(ckey), "--relay", entry,
                 "--duration", "1", "--json", "--bind", "127.0.0.1"),
            capture_output=True, text=True, env=env, timeout=60,
        )  # fmt: skip
        assert caller.returncode == 0, caller.stderr
        result = json.loads(caller.stdout.splitlines()[-1])
        assert result["relay_transport"] in ("tls", "websocket")
        assert result["frames_lost"] == 0 and result["frames_sent"] == 50
        (change,) = result["relay_transport_changes"]
        assert change["at_ms"] < 0  # chosen at bind, before connect()
        assert "UDP unanswered after 250 ms" in result["relay_transport_reason"]
        relay_stage = result["traversal"]["relay_transport"]
        assert relay_stage["transport"] == result["relay_transport"]
        assert relay_stage["reason"] == result["relay_transport_reason"]
    finally:
        sink.close()
        for p in reversed(procs):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    final = json.loads(relay.stdout.read().splitlines()[-1]) if relay.stdout else {}
    assert final.get("event") == "final"
    assert final["stream_tls"] + final["stream_websocket"] >= 1
