"""The virtual internet: it builds the nodes and moves packets between them.

Packets move hop by hop through realms and NAT tables (:mod:`punchthrough.sim.nodes`) on the
running event loop's clock (virtual under :func:`punchthrough.sim.run`), with per-link latency,
jitter and loss drawn from one seeded generator in send order, so a run is reproducible bit for
bit. The node classes, links and trace lines are re-exported here.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from collections.abc import Callable
from typing import Any, Final

from punchthrough.netio import Address
from punchthrough.portmap.natpmp_wire import NATPMP_PORT
from punchthrough.sim.clock import VirtualTimeLoop
from punchthrough.sim.firewall import Passed
from punchthrough.sim.link import NO_DELAY, Link
from punchthrough.sim.nat_binding import Admitted, Translated
from punchthrough.sim.nat_config import NatConfig
from punchthrough.sim.nodes import (
    EPHEMERAL_PORTS,
    MAX_UDP_PAYLOAD,
    Host,
    Nat,
    NatLan,
    NatWan,
    Realm,
    SimSocket,
)
from punchthrough.sim.portmap_responder import respond
from punchthrough.sim.trace import TraceEvent

__all__ = [
    "EPHEMERAL_PORTS",
    "MAX_UDP_PAYLOAD",
    "NO_DELAY",
    "Host",
    "Link",
    "Nat",
    "Realm",
    "SimSocket",
    "TraceEvent",
    "World",
]

#: Same slack as asyncio's clock resolution check in ``BaseEventLoop._run_once``.
_EPSILON: Final = 1e-9


_Event = tuple[float, int, Callable[..., None], tuple[Any, ...]]


class World:
    """The simulated internet. Create it inside :func:`punchthrough.sim.run` (any running loop
    works; on a real loop it simply runs in real time)."""

    def __init__(
        self,
        seed: int | None = None,
        *,
        trace: bool = False,
        default_link: Link | None = None,
        trace_limit: int | None = 1_000_000,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        if seed is None:
            seed = self.loop.seed if isinstance(self.loop, VirtualTimeLoop) else 0
        self.seed = seed
        self.rng = random.Random(f"{seed}/links")
        self.tracing = trace
        self.trace: list[TraceEvent] = []
        self.trace_limit = trace_limit
        self.default_link = default_link if default_link is not None else Link()
        self.public = Realm("internet")
        self.hosts: dict[str, Host] = {}
        self.nats: dict[str, Nat] = {}
        self.stats: dict[str, int] = {"sent": 0, "delivered": 0, "dropped": 0}
        self.drop_reasons: dict[str, int] = {}
        self._events: list[_Event] = []
        self._seq = 0
        #: Drop rules (fault injection): ``rule(src, dst) -> True`` drops a packet on the public
        #: internet (addresses as seen there, i.e. after NAT translation).
        self.drop_rules: list[Callable[[Address, Address], bool]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = float("inf")

    @property
    def now(self) -> float:
        return self.loop.time()

    # -- building -----------------------------------------------------------------------------

    def add_host(
        self, name: str, *addresses: str, realm: Realm | None = None, link: Link | None = None
    ) -> Host:
        if not addresses:
            raise ValueError("a host needs at least one address")
        if name in self.hosts or name in self.nats:
            raise ValueError(f"name {name!r} already used")
        realm = realm if realm is not None else self.public
        host = Host(
            self, name, tuple(addresses), realm, link if link is not None else self.default_link
        )
        for ip in addresses:
            realm._attach(ip, host)
        self.hosts[name] = host
        return host

    def add_nat(
        self,
        name: str,
        config: NatConfig,
        external_ip: str,
        *,
        realm: Realm | None = None,
        inside_ip: str = "10.0.1.1",
        link: Link | None = None,
    ) -> Nat:
        if name in self.hosts or name in self.nats:
            raise ValueError(f"name {name!r} already used")
        realm = realm if realm is not None else self.public
        nat = Nat(
            self,
            name,
            config,
            external_ip,
            realm,
            inside_ip,
            link if link is not None else self.default_link,
        )
        realm._attach(external_ip, nat._wan)
        nat.inside._attach(inside_ip, nat._lan)
        self.nats[name] = nat
        return nat

    # -- tracing ------------------------------------------------------------------------------

    def _trace(self, event: TraceEvent) -> None:
        if self.trace_limit is None or len(self.trace) < self.trace_limit:
            self.trace.append(event)

    def format_trace(self) -> str:
        """The trace as text, in time order (NAT churn is computed lazily, so events recorded
        for the past are sorted into place; the sort is stable for equal times)."""
        return "\n".join(str(e) for e in sorted(self.trace, key=lambda e: e.time))

    def _drop(self, node: str, src: Address, dst: Address, size: int, reason: str) -> None:
        self.stats["dropped"] += 1
        key = reason.split(":", 1)[0]
        self.drop_reasons[key] = self.drop_reasons.get(key, 0) + 1
        if self.tracing:
            self._trace(TraceEvent(self.now, "drop", node, src, dst, size, reason))

    # -- event queue: FIFO among equal times, one asyncio timer at a time ----------------------

    def _schedule(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, fn, args))
        if when < self._timer_when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = when
            self._timer = self.loop.call_at(when, self._run_events)

    def _run_events(self) -> None:
        self._timer = None
        self._timer_when = float("inf")
        events = self._events
        now = self.loop.time() + _EPSILON  # the loop fires timers up to its clock resolution
        while events and events[0][0] <= now:
            _, _, fn, args = heapq.heappop(events)
            fn(*args)
        # Callbacks above may have armed a timer for a later event than the current head.
        if events and (self._timer is None or events[0][0] < self._timer_when):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_when = events[0][0]
            self._timer = self.loop.call_at(self._timer_when, self._run_events)

    # -- packet movement ----------------------------------------------------------------------

    def _delay(self, link: Link) -> float | None:
        """One traversal of ``link``: its delay, or ``None`` if the packet is lost."""
        if link.loss and self.rng.random() < link.loss:
            return None
        if link.jitter:
            return link.latency + self.rng.uniform(0.0, link.jitter)
        return link.latency

    def _send_from_host(self, host: Host, src: Address, dst: Address, data: bytes) -> None:
        self.stats["sent"] += 1
        if self.tracing:
            self._trace(TraceEvent(self.now, "send", host.name, src, dst, len(data)))
        if dst[0] in host.addresses:  # to itself: loopback, no link
            self._schedule(self.now, self._arrive_host, host, src, dst, data)
            return
        self._route(host.realm, host.link, host.name, src, dst, data)

    def send_spoofed(self, host: Host, src: Address, dst: Address, data: bytes) -> None:
        """Send ``data`` from ``host`` with any source address ``src``: what a raw socket lets
        an attacker do where the network does no ingress filtering (RFC 2827)."""
        self._send_from_host(host, src, dst, data)

    def add_drop_rule(self, rule: Callable[[Address, Address], bool]) -> Callable[[], None]:
        """Drop every public-internet packet for which ``rule(src, dst)`` is true (a cut link,
        an ``nft drop`` rule); returns a function that removes the rule again (the cut heals)."""
        self.drop_rules.append(rule)

        def heal() -> None:
            if rule in self.drop_rules:
                self.drop_rules.remove(rule)

        return heal

    def _route(
        self, realm: Realm, link: Link, node: str, src: Address, dst: Address, data: bytes
    ) -> None:
        """Move a packet from a node in ``realm`` (attached by ``link``) one hop on."""
        if realm is self.public and self.drop_rules and any(r(src, dst) for r in self.drop_rules):
            self._drop(node, src, dst, len(data), "drop rule")
            return
        target = realm.nodes.get(dst[0])
        # An IPv6 prefix routed to a home router (only IPv6 worlds have routes: IPv4-only ones
        # take the same branches, and draw the same random numbers, as before IPv6).
        router = realm.route6(dst[0]) if target is None and ":" in dst[0] else None
        if target is None and router is None and realm.gateway is None:
            self._drop(node, src, dst, len(data), f"no route to {dst[0]} in {realm.name}")
            return
        delay = self._delay(link)
        if delay is None:
            self._drop(node, src, dst, len(data), f"loss on link of {node}")
            return
        if router is not None:
            far6 = self._delay(router.link)
            if far6 is None:
                self._drop(node, src, dst, len(data), f"loss on link of {router.name}")
                return
            self._schedule(self.now + delay + far6, self._arrive_router6, router, src, dst, data)
            return
        if target is None:
            assert realm.gateway is not None
            self._schedule(self.now + delay, self._arrive_nat_lan, realm.gateway, src, dst, data)
            return
        if isinstance(target, NatLan):
            self._schedule(self.now + delay, self._arrive_gateway, target.nat, src, dst, data)
            return
        far = self._delay(target.nat.link if isinstance(target, NatWan) else target.link)
        if far is None:
            name = target.nat.name if isinstance(target, NatWan) else target.name
            self._drop(node, src, dst, len(data), f"loss on link of {name}")
            return
        when = self.now + delay + far
        if isinstance(target, NatWan):
            self._schedule(when, self._arrive_nat_wan, target.nat, src, dst, data)
        else:
            self._schedule(when, self._arrive_host, target, src, dst, data)

    def _arrive_host(self, host: Host, src: Address, dst: Address, data: bytes) -> None:
        sock = host._socket_for(dst)
        if sock is None:
            self._drop(host.name, src, dst, len(data), f"port unreachable: {dst[1]}")
            return
        if self.tracing:
            self._trace(TraceEvent(self.now, "deliver", host.name, src, dst, len(data)))
        if sock._deliver(data, src):
            self.stats["delivered"] += 1
        else:
            self._drop(host.name, src, dst, len(data), "socket has no receiver")

    def _arrive_nat_lan(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        """A packet from the NAT's LAN to somewhere outside it."""
        if ":" in dst[0]:
            self._forward6_out(nat, src, dst, data)
            return
        result = nat.table.outbound(self.now, src, dst)
        if not isinstance(result, Translated):
            self._drop(nat.name, src, dst, len(data), result.reason)
            return
        out = result.external
        if self.tracing:
            new = " (new mapping)" if result.new else ""
            self._trace(
                TraceEvent(
                    self.now,
                    "nat-out",
                    nat.name,
                    src,
                    dst,
                    len(data),
                    f"=> src {out[0]}:{out[1]}{new}",
                )
            )
        if dst[0] == nat.external_ip:
            if not nat.config.hairpinning:
                self._drop(nat.name, out, dst, len(data), "hairpinning disabled")
                return
            if self.tracing:
                self._trace(TraceEvent(self.now, "hairpin", nat.name, out, dst, len(data)))
            self._inbound(nat, out, dst, data)
            return
        self._route(nat.outer, nat.link, nat.name, out, dst, data)

    def _arrive_nat_wan(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        self._inbound(nat, src, dst, data)

    def _inbound(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        result = nat.table.inbound(self.now, src, dst[1])
        if not isinstance(result, Admitted):
            self._drop(nat.name, src, dst, len(data), result.reason)
            return
        inner = result.internal
        if self.tracing:
            self._trace(
                TraceEvent(
                    self.now,
                    "nat-in",
                    nat.name,
                    src,
                    dst,
                    len(data),
                    f"=> dst {inner[0]}:{inner[1]}",
                )
            )
        self._route(nat.inside, NO_DELAY, nat.name, src, inner, data)

    def _arrive_gateway(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        """A packet for the NAT's own LAN address: only the port-mapping service listens."""
        cfg = nat.config
        if dst[1] != NATPMP_PORT or not (cfg.natpmp or cfg.pcp):
            self._drop(nat.name, src, dst, len(data), f"port unreachable: gateway {dst[1]}")
            return
        if self.tracing:
            self._trace(TraceEvent(self.now, "portmap", nat.name, src, dst, len(data), "request"))
        reply = respond(nat.table, self.now, src, data)
        if reply is None:
            self._drop(nat.name, src, dst, len(data), "malformed port-mapping request")
            return
        self._route(nat.inside, NO_DELAY, nat.name, dst, src, reply)

    # -- IPv6: a dual-stack router forwards without translation, through its firewall ----------

    def _forward6_out(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        if ":" not in src[0] or nat.ipv6_prefix is None:
            self._drop(nat.name, src, dst, len(data), f"no IPv6 route from {nat.name}")
            return
        if nat.firewall is not None:
            verdict = nat.firewall.outbound(self.now, src, dst)
            if not isinstance(verdict, Passed):
                self._drop(nat.name, src, dst, len(data), verdict.reason)
                return
            if self.tracing and verdict.new:
                self._trace(
                    TraceEvent(self.now, "fw-out", nat.name, src, dst, len(data), "new flow")
                )
        src = (nat.npt(src[0], outbound=True), src[1])
        self._route(nat.outer, nat.link, nat.name, src, dst, data)

    def _arrive_router6(self, nat: Nat, src: Address, dst: Address, data: bytes) -> None:
        """An IPv6 packet for a host behind ``nat``: its firewall decides."""
        dst = (nat.npt(dst[0], outbound=False), dst[1])
        if dst[0] not in nat.inside.nodes and nat.inside.route6(dst[0]) is None:
            self._drop(nat.name, src, dst, len(data), f"no route to {dst[0]} in {nat.name}-lan")
            return
        if nat.firewall is not None:
            verdict = nat.firewall.inbound(self.now, src, dst)
            if not isinstance(verdict, Passed):
                self._drop(nat.name, src, dst, len(data), verdict.reason)
                return
        if self.tracing:
            self._trace(TraceEvent(self.now, "fw-in", nat.name, src, dst, len(data)))
        self._route(nat.inside, NO_DELAY, nat.name, src, dst, data)
