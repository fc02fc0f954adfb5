"""The main job, end to end, in the simulator: two peers behind NATs, netcheck, relay, a call.

``run_call_scenario`` builds a small internet (our STUN servers laid out as in the lab, a relay,
two peers each behind a NAT profile), runs the real netcheck, Endpoint, relay and echo session
code on it in virtual time, and returns a timeline of what happened when. ``punchthrough demo``
prints it; the pair matrix's simulator backend runs it once per trial.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

from punchthrough.apps.echo import run_echo_session, serve_endpoint
from punchthrough.endpoint import Endpoint
from punchthrough.identity import Identity
from punchthrough.nat import run_netcheck
from punchthrough.netio import Address
from punchthrough.relay import RelayServer
from punchthrough.sim import FIREWALLS, Host, Link, World, profile, run
from punchthrough.stun import StunServer
from punchthrough.traversal.reasons import Why

#: A peer's IP stack: IPv4 only (behind its NAT), dual stack (plus IPv6 behind a stateful
#: firewall), IPv6 only.
Stack = Literal["ipv4", "dual", "ipv6"]
STACKS: Final[tuple[Stack, ...]] = get_args(Stack)

#: Server layout mirrors the kernel lab (punchthrough.lab.addresses).
STUN_PRIMARY = "198.51.100.1"
STUN_ALT = "198.51.100.2"
STUN_EXTRA = ("198.51.100.3", "198.51.100.4")
RELAY: Address = ("198.51.100.20", 3478)
RELAY_ALT_IP = "198.51.100.21"
STUN_PORT = 3478
#: IPv6 servers (documentation prefix, RFC 3849), added only when a peer has IPv6.
STUN6 = "2001:db8:100::1"
STUN6_ALT = "2001:db8:100::2"
RELAY6: Address = ("2001:db8:100::20", 3478)


@dataclass
class Timeline:
    """Events in virtual time: ms since the scenario started while it runs, then re-based on
    alice's ``connect()`` call (the origin of every report) when it ends."""

    origin: float
    events: list[dict[str, Any]] = field(default_factory=list)

    def add(self, now: float, actor: str, what: str, **detail: Any) -> None:
        self.events.append(
            {"t_ms": round((now - self.origin) * 1000.0, 1), "actor": actor, "event": what} | detail
        )


#: Reason codes (``traversal.reasons.Why``) of a skip decided once another stage had won; every
#: other skip is decided when the stages are planned.
_SKIPPED_AFTER_A_WIN: Final = frozenset(
    {Why.DIRECT_FOUND.value, Why.OTHER_STAGE_FOUND.value, Why.PORT_MAPPING_FIRST.value}
)


def _stage_started(st: dict[str, Any], me: str, peer: str) -> str:
    stage = st["stage"]
    if stage == "birthday":
        hard, easy = (me, peer) if st.get("role") == "hard" else (peer, me)
        text = f"birthday attack started: {st.get('sockets')} sockets on {hard}'s side"
        if st.get("scan_range"):
            lo, hi = st["scan_range"]
            text += f", {easy} probing random ports {lo}-{hi} of {hard}'s NAT"
        if st.get("range_size"):
            text += f" (estimated port range {st['range_size']})"
        return text
    if stage == "port-prediction":
        if st.get("role") == "predicting":
            window = st.get("window") or []
            span = f" ports {min(window)}-{max(window)}" if window else ""
            return f"port prediction started: {me} checks {peer}'s predicted{span}"
        return f"port prediction started: {me} samples its NAT and opens the target flow"
    if stage == "hole-punch":
        return "hole punch started: checking every candidate pair"
    return f"{stage} started"


def stage_events(
    traversal: dict[str, Any], base_ms: float, me: str = "alice", peer: str = "bob"
) -> list[dict[str, Any]]:
    """Timeline rows for the waterfall's stages from one side's traversal report.

    ``base_ms``: when that side's connection started, on the timeline's clock (the report's
    times count from there). A stage that ran gives a row when it started and one when it
    ended; a stage skipped when the stages were planned (at the first round of checks) gives a
    row then, with the reason; one skipped because another stage already won gives it at the
    switch.
    """
    rows: list[dict[str, Any]] = []
    stages = [s for s in traversal.get("stages", []) if s.get("stage") != "relay"]
    planned = next(
        (s["started_ms"] for s in stages if s["stage"] == "hole-punch" and "started_ms" in s),
        None,
    )

    def row(t: float, what: str, **detail: Any) -> None:
        rows.append({"t_ms": round(base_ms + t, 1), "actor": me, "event": what} | detail)

    for st in stages:  # starts first: at one moment, a stage starts before others are skipped
        if st.get("started_ms") is not None:
            row(st["started_ms"], _stage_started(st, me, peer))
    for st in stages:
        stage, status = st["stage"], st.get("status")
        if status == "skipped":
            reason = st.get("reason", "")
            after_win = st.get("reason_code") in _SKIPPED_AFTER_A_WIN
            at = traversal.get("direct_ms") if after_win else planned
            if at is not None:
                row(at, f"{stage} skipped: {reason}")
        elif status == "failed" and st.get("at_ms") is not None:
            row(st["at_ms"], f"{stage} ended: {st.get('reason', 'failed')}")
        elif status == "beaten" and st.get("at_ms") is not None:
            row(st["at_ms"], f"{stage} stopped: the {st.get('beaten_by')} stage answered first")
        elif status == "succeeded" and st.get("at_ms") is not None:
            what = f"{stage} succeeded"
            if stage == "birthday" and st.get("probes_sent") is not None:
                what = f"birthday attack hit after {st['probes_sent']} probes"
            row(st["at_ms"], what, pair=st.get("pair"))
    return rows


def _place(
    world: World, name: str, nat: str, n: int, wan: Link, lan: Link, stack: Stack = "ipv4"
) -> Host:
    """A peer behind ``nat`` (IPv4); with IPv6 (``stack`` dual or ipv6) its home router routes
    ``2001:db8:n::/64`` to it through an RFC 6092 stateful firewall (none for ``open``)."""
    cfg = profile(nat)
    v6 = [f"2001:db8:{n}::2"] if stack != "ipv4" else []
    if cfg is None:
        v4 = [f"192.0.2.{n}"] if stack != "ipv6" else []
        return world.add_host(name, *v4, *v6, link=wan)
    box = world.add_nat(f"nat-{name}", cfg, f"203.0.113.{n}", inside_ip=f"10.0.{n}.1", link=wan)
    if v6:
        box.enable_ipv6(f"2001:db8:{n}::/64", FIREWALLS["stateful"])
    v4 = [f"10.0.{n}.2"] if stack != "ipv6" else []
    return box.add_host(name, *v4, *v6, link=lan)


def _servers_for(stack: Stack, stun_list: list[Address]) -> tuple[list[Address], list[Address]]:
    """(relays, STUN servers) a peer is given: an IPv6-only peer registers over IPv6, a
    dual-stack one over IPv4 (as before) and learns its IPv6 address from STUN over IPv6."""
    if stack == "ipv6":
        return [RELAY6], [(STUN6, STUN_PORT)]
    if stack == "dual":
        return [RELAY], [*stun_list, (STUN6, STUN_PORT)]
    return [RELAY], stun_list


async def _scenario(
    nat_a: str,
    nat_b: str,
    duration: float,
    pps: float,
    one_way_ms: float,
    trace: bool,
    jitter_ms: float = 0.0,
    loss: float = 0.0,
    stacks: tuple[Stack, Stack] = ("ipv4", "ipv4"),
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ipv6 = stacks != ("ipv4", "ipv4")
    # jitter and loss only on the peers' WAN links: the servers' links stay clean, so a lost
    # packet is one the peers' own traffic would meet
    wan = Link(one_way_ms / 1000.0)
    peer_wan = Link(one_way_ms / 1000.0, jitter_ms / 1000.0, loss)
    lan = Link(0.0)
    world = World(trace=trace, default_link=wan)
    tl = Timeline(loop.time())
    servers: list[Any] = []
    try:
        v6_ips = [STUN6, STUN6_ALT] if ipv6 else []
        stun_host = world.add_host("stun", STUN_PRIMARY, STUN_ALT, *v6_ips, link=wan)
        servers.append(
            await StunServer.start(stun_host, [(STUN_PRIMARY, STUN_PORT)], alt_ip=STUN_ALT)
        )
        if ipv6:
            servers.append(
                await StunServer.start(stun_host, [(STUN6, STUN_PORT)], alt_ip=STUN6_ALT)
            )
        for i, ip in enumerate(STUN_EXTRA):
            extra = world.add_host(f"stun{i + 2}", ip, link=wan)
            servers.append(await StunServer.start(extra, [(ip, STUN_PORT)]))
        relay_host = world.add_host(
            "relay", RELAY[0], RELAY_ALT_IP, *([RELAY6[0]] * ipv6), link=wan
        )
        listen = [RELAY, RELAY6] if ipv6 else [RELAY]
        relay = await RelayServer.start(relay_host, listen, alt_ip=RELAY_ALT_IP)
        servers.append(relay)
        stun_list = [(STUN_PRIMARY, STUN_PORT), *((ip, STUN_PORT) for ip in STUN_EXTRA)]
        a = _place(world, "alice", nat_a, 1, peer_wan, lan, stacks[0])
        b = _place(world, "bob", nat_b, 2, peer_wan, lan, stacks[1])
        (relays_a, stun_a), (relays_b, stun_b) = (_servers_for(st, stun_list) for st in stacks)
        where = f"alice behind {nat_a}, bob behind {nat_b}"
        if ipv6:
            where += f" (alice {stacks[0]}, bob {stacks[1]})"
        tl.add(loop.time(), "world", where, one_way_ms=one_way_ms)

        async def check(name: str, host: Host) -> dict[str, Any]:
            stack = stacks[0] if name == "alice" else stacks[1]
            v6 = [(STUN6, STUN_PORT)] if stack != "ipv4" else []
            report = await run_netcheck(host, [*stun_list, *v6] if stack != "ipv6" else v6)
            tl.add(
                loop.time(),
                name,
                f"netcheck: {report.nat_type}",
                public_ip=report.public_ip,
                duration_ms=round(report.duration_ms, 1),
            )
            return report.to_json()

        reports = await asyncio.gather(check("alice", a), check("bob", b))
        ida, idb = (
            Identity.from_private_bytes(b"\x01" * 32),
            Identity.from_private_bytes(b"\x02" * 32),
        )
        async with (
            Endpoint.bind(ida, relays=relays_a, stun=stun_a, network=a) as ea,
            Endpoint.bind(idb, relays=relays_b, stun=stun_b, network=b) as eb,
        ):
            for name, ep, via in (("alice", ea, relays_a[0]), ("bob", eb, relays_b[0])):
                client = ep.relays.get(via)
                seen = client.observed_address if client is not None else None
                tl.add(
                    loop.time(),
                    name,
                    "registered with the relay",
                    relay=f"{via[0]}:{via[1]}",
                    seen_as=f"{seen[0]}:{seen[1]}" if seen else None,
                )
            server = asyncio.ensure_future(serve_endpoint(eb))
            try:
                start = loop.time()
                tl.add(start, "alice", f"connect to bob ({str(eb.peer_id)[:12]}...)")
                result: dict[str, Any] = await run_echo_session(
                    ea,
                    eb.peer_id,
                    duration,
                    pps,
                    on_connected=lambda c: tl.add(
                        loop.time(), "alice", "connected: QUIC over the relay"
                    ),
                )
            finally:
                server.cancel()
                await asyncio.gather(server, return_exceptions=True)
        base = (start - tl.origin) * 1000.0
        if result.get("first_echo_ms") is not None:
            tl.events.append(
                {
                    "t_ms": round(base + result["first_echo_ms"], 1),
                    "actor": "alice",
                    "event": "first frame echoed back",
                }
            )
        # what the waterfall tried, from alice's traversal report (before the path changes,
        # so a stage's success is listed ahead of the switch it caused at the same moment)
        tl.events.extend(stage_events(result.get("traversal") or {}, base, "alice", "bob"))
        for change in result["path_changes"]:
            tl.events.append(
                {
                    "t_ms": round(base + change["t_ms"], 1),
                    "actor": "alice",
                    "event": f"path {change['from']} -> {change['to']}",
                    "reason": change.get("reason"),
                }
            )
        tl.add(
            loop.time(),
            "alice",
            f"call ended on {result['path']}: {result['frames_received']}/"
            f"{result['frames_sent']} frames echoed, max gap {result['max_gap_ms']} ms",
        )
        tl.events.sort(key=lambda e: e["t_ms"])
        # One origin in every report: alice's connect() call (setup before it is negative).
        for e in tl.events:
            e["t_ms"] = round(e["t_ms"] - base, 1) + 0.0  # + 0.0: no "-0" at the origin
        out: dict[str, Any] = {
            "nat_a": nat_a,
            "nat_b": nat_b,
            **({"stacks": list(stacks)} if ipv6 else {}),
            "one_way_ms": one_way_ms,
            "jitter_ms": jitter_ms,
            "loss": loss,
            "netcheck": {"alice": reports[0], "bob": reports[1]},
            "call": result,
            "timeline": tl.events,
        }
        if trace:
            out["trace"] = world.format_trace()
        return out
    finally:
        for s in reversed(servers):
            closed = s.close()
            if asyncio.iscoroutine(closed):
                await closed


def run_call_scenario(
    nat_a: str = "eim-apdf",
    nat_b: str = "eim-apdf",
    *,
    seed: int = 1,
    duration: float = 10.0,
    pps: float = 50.0,
    one_way_ms: float = 10.0,
    trace: bool = False,
    jitter_ms: float = 0.0,
    loss: float = 0.0,
    stacks: tuple[Stack, Stack] = ("ipv4", "ipv4"),
) -> dict[str, Any]:
    """Run the whole system for one NAT pair in virtual time; see the module docstring.

    ``jitter_ms`` (uniform, per packet) and ``loss`` (probability) apply to the two peers' WAN
    links, so that trials with different seeds differ as real calls do. ``stacks``: alice's
    and bob's IP stacks (``ipv4``, ``dual``: IPv4 behind the NAT plus IPv6 behind a stateful
    firewall, ``ipv6``: IPv6 only); with IPv6 anywhere the STUN server and the relay are dual
    stack. IPv4 on both sides builds exactly the IPv4 world of before.
    """
    for nat in (nat_a, nat_b):
        profile(nat)  # raises ValueError naming the valid profiles
    for stack in stacks:
        if stack not in STACKS:
            raise ValueError(f"unknown IP stack {stack!r}; known: {', '.join(STACKS)}")
    return run(
        _scenario(nat_a, nat_b, duration, pps, one_way_ms, trace, jitter_ms, loss, stacks),
        seed=seed,
        time_limit=None,
    )
