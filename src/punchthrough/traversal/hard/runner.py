"""Runs the race's hard-stage actions: sockets, sends and one clock per attempt.

The race (:mod:`punchthrough.traversal.race`) decides when an attempt starts, which socket won
and which attempt was beaten; this module only carries that out: it opens an attempt's
sockets, runs its role (:mod:`.birthday`, :mod:`.prediction`: plans from
:mod:`punchthrough.traversal.hardnat` turned into loop time), closes every socket on every
path, and reports back (``socket_opened``, ``note``, ``attempt_ended``). An attempt waits on
one event with one timeout: a stop (won, beaten, call over) or a delivered probe wakes it at
once; nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.signal import Message
from punchthrough.stun import StunClient
from punchthrough.transport.demux import PacketKind, classify
from punchthrough.traversal.checks import CheckEngine
from punchthrough.traversal.hardnat.prediction import SequentialProbe
from punchthrough.traversal.race import (
    Race,
    Reason,
    Stage,
    Why,
)

log = logging.getLogger(__name__)

#: One microsecond of slack on every wait: a deadline computed as start + offset may round to
#: just above the loop time that a timer for it fires at.
TIME_SLACK: Final = 1e-6


class StageHost(Protocol):
    """What the hard stages need from their connection's agent (checks, sockets, control)."""

    base: Address
    engine: CheckEngine

    @property
    def network(self) -> Network: ...

    def owd(self) -> float: ...

    def send_control(self, msg: Message) -> None: ...

    def probe(self, local: Address, remote: Address, kind: str) -> None: ...

    def adopt_socket(self, local: Address, sock: DatagramSocket) -> None: ...

    def forget_socket(self, local: Address) -> None: ...

    def handle_stun(self, data: bytes, local: Address, remote: Address) -> None: ...

    def quic_on_extra(self, data: bytes, addr: Address) -> None: ...

    def attempt_ended(self, attempt: int, why: Reason) -> None: ...


@dataclass
class Attempt:
    """One role of one hard stage, as the executor sees it (its sockets and its clock)."""

    id: int
    stage: Stage
    sockets: dict[int, DatagramSocket] = field(default_factory=dict)
    by_local: dict[Address, int] = field(default_factory=dict)
    winner: int | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    done: bool = False
    beaten: bool = False
    #: Mutual prediction: the peer's fresh samples (its HardNatProbe).
    peer_probe: SequentialProbe | None = None


class Runner:
    """The hard-stage attempts of one connection: their sockets, waits and reports (module
    docstring); :class:`~.executor.HardStages` adds the dispatch of the race's actions."""

    def __init__(self, host: StageHost, race: Race) -> None:
        self.host = host
        self.race = race
        self.loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._attempts: dict[int, Attempt] = {}
        self._closed = False
        self.rng = random.Random(random.getrandbits(64))

    def new_attempt(self, attempt: int, stage: Stage) -> Attempt:
        a = Attempt(attempt, stage)
        self._attempts[attempt] = a
        return a

    def close(self) -> None:
        """The call is over: stop every attempt, close every socket (winners' too)."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for a in self._attempts.values():
            a.winner = None
            self.release(a, keep_winner=False)
            a.wake.set()

    @property
    def open_sockets(self) -> int:
        return sum(len(a.sockets) for a in self._attempts.values())

    # -- what the roles use ----------------------------------------------------------------
    def release(self, a: Attempt, *, keep_winner: bool = True) -> None:
        """Stop an attempt and close its sockets (the winner's stays: it carries the path)."""
        a.done = True
        for idx, sock in list(a.sockets.items()):
            if not (keep_winner and idx == a.winner):
                self.close_socket(a, idx, sock)

    def ended(self, a: Attempt, code: Why, text: str) -> None:
        """The role is over without a win (the race ignores it if it won or was beaten)."""
        self.host.attempt_ended(a.id, Reason(code, text))

    def close_socket(self, a: Attempt, idx: int, sock: DatagramSocket) -> None:
        a.sockets.pop(idx, None)
        local = next((loc for loc, i in a.by_local.items() if i == idx), None)
        if local is not None:
            self.host.forget_socket(local)
        with contextlib.suppress(OSError):
            sock.close()

    async def bind(self, a: Attempt, idx: int, client: StunClient | None = None) -> Address:
        """Socket ``idx`` of ``a``: its checks and any path on it belong to ``a``'s stage."""
        sock = await self.host.network.bind(self.host.base[0], 0)
        a.sockets[idx] = sock
        local = sock.local_address
        a.by_local[local] = idx
        self.race.socket_opened(a.id, local)
        sock.set_receiver(self.receiver(local, client))
        self.host.adopt_socket(local, sock)
        return local

    def receiver(
        self, local: Address, client: StunClient | None
    ) -> Callable[[bytes, Address], None]:
        host = self.host

        def receive(data: bytes, addr: Address) -> None:
            kind = classify(data)
            if kind is PacketKind.STUN:
                if client is not None and client.handle_datagram(data, addr):
                    return
                host.handle_stun(data, local, addr)
            elif kind in (PacketKind.QUIC_SHORT, PacketKind.QUIC_LONG):
                host.quic_on_extra(data, addr)
            else:
                self.race.stats["extra_socket_dropped"] += 1

        return receive

    async def wait(self, a: Attempt, until: float | None) -> None:
        """Sleep until loop time ``until``, or until the attempt is stopped or woken."""
        if a.done:
            return
        left = None if until is None else max(0.0, until - self.loop.time()) + TIME_SLACK
        a.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(a.wake.wait(), left)

    # -- plumbing --------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("hard-NAT stage failed", exc_info=task.exception())
            self.race.stats["hardnat_errors"] += 1
