"""The traversal agent's one timer, against fakes of its connection and endpoint, on virtual time.

Regression (lab, 1 run in 12): a deadline that passed before the agent's timer ran, with a send
in the same loop iteration calling ``_rearm`` first, dropped out of the monitor's future
deadlines; every later send (50 packets/s) pushed the timer back again, so a dead direct path
was only abandoned when the call stopped sending, 9 s later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from punchthrough.netio import Address
from punchthrough.signal import Message
from punchthrough.sim import run
from punchthrough.transport.path import Path, PathManager
from punchthrough.traversal import CandidatePair, PairSucceeded, TraversalSettings
from punchthrough.traversal.agent import LocalCandidates, TraversalAgent
from punchthrough.traversal.hardnat.plan import Budget

BASE: Address = ("0.0.0.0", 40000)
PEER: Address = ("203.0.113.2", 40001)
RELAY: Address = ("198.51.100.20", 3478)


class FakeSock:
    local_address = BASE
    closed = False
    send_errors = 0

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Address]] = []

    def sendto(self, data: bytes, addr: Address) -> None:
        self.sent.append((data, addr))

    def set_receiver(self, receiver: Any) -> None:
        pass

    def close(self) -> None:
        pass


class FakeHost:
    def __init__(self) -> None:
        self.sock = FakeSock()
        self.local_candidates = LocalCandidates()
        self.network = None
        self.suspicions: list[str] = []

    def register_ufrag(self, ufrag: str, agent: object) -> None:
        pass

    def sample_servers(self) -> list[Address]:
        return []

    def network_suspect(self, reason: str) -> None:
        self.suspicions.append(reason)


class FakeConn:
    is_client = True

    def __init__(self, clock: Callable[[], float]) -> None:
        self.paths = PathManager(clock=clock)
        self.pings = 0

    def send_control(self, msg: Message) -> None:
        pass

    def add_control_handler(self, msg_type: type[Message], handler: Any) -> None:
        pass

    def change_connection_id(self) -> None:
        pass

    def quic_rtt(self) -> float | None:
        return 0.002

    def direct_packet(self, data: bytes, addr: Address) -> None:
        pass

    def ping(self) -> None:
        self.pings += 1

    def path_switched(self) -> None:
        pass


def test_a_send_right_after_a_passed_deadline_does_not_postpone_the_fallback() -> None:
    async def go() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        conn, host = FakeConn(loop.time), FakeHost()
        conn.paths.add(Path.relay(RELAY), lambda data: None)
        settings = TraversalSettings(budget=Budget(), nat_keepalive=2.0)
        agent = TraversalAgent(conn, host, b"b" * 32, settings)
        # the check engine reports a verified pair: the race moves the call onto it
        agent._run([PairSucceeded(CandidatePair(BASE, PEER, "srflx", 1))], loop.time())
        await asyncio.sleep(1.0)  # the upgrade's overlap and CID change are over
        assert conn.paths.kind == "direct"
        agent.sent()  # the first packet nothing answers: the monitor's clock starts
        loop._now += 1.0  # type: ignore[attr-defined]  # the process was busy for a second
        start = loop.time()
        fell_back_at = None
        for _ in range(50):  # media keeps flowing at 50 packets/s, a send first in line
            agent.sent()
            await asyncio.sleep(0.02)
            if fell_back_at is None and conn.paths.kind == "relay":
                fell_back_at = loop.time() - start
        agent.close()
        return {"fell_back_at": fell_back_at, "pings": conn.pings, "why": host.suspicions}

    out = run(go(), seed=1)
    assert out["fell_back_at"] is not None and out["fell_back_at"] < 0.05, out
    assert out["pings"] >= 1 and any("lost" in why for why in out["why"]), out
