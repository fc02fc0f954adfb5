"""A relay fleet from the endpoint's side: a home relay chosen by RTT, visits to the home
relays of the peers we call, failover, and moving relayed calls when a relay goes away.

The decisions are :class:`~punchthrough.endpoint.homing.HomePolicy`'s (sans-IO); this module
does the I/O: STUN probes to every relay of the :class:`~punchthrough.endpoint.relaymap.
RelayMap` (fast for relays in use, slow for the rest), registering and leaving through the
:class:`~punchthrough.endpoint.relays.RelaySet`, and directory lookups through the home relay.

Cross-relay calls (issue 14, option (a)): the dialer looks the peer up and registers with the
peer's home relay as a *visitor* (not published in the directory), then calls through it like
any relayed call: one relay hop, no relay-to-relay protocol. Why this and not relays forwarding
to each other: the README (relay fleet).

Failover: when a relay carrying calls dies (probes unanswered), drains or forgets the peer (an
"unknown destination" NOTICE on a live call), each affected connection looks its peer up again
(retrying while the directory still names the dead relay) and moves to the peer's current home
under the same QUIC connection: a path change, no handshake. Each side does this on its own; the
two directions may use different relays, which QUIC does not mind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Final

from punchthrough.endpoint.connection import Connection
from punchthrough.endpoint.errors import EndpointClosed, NoRelay, PeerLookupFailed, PeerUnreachable
from punchthrough.endpoint.homing import HomePolicy, HomingSettings
from punchthrough.endpoint.relaymap import RelayMap
from punchthrough.endpoint.relays import RelaySet
from punchthrough.identity import PeerId
from punchthrough.netio import Address
from punchthrough.relay import RelayClient, RelayCloseCode, RelayError, RelayLookupRefused
from punchthrough.stun import StunClient, StunError
from punchthrough.transport.path import Path

log = logging.getLogger(__name__)

#: The first round of probes (choosing the first home) waits at most this long: a relay that
#: has not answered by then ranks after those that did.
FIRST_PROBE_TIMEOUT: Final = 1.0
#: A probe's timeout: 3 smoothed RTTs, within [probe_interval, 1 s] (a far relay is slow, not
#: lost; and no probe may outlive the dead-relay decision by much).
PROBE_TIMEOUT_MAX: Final = 1.0
#: A call whose relay went away retries its lookup this often while the directory still names
#: the dead relay (the peer re-homes within ~1 s), for at most REROUTE_TIMEOUT.
REROUTE_RETRY: Final = 0.1
REROUTE_TIMEOUT: Final = 10.0
#: Bound on one lookup through the home relay (the relay bounds its directory at 0.5 s).
LOOKUP_TIMEOUT: Final = 2.0
#: Shortest sleep of the probe loop (a probe still outstanding when due is sent when it ends).
MIN_TICK: Final = 0.01
#: Fleet events kept for inspection (``RelayFleet.events``).
MAX_EVENTS: Final = 256
#: How a displacement is told (an endpoint's ``displaced`` reason starts with it).
DISPLACED: Final = "another endpoint with this identity registered with relay"
#: A visit no call has used for this long is left (its relay stops holding us).
VISIT_IDLE: Final = 30.0


class RelayFleet:
    """Our home relay and visits in a fleet; see the module docstring."""

    def __init__(
        self,
        relays: RelaySet,
        stun: StunClient,
        relay_map: RelayMap,
        stats: Counter[str],
        *,
        settings: HomingSettings | None = None,
        relay_timeout: float = 5.0,
        prefer: str | None = None,
        is_closed: Callable[[], bool],
        connections: Callable[[], list[Connection]],
        on_displaced: Callable[[str], None],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._relays = relays
        self._stun = stun
        self.map = relay_map
        self.policy = HomePolicy(relay_map.ids(), settings)
        self.settings = self.policy.settings
        self._stats = stats
        self.relay_timeout = relay_timeout
        if prefer is not None and relay_map.get(prefer) is None:
            raise NoRelay(f"preferred home relay {prefer!r} is not in the relay map")
        #: A home relay chosen by the operator (tried first at start; failover still by RTT).
        self.prefer = prefer
        self._is_closed = is_closed
        self._connections = connections
        self._on_displaced = on_displaced
        relays.pins.update({r.address: r.key for r in relay_map if r.key is not None})
        #: Our home relay's id (None before :meth:`start`).
        self.home: str | None = None
        #: Relay addresses we visit -> loop time a call last used them.
        self.visits: dict[Address, float] = {}
        #: ``(loop time, what happened)``: re-homes, relays lost, calls moved (the latest ones).
        self.events: deque[tuple[float, str]] = deque(maxlen=MAX_EVENTS)
        #: Loop time of each relay's last probe (the interval depends on whether it is in use).
        self._last_probe: dict[str, float] = {}
        self._probing: set[str] = set()
        self._joining: dict[Address, asyncio.Future[None]] = {}
        self._reroutes: dict[Connection, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        #: Another instance of our identity took our home registration: stop for good.
        self.displaced = False

    # -- state ----------------------------------------------------------------------------
    @property
    def home_address(self) -> Address | None:
        info = self.map.get(self.home) if self.home is not None else None
        return info.address if info is not None else None

    def _event(self, text: str) -> None:
        log.info("%s", text)
        self.events.append((self._loop.time(), text))

    def _spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- start, run, close ----------------------------------------------------------------
    async def start(self) -> None:
        """Probe every relay once, register with the nearest that takes us (then the next);
        :class:`NoRelay` if none does."""
        ids = self.map.ids()
        await asyncio.gather(*(self._probe(r, FIRST_PROBE_TIMEOUT) for r in ids))
        ranked = self.policy.ranked()
        errors: list[str] = []
        order = [*ranked, *(r for r in ids if r not in ranked)]
        if self.prefer is not None:
            order = [self.prefer, *(r for r in order if r != self.prefer)]
        for rid in order:
            try:
                await self._make_home(rid, "nearest relay")
                break
            except (RelayError, OSError) as exc:
                errors.append(f"{rid}: {exc}")
                self.policy.down(rid, self._loop.time())
        if self.home is None:
            raise NoRelay("no relay of the fleet registered us: " + "; ".join(errors))
        self._main = self._loop.create_task(self._run())

    async def _run(self) -> None:
        while not self._is_closed() and not self.displaced:
            now = self._loop.time()
            wake_at = now + self.settings.probe_interval
            for rid in self.map.ids():
                info = self.map.get(rid)
                in_use = info is not None and info.address in self.visits
                interval = self.policy.probe_due(rid, in_use)
                due = self._last_probe.get(rid, -1e9) + interval
                if rid in self._probing or now < due:
                    wake_at = min(wake_at, due)
                    continue
                self._last_probe[rid] = now
                wake_at = min(wake_at, now + interval)
                self._spawn(self._probe(rid))
            decision = self.policy.decide(now)
            if self.displaced:
                return
            if decision is not None and decision.to != self.home:
                await self._try_home(decision.to, decision.reason)
            elif self.home is not None and self._home_lost():
                # our registration is gone but the relay answers again (it restarted, or
                # nothing better is up): register there again
                await self._try_home(self.home, "registering again")
            await self._leave_idle_visits(now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(MIN_TICK, wake_at - self._loop.time())):
                    await self._wake.wait()

    def _home_lost(self) -> bool:
        addr = self.home_address
        client = self._relays.clients.get(addr) if addr is not None else None
        home = self.home
        return (
            (client is None or client.closed)
            and home is not None
            and not (self.policy.health[home].down)
        )

    async def _try_home(self, rid: str, reason: str) -> None:
        try:
            await self._make_home(rid, reason)
        except (RelayError, OSError) as exc:
            log.info("relay %s did not take us: %s", rid, exc)
            self.policy.down(rid, self._loop.time())  # until a probe is answered again

    async def close(self) -> None:
        tasks = [*self._tasks, *self._reroutes.values()]
        if self._main is not None:
            tasks.append(self._main)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- probes ---------------------------------------------------------------------------
    async def _probe(self, rid: str, timeout: float | None = None) -> None:
        info = self.map.get(rid)
        if info is None:
            return
        if timeout is None:
            srtt = self.policy.health[rid].srtt
            timeout = min(PROBE_TIMEOUT_MAX, max(self.settings.probe_interval, 3 * (srtt or 0.2)))
        self._probing.add(rid)
        try:
            result = await self._stun.binding(info.address, timeout=timeout)
        except (StunError, OSError):
            self.policy.loss(rid, self._loop.time())
            self._stats["relay_probes_lost"] += 1
            if self.policy.health[rid].down:
                self._relay_down(rid, "probes unanswered")
        else:
            self.policy.rtt(rid, result.rtt, self._loop.time())
        finally:
            self._probing.discard(rid)

    def _relay_down(self, rid: str, why: str) -> None:
        """``rid`` stopped answering: the home moves (the run loop decides now), a visit ends
        and its calls move."""
        info = self.map.get(rid)
        if info is None:
            return
        if rid == self.home:
            self._wake.set()
        elif info.address in self.visits:
            self._spawn(self._drop_visit(info.address, why))

    async def _drop_visit(self, addr: Address, why: str) -> None:
        self.visits.pop(addr, None)
        await self._relays.leave(addr)
        self._lost(addr, why)

    # -- registrations --------------------------------------------------------------------
    async def _make_home(self, rid: str, reason: str) -> None:
        info = self.map.get(rid)
        assert info is not None
        addr = info.address
        client = self._relays.clients.get(addr)
        if client is not None and not client.closed:
            if client.visitor:
                await client.make_home(timeout=self.relay_timeout)
        else:
            await self._join(addr, visitor=False)
        old, self.home = self.home, rid
        self.visits.pop(addr, None)
        self.policy.homed(rid, self._loop.time())
        self._stats["relay_homes"] += 1
        self._event(f"home relay {rid} ({reason})" + (f", was {old}" if old else ""))
        if old is not None and old != rid:
            old_info = self.map.get(old)
            if old_info is not None:
                # leave it: while we are registered there it keeps publishing itself as our
                # home, and the directory must name exactly one
                await self._relays.leave(old_info.address)
                self._lost(old_info.address, f"re-homed to {rid}")

    async def _join(self, addr: Address, *, visitor: bool) -> RelayClient:
        """Register with ``addr`` once, however many callers ask at the same moment."""
        pending = self._joining.get(addr)
        if pending is not None:
            await asyncio.shield(pending)
        client = self._relays.clients.get(addr)
        if client is not None and not client.closed:
            return client
        fut: asyncio.Future[None] = self._loop.create_future()
        self._joining[addr] = fut
        try:
            client = await self._relays.join(addr, visitor=visitor)
        finally:
            del self._joining[addr]
            fut.set_result(None)
        self._spawn(self._watch(addr, client))
        return client

    async def _watch(self, addr: Address, client: RelayClient) -> None:
        await client.wait_closed()
        if self._is_closed() or self._relays.clients.get(addr) is not client:
            return  # we left it
        del self._relays.clients[addr]
        info = self.map.by_address(addr)
        rid = info.id if info is not None else f"{addr[0]}:{addr[1]}"
        why = client.close_reason or "connection lost"
        if client.close_code == RelayCloseCode.REPLACED and rid == self.home:
            self.displaced = True  # never take it back: two instances would fight forever
            self._stats["relay_replaced"] += 1
            self._event(f"displaced: another instance of this identity registered with {rid}")
            self._on_displaced(f"{DISPLACED} {rid}; this one is no longer reachable")
            return
        self._stats["relay_lost"] += 1
        if info is not None:
            self.policy.down(info.id, self._loop.time())
        self._event(f"relay {rid} lost ({why})")
        self.visits.pop(addr, None)
        self._lost(addr, why)
        if rid == self.home:
            self._wake.set()

    async def visit(self, addr: Address) -> None:
        """Make sure we can send through ``addr`` (our home, or a visit)."""
        if addr == self.home_address:
            return
        self.visits[addr] = self._loop.time()
        await self._join(addr, visitor=True)

    async def _leave_idle_visits(self, now: float) -> None:
        used = {
            p.remote
            for c in self._connections()
            if not c.closed
            for p in c.paths.paths
            if p.kind == "relay"
        }
        for addr in list(self.visits):
            if addr in used:
                self.visits[addr] = now
            elif now - self.visits[addr] > VISIT_IDLE:
                del self.visits[addr]
                await self._relays.leave(addr)

    # -- lookups and moving calls ---------------------------------------------------------
    async def lookup(self, peer: PeerId) -> tuple[Address, ...]:
        """Where ``peer`` lives, asked of our home relay."""
        addr = self.home_address
        client = self._relays.clients.get(addr) if addr is not None else None
        if client is None or client.closed:
            raise NoRelay("not registered with a home relay (re-homing)")
        try:
            return await client.lookup(peer, timeout=LOOKUP_TIMEOUT)
        except RelayLookupRefused as exc:
            raise PeerLookupFailed(exc.code, exc.reason) from None
        except RelayError as exc:
            raise PeerLookupFailed(0, str(exc)) from None

    async def resolve(self, peer: PeerId, hint: str | None) -> Address:
        """The relay to call ``peer`` through (registered with it on return): the hinted
        relay, else the peer's home from the directory."""
        if hint is not None:
            info = self.map.get(hint)
            if info is None:
                raise PeerUnreachable(f"relay {hint!r} (from the peer address) is not in our map")
            target = info.address
            self._stats["lookups_skipped_hint"] += 1
        else:
            found = await self.lookup(peer)
            if not found:
                raise PeerUnreachable(f"peer {peer} is not registered with any relay of the fleet")
            target = found[0]
        if self._is_closed():
            raise EndpointClosed("endpoint closed")
        await self.visit(target)
        return target

    def _lost(self, addr: Address, why: str) -> None:
        """Relay ``addr`` can no longer carry our calls: move every call that uses it."""
        dead = Path.relay(addr)
        for conn in self._connections():
            if not conn.closed and conn.paths.has(dead):
                self.reroute(conn, addr, why)

    def peer_moved(self, relay: Address, peer: PeerId) -> None:
        """``relay`` says ``peer`` is not registered there (a NOTICE): move live calls to
        ``peer`` that go through it."""
        path = Path.relay(relay)
        for conn in self._connections():
            if conn.peer_id == peer and not conn.closed and conn.paths.current == path:
                self.reroute(conn, relay, "peer is no longer registered there")

    def reroute(self, conn: Connection, dead: Address, why: str) -> None:
        task = self._reroutes.get(conn)
        if task is not None and not task.done():
            return
        self._reroutes[conn] = self._loop.create_task(self._reroute(conn, dead, why))

    async def _reroute(self, conn: Connection, dead: Address, why: str) -> None:
        start = self._loop.time()
        peer = conn.peer_id
        target: Address | None = None
        delay = REROUTE_RETRY
        try:
            while self._loop.time() - start < REROUTE_TIMEOUT:
                if self._is_closed() or conn.closed:
                    return
                with contextlib.suppress(PeerLookupFailed, NoRelay):
                    found = [a for a in await self.lookup(peer) if a != dead]
                    if found:
                        target = found[0]
                        await self.visit(target)
                        break
                await asyncio.sleep(delay)
                # the relay allows a burst of lookups, then about one a second (issue 12)
                delay = min(delay * 1.5, 1.0)
        except (RelayError, OSError) as exc:
            log.info("cannot move the call to %s: %s", peer.short, exc)
            target = None
        finally:
            self._reroutes.pop(conn, None)
        if target is None or conn.closed:
            self._stats["relay_reroutes_failed"] += 1
            self._event(f"call to {peer.short}: no relay to move to from {dead[0]}:{dead[1]}")
            return
        new = Path.relay(target)
        current = conn.paths.current
        move = current is None or current.kind == "relay"
        conn.paths.add(new, self._relays.sender(target, peer), make_current=move)
        conn.paths.remove(Path.relay(dead), f"relay lost: {why}")
        if move:
            conn.path_switched()
        self._stats["relay_reroutes"] += 1
        ms = (self._loop.time() - start) * 1000
        self._event(f"call to {peer.short} moved to relay {target[0]}:{target[1]} in {ms:.0f} ms")
