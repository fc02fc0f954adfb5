"""When the hard stages start (issue 17's wait audit), in the simulator on virtual time.

An endpoint-independent side runs the RFC 5780 filtering test behind the call (~0.33 s: one
retransmission and two round trips). Its NAT summary goes out at once with the mapping half
only (filtering "unknown"), the final one when the test ends. So:

- port prediction (needs only the hard side's sequential mapping and the easy side's EIM, and
  is cheap) starts right after the hole punch's first checks, not after the filtering test;
- the birthday attack (256 sockets) is needed only if the easy side's filtering drops the hard
  side's new ports: it waits for the verdict, then starts with no further delay;
- a partial summary never makes the race start a stage the final summary would not need.

Topology as in ``test_direct_sim``: 10 ms per WAN link (relayed RTT R = 80 ms, direct RTT
D = 40 ms, STUN RTT 40 ms); both endpoints bind, then the call starts at once, so the filtering
test of an endpoint-independent side is still running when the call is set up.
"""

from __future__ import annotations

import asyncio
from typing import Any

from test_direct_sim import RELAY, WAN_LINK, _identity, _place, echo, with_world
from test_hardnat_sim import _call

from punchthrough.endpoint import Endpoint
from punchthrough.relay import RelayServer
from punchthrough.sim import World, run
from punchthrough.stun import StunServer
from punchthrough.traversal.checklist import ROUND_TIMEOUT
from punchthrough.traversal.checks import PACING
from punchthrough.traversal.paths import DEFAULT_OWD
from punchthrough.traversal.race import HARD_START_DELAY, PUNCH_GRACE, START_MARGIN

R = 0.080  # relayed RTT
D = 0.040  # direct RTT
STUN_RTT = 0.040  # a peer to the STUN servers and back
#: The issue's slack on top of the round trips.
SLACK = 0.010
#: Candidate pairs of one call here (host pairs are not formed across the NATs: srflx and
#: the peer's relay-seen address), each delays the hard stages by one pacing gap.
N_PAIRS = 2


async def _timed(nat_a: str, nat_b: str, duration: float) -> dict[str, Any]:
    """An echo call a -> b, started right after both binds; also when each side's filtering
    test ended (ms from connect(); None: that side has none)."""

    async def body(world: World, ea: Endpoint, eb: Endpoint) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        done: dict[str, float | None] = {}

        async def final(name: str, ep: Endpoint) -> None:
            pending = not ep.local_candidates.summary_final
            await ep.summary_ready()
            done[name] = (loop.time() - t0) * 1000 if pending else None

        waits = [asyncio.ensure_future(final(n, ep)) for n, ep in (("a", ea), ("b", eb))]
        result = await echo(world, ea, eb, duration=duration)
        await asyncio.gather(*waits)
        result["filtering_done_ms"] = done
        return result

    return await with_world(nat_a, nat_b, body)


def _stage(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in result["traversal"]["stages"] if s["stage"] == name)


def test_port_prediction_starts_behind_the_punch_not_behind_the_filtering_test() -> None:
    """eim-apdf vs apdm-sequential, both dialling directions. The sequential side starts as
    soon as the punch's first checks are out, before the easy side's filtering verdict exists
    (it used to wait for it: 596 ms to direct in the matrix, the verdict + R/2 + 50 ms)."""
    guard = N_PAIRS * PACING + HARD_START_DELAY
    # the sequential side dials: it has the peer's (partial) summary at R, its round starts
    # one relayed one-way delay + START_MARGIN later, the stage one guard after that
    r = run(_timed("apdm-sequential", "eim-apdf", 3.0), seed=1)
    assert r["path"] == "direct" and r["strategy"] == "port-prediction", r["traversal"]
    pp = _stage(r, "port-prediction")
    assert pp["role"] == "predicted"
    start_bound = (R + R / 2 + START_MARGIN + guard + SLACK) * 1000
    assert pp["started_ms"] <= start_bound, pp
    verdict = r["filtering_done_ms"]["b"]
    assert verdict is not None and pp["started_ms"] < verdict  # did not wait for the test
    # then: samples (a STUN round trip), the probe over the relay (R/2), the peer's check of
    # our predicted port reaches us (D/2), our triggered check on it is answered (D)
    assert r["direct_ms"] <= start_bound + (STUN_RTT + R / 2 + 1.5 * D + SLACK) * 1000
    # the easy side dials: the sequential acceptor has the dialer's partial summary at 1.5 R
    r = run(_timed("eim-apdf", "apdm-sequential", 3.0), seed=1)
    assert r["path"] == "direct" and r["strategy"] == "port-prediction", r["traversal"]
    assert _stage(r, "port-prediction")["role"] == "predicting"
    verdict = r["filtering_done_ms"]["a"]
    assert verdict is not None
    start = 1.5 * R + START_MARGIN + guard  # the acceptor's round, then the guard
    bound = (start + STUN_RTT + R / 2 + D + SLACK) * 1000
    assert r["direct_ms"] <= bound, (r["direct_ms"], bound)
    # any schedule that waited for the verdict (R/2 to reach the acceptor), then sampled, sent
    # its probe and had it checked, would be direct at the earliest here (the old 596 ms was
    # that plus the 0.5 s test and a 50 ms delay):
    waited = verdict + (R / 2 + STUN_RTT + R / 2 + D) * 1000
    assert r["direct_ms"] < waited, (r["direct_ms"], waited)


def test_the_birthday_waits_for_the_filtering_verdict_then_starts_at_once() -> None:
    """eim-apdf (easy, dialer) vs apdm-random (hard). The partial summary (EIM, filtering
    unknown) does not start the attack: the punch may suffice, and 256 sockets are not spent on
    a maybe. The final summary (APDF) reaches the hard side R/2 after the test, which starts at
    once (no fixed delay); its start message reaches the easy side R/2 later."""
    r = run(_timed("eim-apdf", "apdm-random", 1.0), seed=1)
    bd = _stage(r, "birthday")
    assert bd["role"] == "easy" and bd["status"] in ("started", "succeeded"), bd
    verdict = r["filtering_done_ms"]["a"]
    assert verdict is not None
    assert bd["started_ms"] >= verdict + R * 1000  # waited for the verdict (lower bound)
    assert bd["started_ms"] <= verdict + (R + SLACK) * 1000  # and nothing after it
    # the test itself: gather_filter_wait (0.25 s + 2 * 40 ms), not the 0.5 s floor, from
    # the end of the gather; both binds happen before connect(), so the verdict is < 0.33 s
    assert verdict < 330


def test_a_partial_summary_never_starts_a_stage_the_pair_does_not_need() -> None:
    """eim-adf's filtering admits the hard side's new ports (the punch suffices), but its first
    summary says "unknown". The birthday must never start on it (no pinhole socket is ever
    opened); the cheap prediction may race the punch, but the punch wins and nothing is left."""
    for a, b in (("apdm-random", "eim-adf"), ("eim-adf", "apdm-random")):
        r = run(_call(a, b, duration=2.0), seed=1)
        assert r["path"] == "direct" and r["traversal"]["strategy"] == "hole-punch", (a, b)
        bd = _stage(r, "birthday")
        assert "started_ms" not in bd and bd["status"] in ("skipped", "pending"), bd
        assert r["peak_sockets"] <= 3  # the main socket and one STUN socket at most
    for a, b in (("apdm-sequential", "eim-adf"), ("eim-adf", "apdm-sequential")):
        r = run(_call(a, b, duration=2.0), seed=1)
        assert r["path"] == "direct" and r["traversal"]["strategy"] == "hole-punch", (a, b)
        assert r["sockets_after_call"] == [1, 1]


async def _without_rfc5780(nat_a: str, nat_b: str, duration: float) -> dict[str, Any]:
    """An echo call a -> b whose STUN servers (two IPs) do not do RFC 5780: no filtering test
    can run, so the easy side's filtering stays "unknown" in its final summary."""
    world = World()
    relay = await RelayServer.start(world.add_host("relay", RELAY[0], link=WAN_LINK), [RELAY])
    ips = ("198.51.100.30", "198.51.100.31")
    servers = [(ip, 3478) for ip in ips]
    stun = await StunServer.start(world.add_host("stun", *ips, link=WAN_LINK), servers)
    try:
        a, _ = _place(world, "a", nat_a, 1)
        b, _ = _place(world, "b", nat_b, 2)
        async with (
            Endpoint.bind(_identity(1), relays=[RELAY], stun=servers, network=a) as ea,
            Endpoint.bind(_identity(2), relays=[RELAY], stun=servers, network=b) as eb,
        ):
            assert ea.local_candidates.summary_final  # nothing pending: unknown for good
            assert ea.local_candidates.summary.filtering == "unknown"
            return await echo(world, ea, eb, duration=duration)
    finally:
        await relay.close()
        stun.close()


def test_the_birthday_starts_when_the_punch_had_its_chance_not_at_the_round_timeout() -> None:
    """eim-apdf (easy, dialer, filtering unknown for good) vs apdm-random (hard). The birthday
    runs "after the punch"; it used to wait for the round's 5 s timeout (direct at 5951 ms for
    this seed). It starts when the acceptor's punch has had its chance: its round (at the
    dialer's early offer, R/2), the first checks (one gap per pair), two retransmissions
    (PUNCH_GRACE) and a relayed round trip for an answer (the acceptor has no RTT sample yet at
    R/2: twice the default one-way delay); the start message reaches the easy side R/2 later."""
    r = run(_without_rfc5780("eim-apdf", "apdm-random", 3.0), seed=1)
    bd = _stage(r, "birthday")
    assert bd["role"] == "easy" and bd["status"] in ("started", "succeeded"), bd
    chance = R / 2 + N_PAIRS * PACING + PUNCH_GRACE + 2 * DEFAULT_OWD
    assert bd["started_ms"] >= (chance + R / 2) * 1000 - 1e-6  # the punch had its chance first
    assert bd["started_ms"] <= (chance + R / 2 + SLACK) * 1000, bd
    assert r["path"] == "direct" and r["strategy"] == "birthday"
    # Direct before the round's timeout, when the birthday used to start at all.
    assert r["direct_ms"] < ROUND_TIMEOUT * 1000
