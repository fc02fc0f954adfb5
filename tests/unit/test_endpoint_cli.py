"""`listen` / `connect` as real processes over loopback, and their argument errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from punchthrough.cli.peer_cmd import standalone_app
from punchthrough.identity import Identity

CLI = [sys.executable, "-m", "punchthrough.cli.peer_cmd"]
#: Runs one relay on loopback and prints its address (the relay CLI is another module's).
RELAY_SCRIPT = """
import asyncio, sys
from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayServer
async def main():
    server = await RelayServer.start(UdpNetwork(), [("127.0.0.1", 0)])
    print("%s:%d" % server.addresses[0], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.close()
asyncio.run(main())
"""
runner = CliRunner()


def _ident(tmp_path: Path, name: str) -> tuple[Path, Identity]:
    ident = Identity.generate()
    path = tmp_path / name
    ident.save(path)
    return path, ident


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def relay() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", RELAY_SCRIPT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_listen_echo_and_connect_json(tmp_path: Path, relay: str) -> None:
    lkey, lid = _ident(tmp_path, "listener.key")
    ckey, cid = _ident(tmp_path, "caller.key")
    listener = subprocess.Popen(
        [
            *CLI,
            "listen",
            "--identity",
            str(lkey),
            "--relay",
            relay,
            "--echo",
            "--json",
            "--bind",
            "127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert listener.stdout is not None
        ready = json.loads(listener.stdout.readline())
        assert ready["event"] == "listening" and ready["peer_id"] == str(lid.peer_id)
        caller = subprocess.run(
            [
                *CLI,
                "connect",
                str(lid.peer_id),
                "--identity",
                str(ckey),
                "--relay",
                relay,
                "--duration",
                "1",
                "--pps",
                "50",
                "--json",
                "--bind",
                "127.0.0.1",
            ],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=30,
        )
        assert caller.returncode == 0, caller.stderr
        result = json.loads(caller.stdout)
        assert result["frames_sent"] == 50 and result["frames_lost"] == 0
        # both on loopback: the host candidates answer and the call moves off the relay
        assert result["path"] == "direct" and result["strategy"] == "hole-punch"
        assert [c["to"] for c in result["path_changes"]] == ["direct"]
        assert result["connected_ms"] <= result["direct_ms"]
        assert 0 < result["connected_ms"] <= result["first_echo_ms"]
        assert result["max_gap_ms"] is not None and "traversal" in result
        accepted = json.loads(listener.stdout.readline())
        # The acceptor checks from the dialer's early offer on: on loopback its checks may
        # succeed before the dialer's proof, and the held switch runs when the proof verifies,
        # so the call may already be direct when accept() returns.
        path = accepted["path"]
        assert path in ("relay", "direct")
        assert accepted == {"event": "accepted", "peer_id": str(cid.peer_id), "path": path}
        closed = json.loads(listener.stdout.readline())
        assert closed["event"] == "closed" and closed["reason"] == "echo session done"
        assert closed["stats"]["datagrams_received"] == 50
        listener.send_signal(signal.SIGTERM)
        out, err = listener.communicate(timeout=10)
        assert listener.returncode == 0, err
        assert json.loads(out.splitlines()[-1]) == {"event": "stopped"}
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def test_connect_to_unregistered_peer_exits_1(tmp_path: Path, relay: str) -> None:
    ckey, _ = _ident(tmp_path, "caller.key")
    nobody = Identity.generate().peer_id
    result = runner.invoke(
        standalone_app(),
        [
            "connect",
            str(nobody),
            "--identity",
            str(ckey),
            "--relay",
            relay,
            "--json",
            "--bind",
            "127.0.0.1",
            "--timeout",
            "3",
        ],
    )
    assert result.exit_code == 1
    assert "not registered" in json.loads(result.stdout.splitlines()[-1])["error"]


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    key, ident = _ident(tmp_path, "k.key")
    app = standalone_app()
    bad_peer = runner.invoke(
        app, ["connect", "pt1nope", "--identity", str(key), "--relay", "127.0.0.1:1"]
    )
    assert bad_peer.exit_code == 2
    no_relay = runner.invoke(app, ["connect", str(ident.peer_id), "--identity", str(key)])
    assert no_relay.exit_code == 2
    bad_relay = runner.invoke(app, ["listen", "--identity", str(key), "--relay", "relay:x"])
    assert bad_relay.exit_code == 2
    key.chmod(0o644)
    insecure = runner.invoke(app, ["listen", "--identity", str(key), "--relay", "127.0.0.1:9"])
    assert insecure.exit_code == 2


def test_dead_relay_exits_1(tmp_path: Path) -> None:
    key, ident = _ident(tmp_path, "k.key")
    result = runner.invoke(
        standalone_app(),
        [
            "connect",
            str(ident.peer_id),
            "--identity",
            str(key),
            "--relay",
            "127.0.0.1:9",
            "--bind",
            "127.0.0.1",
            "--timeout",
            "0.5",
        ],
    )
    assert result.exit_code == 1
    assert "connection failed" in result.stderr


LOOP = "127.0.0.1"


def test_connect_exits_3_when_more_frames_are_lost_than_max_loss(
    tmp_path: Path, relay: str
) -> None:
    """A listener without --echo holds the call but answers nothing: every frame is lost, which
    is a failed call (exit 3, the report still printed) unless --max-loss allows it."""
    lkey, lid = _ident(tmp_path, "listener.key")
    ckey, _ = _ident(tmp_path, "caller.key")
    listener = subprocess.Popen(
        [*CLI, "listen", "--identity", str(lkey), "--relay", relay, "--json", "--bind", LOOP],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        assert listener.stdout is not None
        assert json.loads(listener.stdout.readline())["event"] == "listening"
        argv = ["connect", str(lid.peer_id), "--identity", str(ckey), "--relay", relay]
        argv += ["--duration", "0.2", "--json", "--bind", LOOP]
        lossy = runner.invoke(standalone_app(), argv)
        assert lossy.exit_code == 3, lossy.output
        result = json.loads(lossy.stdout.splitlines()[-1])
        assert result["frames_sent"] == result["frames_lost"] == 10
        assert "lost 10 of 10 frames (100.0%), more than --max-loss 5%" in lossy.stderr
        tolerated = runner.invoke(standalone_app(), [*argv, "--max-loss", "100"])
        assert tolerated.exit_code == 0, tolerated.output
    finally:
        listener.terminate()
        try:
            listener.wait(10)
        except subprocess.TimeoutExpired:
            listener.kill()
            listener.wait()


def test_connect_timeouts_reach_the_endpoint_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--connect-timeout (alias --timeout) and --relay-timeout each set one EndpointConfig field,
    unchanged; nothing else decides a timeout for the call."""
    from punchthrough.cli import peer_cmd
    from punchthrough.endpoint import EndpointConfig, NoRelay

    seen: list[EndpointConfig] = []

    class _Endpoint:
        @staticmethod
        async def bind(*_: object, config: EndpointConfig, **__: object) -> None:
            seen.append(config)
            raise NoRelay("stopped here by the test")

    monkeypatch.setattr(peer_cmd, "Endpoint", _Endpoint)
    key, ident = _ident(tmp_path, "k.key")
    base = ["connect", str(ident.peer_id), "--identity", str(key), "--relay", "127.0.0.1:9"]
    for extra in (["--connect-timeout", "7"], ["--timeout", "7"]):
        result = runner.invoke(standalone_app(), [*base, *extra, "--relay-timeout", "0.3"])
        assert result.exit_code == 1 and "stopped here by the test" in result.stderr
    assert [(c.connect_timeout, c.relay_timeout) for c in seen] == [(7.0, 0.3), (7.0, 0.3)]
    default = runner.invoke(standalone_app(), base)
    assert default.exit_code == 1
    assert (seen[-1].connect_timeout, seen[-1].relay_timeout) == (10.0, 5.0)
