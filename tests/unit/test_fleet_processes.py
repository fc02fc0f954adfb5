"""A fleet of real relay processes (``punchthrough relay --relay-id --directory redis://``)
sharing a real redis-server on loopback: calls across relays, SIGKILL of the relay carrying a
call (the call continues on the same QUIC connection), SIGTERM drain, /metrics and /healthz."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from punchthrough.endpoint import Endpoint, EndpointConfig
from punchthrough.endpoint.relaymap import RelayInfo, RelayMap
from punchthrough.identity import Identity, PeerId
from punchthrough.lab.redis import RedisServer, free_tcp_port, redis_available
from punchthrough.transport.path import Path as QPath

pytestmark = pytest.mark.skipif(not redis_available(), reason="redis-server not installed")
RELAY_ONLY = EndpointConfig(direct=False)
HOST = "127.0.0.1"


@dataclass
class RelayProc:
    relay_id: str
    proc: subprocess.Popen[str]
    address: tuple[str, int]
    peer_id: PeerId
    metrics: int

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_relay(relay_id: str, url: str, tmp: Path) -> RelayProc:
    """A relay process; ports are probed free first, so a lost race is retried (bounded)."""
    errors = []
    for attempt in range(3):
        metrics = free_tcp_port()
        cfg = tmp / f"{relay_id}.toml"
        # the config file carries the fleet settings; the command line the rest
        cfg.write_text(
            f'relay_id = "{relay_id}"\ndirectory = "{url}"\nmetrics = "{HOST}:{metrics}"\n'
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        argv = [sys.executable, "-m", "punchthrough", "relay", "--listen", f"{HOST}:{port}"]
        argv += ["--config", str(cfg), "--json-stats", "--stats-interval", "0", "--no-uvloop"]
        log = tmp / f"{relay_id}-{attempt}.log"
        with log.open("w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if first:
            line = json.loads(first)
            assert line["event"] == "listening" and line["relay_id"] == relay_id
            host, _, port_text = line["addresses"][0].rpartition(":")
            addr = (host, int(port_text))
            return RelayProc(relay_id, proc, addr, PeerId.parse(line["peer_id"]), metrics)
        proc.wait(timeout=5)
        proc.stdout.close()
        errors.append(log.read_text()[-1000:])
    raise AssertionError(f"relay {relay_id} did not start: {errors}")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[RedisServer, list[RelayProc]]]:
    redis = RedisServer().start()
    relays: list[RelayProc] = []
    try:
        for i in range(3):
            relays.append(start_relay(f"r{i + 1}", redis.url, tmp_path))
        yield redis, relays
    finally:
        for r in relays:
            if r.alive():
                os.kill(r.proc.pid, signal.SIGKILL)
            r.proc.wait(timeout=5)
            if r.proc.stdout is not None:
                r.proc.stdout.close()
        redis.stop()


def relay_map(relays: list[RelayProc], skip: str | None = None) -> RelayMap:
    return RelayMap(
        RelayInfo(r.relay_id, (r.address,), r.peer_id) for r in relays if r.relay_id != skip
    )


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


def http_get(port: int, path: str) -> tuple[int, str]:
    with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=5) as resp:
        return resp.status, resp.read().decode()


async def _call_and_fail_over(relays: list[RelayProc], how: signal.Signals) -> dict[str, float]:
    a, b = Identity.generate(), Identity.generate()
    loop = asyncio.get_running_loop()
    async with Endpoint.bind(a, relay_map=relay_map(relays), config=RELAY_ONLY, host=HOST) as ea:
        mb = relay_map(relays, skip=ea.home_relay)
        async with Endpoint.bind(b, relay_map=mb, config=RELAY_ONLY, host=HOST) as eb:
            accept = asyncio.ensure_future(eb.accept())
            conn = await ea.connect(b.peer_id, timeout=5)  # by peer id alone, across relays
            inc = await asyncio.wait_for(accept, 5)
            victim = next(r for r in relays if r.relay_id == eb.home_relay)
            dead = QPath.relay(victim.address)
            assert conn.paths.current == dead
            got: list[float] = []

            async def receive() -> None:
                while True:
                    await inc.recv_datagram()
                    got.append(loop.time())

            rx = asyncio.ensure_future(receive())
            sent = 0

            async def send() -> None:
                nonlocal sent
                while True:
                    conn.send_datagram(sent.to_bytes(4, "big"))
                    sent += 1
                    await asyncio.sleep(0.02)  # 50 pps

            tx = asyncio.ensure_future(send())
            await wait_until(lambda: len(got) >= 10)
            killed_at = loop.time()
            os.kill(victim.proc.pid, how)
            await wait_until(lambda: eb.home_relay != victim.relay_id)
            await wait_until(
                lambda: (
                    bool(got)
                    and got[-1] > killed_at + 0.1
                    and conn.paths.current != dead
                    and inc.paths.current != dead
                )
            )
            recovered = min(t for t in got if t > killed_at)
            for name, ep in (("a", ea), ("b", eb)):
                for t, what in ep.fleet.events:  # type: ignore[union-attr]
                    print(name, round(t - killed_at, 3), what)
            gap = recovered - killed_at
            await asyncio.sleep(0.3)
            tx.cancel()
            await asyncio.sleep(0.2)
            rx.cancel()
            await asyncio.gather(tx, rx, return_exceptions=True)
            assert not conn.closed and not inc.closed  # the same end-to-end QUIC connection
            # moved as a path change under the live connection, not a new connection
            assert [(c["from"], c["to"]) for c in conn.path_changes][-1] == ("relay", "relay")
            assert ea.connections == [conn]
            if how == signal.SIGTERM:
                assert victim.proc.wait(timeout=10) == 0
            return {"recovery_s": gap, "lost": sent - len(got)}


async def test_sigkill_of_the_relay_carrying_a_call_the_call_continues(
    fleet: tuple[RedisServer, list[RelayProc]],
) -> None:
    _redis, relays = fleet
    result = await _call_and_fail_over(relays, signal.SIGKILL)
    print("sigkill failover", result)
    assert result["lost"] < 200  # only what was in flight while the failure was detected


async def test_sigterm_drains_and_the_call_continues(
    fleet: tuple[RedisServer, list[RelayProc]],
) -> None:
    _redis, relays = fleet
    result = await _call_and_fail_over(relays, signal.SIGTERM)
    print("drain failover", result)


async def test_metrics_and_healthz(fleet: tuple[RedisServer, list[RelayProc]]) -> None:
    redis, relays = fleet
    a = Identity.generate()
    async with Endpoint.bind(a, relay_map=relay_map(relays), config=RELAY_ONLY, host=HOST) as ea:
        home = next(r for r in relays if r.relay_id == ea.home_relay)
        status, text = await asyncio.to_thread(http_get, home.metrics, "/metrics")
        assert status == 200
        assert "# TYPE punchthrough_relay_clients gauge\npunchthrough_relay_clients 1" in text
        assert "punchthrough_relay_registrations_total 1" in text
        assert 'punchthrough_relay_frames_dropped_total{reason="rate"} 0' in text
        assert "process_cpu_seconds_total" in text
        status, text = await asyncio.to_thread(http_get, home.metrics, "/healthz")
        assert status == 200 and text.startswith("ok clients=1 relay_id=")
        # Redis down: still healthy (local clients are served), and the lookup failure counted
        redis.kill()
        with pytest.raises(Exception, match="directory unavailable"):
            await ea.connect(Identity.generate().peer_id, timeout=5)
        status, text = await asyncio.to_thread(http_get, home.metrics, "/healthz")
        assert status == 200 and "directory_errors=1" in text
