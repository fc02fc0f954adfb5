"""Which transport carries each relay registration: UDP first, TLS/WebSocket when UDP does
not answer, back to UDP when it does (happy eyeballs, RFC 8305's idea for relay transports).

The decisions are a small sans-IO state machine, :class:`~.relayrace.TransportRace` (one
registration attempt: inputs are "started", "answered", "failed" and the clock; outputs are
actions; the timing constants live there too). :class:`RelayLinks` carries them out for the
endpoint's :class:`~.relays.RelaySet` and runs the two watchers a relay with stream transports
needs:

* **Registration** (bind, and every re-registration): UDP first. If it has not registered
  within :func:`fallback_wait` (two measured RTTs to that relay, at least
  :data:`MIN_FALLBACK_WAIT`), or fails sooner, TLS and WebSocket links open in parallel; the
  first to open registers and the others are cancelled (registrations of one peer id displace
  each other at the relay, so only one ever runs). A relay that lists no UDP address starts on
  its streams at once.
* **Back to UDP** (:data:`UDP_PROBE_INTERVAL`): while on a stream, a STUN Binding to the
  relay's UDP address from the main socket; when one is answered, a UDP registration is made
  and swapped in, and the stream closed. UDP has no head-of-line blocking, and its mapping is
  the one direct paths are punched from.
* **UDP stops mid-call** (:data:`WATCH_INTERVAL`): while on UDP, the registration is watched
  for silence: frames sent but nothing received for :data:`SILENCE` (a call at 50 pps hears
  its peer every 20 ms), or a NAT keepalive unanswered. Then one STUN probe
  (:func:`probe_timeout`: three RTTs); unanswered, the streams race and the winner is swapped
  in. The relay key, hence the relay path, stays the same: the end-to-end QUIC connection
  never notices anything but a gap.

Swapping is make-before-break: the new registration replaces the old one at the relay (same
peer id, so the relay closes the old control connection with ``REPLACED``), and only then is the
old client closed; ``RelaySet`` knows a swapped-out client from one that was taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from punchthrough.endpoint.relayrace import (
    PROBE_TIMEOUT,
    SILENCE,
    UDP_PROBE_INTERVAL,
    WATCH_INTERVAL,
    Action,
    Cancel,
    GiveUp,
    Keep,
    Start,
    Transport,
    TransportRace,
    fallback_wait,
    probe_timeout,
)
from punchthrough.endpoint.relayspec import RelayEntry
from punchthrough.identity import Identity
from punchthrough.netio import Address
from punchthrough.relay import RelayClient, RelayError
from punchthrough.relay.stream import StreamLink, StreamTarget, open_link, proxy_for
from punchthrough.stun import StunClient, StunError
from punchthrough.transport.demux import DatagramMux

log = logging.getLogger(__name__)


# -- carrying it out -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TransportChange:
    """The relay path of ``relay`` moved to ``transport`` at loop time ``at``, and why."""

    at: float
    relay: Address
    transport: Transport
    reason: str

    def to_json(self, origin: float) -> dict[str, object]:
        return {
            "at_ms": round((self.at - origin) * 1000.0, 1),
            "relay": f"{self.relay[0]}:{self.relay[1]}",
            "transport": str(self.transport),
            "reason": self.reason,
        }


async def _discard(result: RelayClient | StreamLink) -> None:
    if isinstance(result, RelayClient):
        await result.close()
    else:
        result.close()


def transport_of(client: RelayClient) -> Transport:
    return Transport(client.transport)


ConnectUdp = Callable[[Address], Awaitable[RelayClient]]


@dataclass
class _Relay:
    entry: RelayEntry
    rtt: float | None = None
    task: asyncio.Task[None] | None = None
    streams: dict[Transport, StreamTarget] = field(default_factory=dict)


class RelayLinks:
    """The transports of every relay with stream transports; see the module docstring."""

    def __init__(
        self,
        entries: dict[Address, RelayEntry],
        identity: Identity,
        *,
        connect_udp: ConnectUdp,
        stun: StunClient,
        relay_timeout: float,
        nat_keepalive: float,
        proxy: str | None,
        current: Callable[[Address], RelayClient | None],
        swap: Callable[[Address, RelayClient], None],
        is_closed: Callable[[], bool],
        on_network: Callable[[str], None] = lambda _reason: None,
    ) -> None:
        """``on_network(reason)``: UDP to a relay works again (re-gather: direct paths may be
        possible now, and the NAT summary no longer says UDP is blocked)."""
        self._loop = asyncio.get_running_loop()
        self._identity = identity
        self._connect_udp = connect_udp
        self._stun = stun
        self._relay_timeout = relay_timeout
        self._nat_keepalive = nat_keepalive
        self._proxy = proxy
        self._current = current
        self._swap = swap
        self._is_closed = is_closed
        self._on_network = on_network
        self._relays: dict[Address, _Relay] = {}
        for key, entry in entries.items():
            r = _Relay(entry)
            for target in entry.streams:
                kind = Transport.TLS if target.kind == "tls" else Transport.WEBSOCKET
                r.streams.setdefault(kind, target)
            self._relays[key] = r
        #: Moves in progress: the new registration replaces the old one at the relay before
        #: we swap, so the old client may close (``REPLACED``) first; its supervisor waits here.
        self._moving: dict[Address, asyncio.Future[RelayClient | None]] = {}
        #: Background closes (kept referenced until done).
        self._background: set[asyncio.Task[None]] = set()
        #: Every transport the relays' registrations moved to, in order (the first is the
        #: bind's choice).
        self.changes: list[TransportChange] = []

    def handles(self, key: Address) -> bool:
        """Whether ``key`` is a relay with stream transports (otherwise: plain UDP)."""
        r = self._relays.get(key)
        return r is not None and bool(r.streams)

    def udp_unanswered(self) -> bool:
        """Every relay we are registered with carries us over TCP although it lists a UDP
        address: UDP was tried and did not answer (a relay listing no UDP proves nothing)."""
        keys = [k for k in self._relays if self._current(k) is not None]
        return bool(keys) and all(
            self._relays[k].entry.udp is not None and self.transport(k) is not Transport.UDP
            for k in keys
        )

    def transport(self, key: Address) -> Transport | None:
        client = self._current(key)
        return transport_of(client) if client is not None else None

    # -- one registration: the race --------------------------------------------------------------
    async def connect(
        self, key: Address, *, udp: bool = True, why: str | None = None
    ) -> RelayClient:
        """Register with relay ``key`` over the first transport that answers (see module).
        ``udp=False``: streams only, because ``why`` (UDP stopped answering).

        UDP answers by registering; a stream answers by opening its link (TCP, TLS, upgrade),
        and only the first link to open registers: registrations of one peer id displace
        each other at the relay, so two must never run at once.
        """
        r = self._relays[key]
        race = TransportRace(
            udp=udp and r.entry.udp is not None,
            streams=tuple(r.streams),
            wait=fallback_wait(r.rtt),
        )
        tasks: dict[asyncio.Task[RelayClient | StreamLink], Transport] = {}
        started = self._loop.time()
        winner: RelayClient | StreamLink | None = None
        reason = ""

        def run(actions: list[Action]) -> None:
            nonlocal reason
            for action in actions:
                if isinstance(action, Start):
                    for t in action.transports:
                        tasks[self._loop.create_task(self._open(key, r, t))] = t
                elif isinstance(action, Cancel):
                    for task, t in tasks.items():
                        if t in action.transports and not task.done():
                            task.cancel()
                elif isinstance(action, Keep | GiveUp):
                    reason = action.reason

        run(race.start(self._loop.time()))
        try:
            while not race.done:
                pending = {t for t in tasks if not t.done()}
                deadline = race.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._loop.time())
                done: set[asyncio.Task[RelayClient | StreamLink]] = set()
                if pending:
                    done, _ = await asyncio.wait(
                        pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                else:
                    await asyncio.sleep(timeout or 0)
                now = self._loop.time()
                for task in done:
                    t = tasks[task]
                    if task.cancelled():
                        run(race.failed(t, "cancelled", now))
                        continue
                    exc = task.exception()
                    if exc is not None:
                        run(race.failed(t, str(exc) or type(exc).__name__, now))
                    elif winner is None:
                        winner = task.result()
                        run(race.registered(t, now))
                        if t is Transport.UDP:
                            r.rtt = (now - started) / 2  # QUIC handshake + register: ~2 RTT
                    else:
                        await _discard(task.result())  # a late second answer
                run(race.poll(now))
        finally:
            losers = [t for t in tasks if not t.done()]
            for task in losers:
                task.cancel()
            for task in losers:
                with contextlib.suppress(BaseException):
                    await _discard(await task)
        if winner is None:
            raise RelayError(f"relay {key[0]}:{key[1]}: no transport answered ({reason})")
        client = winner if isinstance(winner, RelayClient) else await self._register(key, r, winner)
        if why is not None:
            reason = f"{why}; {client.transport} answered first"
        self._record(key, transport_of(client), reason)
        return client

    async def _open(self, key: Address, r: _Relay, t: Transport) -> RelayClient | StreamLink:
        if t is Transport.UDP:
            return await self._connect_udp(key)
        target = r.streams[t]
        return await open_link(
            target,
            pin=r.entry.pin,
            proxy=proxy_for(target.host, self._proxy),
            timeout=self._relay_timeout,
        )

    async def _register(self, key: Address, r: _Relay, link: StreamLink) -> RelayClient:
        """Register over an open link; the client and the link end together."""
        mux = DatagramMux(link)
        try:
            client = await RelayClient.connect(
                mux,
                link.remote,
                self._identity,
                timeout=self._relay_timeout,
                relay_peer_id=r.entry.pin,
                nat_keepalive=self._nat_keepalive,
            )
        except BaseException:
            mux.close()
            link.close()
            raise

        def lost(why: str) -> None:
            log.info("relay %s:%d: %s link lost: %s", *key, link.kind, why)
            self._spawn(client.close())

        link.on_lost(lost)

        async def cleanup() -> None:
            await client.wait_closed()
            mux.close()
            link.close()

        self._spawn(cleanup())
        return client

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _record(self, key: Address, transport: Transport, reason: str) -> None:
        self.changes.append(TransportChange(self._loop.time(), key, transport, reason))
        log.info("relay %s:%d on %s: %s", *key, transport, reason)

    async def moved(self, key: Address, old: RelayClient) -> RelayClient | None:
        """``old`` (relay ``key``) closed: the client that took its place if it was moved to
        another transport (waiting for a move in progress), else None (it was lost)."""
        fut = self._moving.get(key)
        if fut is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(fut)
        current = self._current(key)
        if current is not None and current is not old and not current.closed:
            return current
        return None

    async def _move(self, key: Address, register: Callable[[], Awaitable[RelayClient]]) -> bool:
        """Register by ``register()`` and swap it in; False if it failed."""
        fut: asyncio.Future[RelayClient | None] = self._loop.create_future()
        self._moving[key] = fut
        new: RelayClient | None = None
        try:
            new = await register()
            if self._is_closed():
                await new.close()
                return False
            old = self._current(key)
            self._swap(key, new)
            if old is not None and old is not new:
                self._spawn(old.close())
            return True
        finally:
            if self._moving.get(key) is fut:
                del self._moving[key]
            fut.set_result(new)

    # -- after a registration: the watchers ------------------------------------------------------
    def registered(self, key: Address, client: RelayClient) -> None:
        """``client`` is now the registration of ``key``: watch it (see module docstring)."""
        r = self._relays.get(key)
        if r is None or not r.streams:
            return
        if r.task is not None and r.task is not asyncio.current_task():
            r.task.cancel()
        if transport_of(client) is Transport.UDP:
            r.task = self._loop.create_task(self._watch_udp(key, r, client))
        elif r.entry.udp is not None:
            r.task = self._loop.create_task(self._probe_udp(key, r, client))
        else:
            r.task = None

    async def _probe_udp(self, key: Address, r: _Relay, client: RelayClient) -> None:
        """On a stream: STUN to the relay's UDP address; when it answers, move back."""
        assert r.entry.udp is not None
        while not client.closed and not self._is_closed():
            await asyncio.sleep(UDP_PROBE_INTERVAL)
            if client.closed or self._is_closed():
                return
            try:
                await self._stun.binding(r.entry.udp, timeout=PROBE_TIMEOUT)
            except (StunError, OSError, TimeoutError):
                continue
            if client.closed or self._is_closed():
                return
            try:
                if await self._move(key, functools.partial(self._timed_udp, key, r)):
                    self._record(key, Transport.UDP, "UDP answers again")
                    self._on_network(f"relay {key[0]}:{key[1]} answers over UDP again")
                    return
            except (RelayError, OSError) as exc:
                log.info("relay %s:%d answers STUN on UDP but did not register us: %s", *key, exc)

    async def _watch_udp(self, key: Address, r: _Relay, client: RelayClient) -> None:
        """On UDP: silence while sending, or an unanswered keepalive -> probe -> streams."""
        last = client.stats
        quiet_since = self._loop.time()
        while not client.closed and not self._is_closed():
            await asyncio.sleep(WATCH_INTERVAL)
            now = self._loop.time()
            stats = client.stats
            heard = stats["frames_received"] > last["frames_received"]
            sending = stats["frames_sent"] > last["frames_sent"]
            missed = stats["nat_keepalives_unanswered"] > last["nat_keepalives_unanswered"]
            last = stats
            if heard or not sending:
                quiet_since = now
            if not missed and now - quiet_since < SILENCE:
                continue
            if await client.refresh(probe_timeout(r.rtt)) is not None:
                quiet_since = self._loop.time()
                last = client.stats
                continue
            try:
                if await self._move(key, functools.partial(self._streams_instead, key)):
                    return
            except (RelayError, OSError) as exc:
                log.info("relay %s:%d: UDP silent and no stream registered: %s", *key, exc)
            quiet_since = self._loop.time()

    async def _timed_udp(self, key: Address, r: _Relay) -> RelayClient:
        """A UDP registration; its time (QUIC handshake + register: ~2 RTT) gives the RTT."""
        started = self._loop.time()
        client = await self._connect_udp(key)
        r.rtt = (self._loop.time() - started) / 2
        return client

    async def _streams_instead(self, key: Address) -> RelayClient:
        return await self.connect(key, udp=False, why="UDP to the relay stopped answering")

    async def close(self) -> None:
        """Stop the watchers (the registrations are closed by their owner; their links
        follow)."""
        tasks = [r.task for r in self._relays.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
