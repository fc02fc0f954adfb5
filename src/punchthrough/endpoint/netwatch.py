"""The network watch: notice that our network changed, cheaply, and re-gather when it did.

The endpoint keeps its NAT bindings alive (each relay client's STUN keepalive, every
``config.nat_keepalive``) and watches for a changed network:

- the set of local addresses, every ``nat_keepalive`` (a new address, a lost one: Wi-Fi to
  cellular, a DHCP renumbering, a link that went down and came back);
- a relay that sees us at a new address (NAT reboot or rebinding, a new network behind the same
  private address) or answers again after unanswered keepalives (the network came back);
- a send error on the main socket (:class:`WatchedSocket`), or a direct path a connection's
  monitor found dead: these only make the endpoint look now (addresses, a keepalive to each
  relay), they change nothing alone.

A change runs :meth:`NetworkWatch.network_changed`: a QUIC PING to every relay (the
registration follows our new address), a re-gather, a new candidate generation, and every
connection's ``CandidateUpdate`` plus new checks (``TraversalAgent.local_candidates_changed``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Final

from punchthrough.netio import Address, DatagramReceiver, DatagramSocket
from punchthrough.relay import RelayClient
from punchthrough.traversal.host import AgentHandle
from punchthrough.traversal.local import LocalCandidates

log = logging.getLogger(__name__)

#: Hints that the network may have changed (a send error, a dead direct path) make the endpoint
#: look at most this often: the relay clients re-send an unanswered keepalive every 0.5 s
#: (``relay.client.NAT_KEEPALIVE_RTO``), so looking more often learns nothing new.
SUSPECT_DEBOUNCE: Final = 0.5
#: How long a network-change re-gather waits for each relay's fresh STUN answer: the first
#: keepalive and one retransmission (``relay.client.NAT_KEEPALIVE_RTO``, 0.5 s) at Internet
#: round-trip times.
REFRESH_TIMEOUT: Final = 1.0


class WatchedSocket:
    """The main socket, with a hook on send errors (the kernel's ENETUNREACH, EADDRNOTAVAIL,
    ICMP errors: ``send_errors`` grows, or ``sendto`` raises). Everything else passes through."""

    def __init__(self, sock: DatagramSocket, on_error: Callable[[str], None]) -> None:
        self._sock = sock
        self._on_error = on_error
        self._errors = sock.send_errors

    @property
    def local_address(self) -> Address:
        return self._sock.local_address

    @property
    def closed(self) -> bool:
        return self._sock.closed

    @property
    def send_errors(self) -> int:
        return self._sock.send_errors

    def sendto(self, data: bytes, addr: Address) -> None:
        try:
            self._sock.sendto(data, addr)
        except OSError as exc:
            if not self._sock.closed:
                self._on_error(f"send to {addr[0]}:{addr[1]} failed: {exc}")
            raise
        errors = self._sock.send_errors
        if errors != self._errors:
            self._errors = errors
            self._on_error(f"send errors on the main socket ({errors})")

    def set_receiver(self, receiver: DatagramReceiver | None) -> None:
        self._sock.set_receiver(receiver)

    def close(self) -> None:
        self._sock.close()


class NetworkWatch:
    """Looks for network changes and re-gathers (coalesced) when one is seen."""

    def __init__(
        self,
        local: LocalCandidates,
        nat_keepalive: float,
        stats: Counter[str],
        *,
        relays: Mapping[Address, RelayClient],
        gather: Callable[[], Awaitable[object]],
        host_ips: Callable[[], list[str]],
        agents: Callable[[], Iterable[AgentHandle]],
        is_closed: Callable[[], bool],
    ) -> None:
        """``relays``: the live registrations. ``gather()`` re-collects ``local``.
        ``agents()``: every connection's agent, told of a new candidate generation."""
        self._loop = asyncio.get_running_loop()
        self._local = local
        self._nat_keepalive = nat_keepalive
        self._stats = stats
        self._relays = relays
        self._gather = gather
        self._host_ips = host_ips
        self._agents = agents
        self._is_closed = is_closed
        #: Local addresses last seen, hint debounce, re-gathers asked for and under way.
        self._last_ips: set[str] = set()
        self._last_suspect = -math.inf
        self._watch_task: asyncio.Task[None] | None = None
        self._bg_tasks: set[asyncio.Task[Any]] = set()
        self._regather_lock = asyncio.Lock()
        self._change_reasons: list[str] = []
        self._regathering = False
        #: ``(loop time, reason)`` of every network change acted upon (re-gathers).
        self.events: list[tuple[float, str]] = []

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The watch's own tasks (to cancel on close)."""
        tasks = list(self._bg_tasks)
        if self._watch_task is not None:
            tasks.append(self._watch_task)
        return tasks

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = self._loop.create_task(coro)
        self._bg_tasks.add(task)
        task.add_done_callback(self._bg_tasks.discard)

    def start(self) -> None:
        """Start watching our local addresses (from what they are now)."""
        self._last_ips = set(self._host_ips())
        if self._watch_task is None and not self._is_closed():
            self._watch_task = self._loop.create_task(self._watch())

    async def _watch(self) -> None:
        """Every ``nat_keepalive``: have our local addresses changed? (Cheap: no packet.)"""
        while not self._is_closed():
            await asyncio.sleep(self._nat_keepalive)
            changed = self._addresses_changed()
            if changed is not None:
                await self.network_changed(changed)

    def _addresses_changed(self) -> str | None:
        """What changed in our local addresses since last looked (``None``: nothing)."""
        ips = set(self._host_ips())
        if ips == self._last_ips:
            return None
        gone, new = sorted(self._last_ips - ips), sorted(ips - self._last_ips)
        self._last_ips = ips
        parts = ([f"new address {', '.join(new)}"] if new else []) + (
            [f"lost address {', '.join(gone)}"] if gone else []
        )
        return "local addresses changed: " + "; ".join(parts)

    def suspect(self, reason: str) -> None:
        """See :meth:`Endpoint.network_suspect`."""
        now = self._loop.time()
        if self._is_closed() or now - self._last_suspect < SUSPECT_DEBOUNCE:
            return
        self._last_suspect = now
        self._stats["network_suspicions"] += 1
        log.debug("checking the network: %s", reason)
        self._spawn(self._check())

    async def _check(self) -> None:
        changed = self._addresses_changed()
        if changed is not None:
            await self.network_changed(changed)
            return
        clients = [c for c in self._relays.values() if not c.closed]
        # A changed mapping or a relay answering again calls relay_event.
        await asyncio.gather(*(c.refresh(REFRESH_TIMEOUT) for c in clients))

    def relay_event(self, reason: str) -> None:
        """A relay client saw a change (new mapping, answers again): re-gather, unless a
        re-gather already under way covers it (it refreshes every relay first)."""
        if self._is_closed() or self._regathering:
            return
        self._spawn(self.network_changed(reason))

    def changed_soon(self) -> None:
        """Re-gather in a task of its own (a port mapping changed)."""
        if not self._is_closed():
            self._loop.create_task(self.network_changed())

    async def network_changed(self, reason: str = "network changed") -> None:
        """See :meth:`Endpoint.network_changed`."""
        if self._is_closed():
            return
        self._change_reasons.append(reason)
        async with self._regather_lock:
            if self._is_closed() or not self._change_reasons:
                return  # a re-gather that started after this call covered it
            reasons, self._change_reasons = self._change_reasons, []
            self._regathering = True
            try:
                clients = [c for c in self._relays.values() if not c.closed]
                for client in clients:
                    client.ping()
                await asyncio.gather(*(c.refresh(REFRESH_TIMEOUT) for c in clients))
                before = self._local.generation
                await self._gather()
                if self._local.generation == before:
                    self._local.generation += 1
            finally:
                self._regathering = False
            self._last_ips = set(self._host_ips())
            self._stats["regathers"] += 1
            text = "; ".join(dict.fromkeys(reasons))
            self.events.append((self._loop.time(), text))
            log.info("network changed (%s): candidate generation %d", text, self._local.generation)
            for agent in list(self._agents()):
                agent.local_candidates_changed()
