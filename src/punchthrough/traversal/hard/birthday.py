"""The birthday attack's two roles (plans: :mod:`punchthrough.traversal.hardnat.birthday`).

- ``hard`` side (starts; its NAT maps endpoint-dependently): binds ``n`` sockets, adds each as
  a probe base of the engine, opens one pinhole per socket towards the easy side's public
  endpoint and sends ``HardNatBirthdayStart``; the first verified check on socket ``i`` wins
  (the race says so: every other socket closes at once, ``i`` carries the path).
- ``easy`` side (on ``HardNatBirthdayStart``): probes distinct random ports of the hard side's
  IP from the main socket, paced, until a verified answer or the budget ends, and reports how
  many probes it sent (only this side knows).
"""

from __future__ import annotations

from typing import Final

from punchthrough.traversal.hard.runner import Attempt, Runner
from punchthrough.traversal.hardnat.birthday import (
    EasySidePlan,
    HardSidePlan,
    State,
    make_birthday_start,
    scan_range,
)
from punchthrough.traversal.race import (
    Stage,
    StartBirthdayEasy,
    StartBirthdayHard,
    Status,
    Why,
)

#: Hard stop of one attack on the hard side (seconds), whatever the budget says.
HARD_SIDE_MAX: Final = 15.0


async def hard_side(run: Runner, a: Attempt, act: StartBirthdayHard) -> None:
    host, race, budget = run.host, run.race, run.race.budget
    plan, easy = act.plan, act.easy
    n = budget.birthday_sockets
    race.note(
        a.id,
        role="hard",
        sockets=n,
        range_size=plan.params.get("range_size"),
        probability=plan.probability,
    )
    host.engine.raise_limits(n * 2 + 64, n * 4 + 64)
    try:
        try:
            for i in range(1, n + 1):
                local = await run.bind(a, i)
                host.engine.add_probe_base(local)
        except OSError as exc:
            run.ended(a, Why.NO_SOCKETS, f"could not open {n} sockets: {exc}")
            return
        if a.done:
            return
        hp = HardSidePlan(
            easy,
            start=run.loop.time(),
            sockets=n,
            max_duration=min(budget.birthday_max_duration, HARD_SIDE_MAX),
        )
        ports = tuple(loc[1] for loc, _ in sorted(a.by_local.items(), key=lambda x: x[1]))
        host.send_control(make_birthday_start(race.call_id, hp, run.loop.time(), local_ports=ports))
        local_of = {i: loc for loc, i in a.by_local.items()}
        sent = 0
        while not a.done and hp.state is State.RUNNING:
            for s in hp.poll(run.loop.time()):
                loc = local_of.get(s.socket)
                if loc is not None and s.socket in a.sockets:
                    host.probe(loc, s.dest, "birthday")
                    sent += 1
            await run.wait(a, hp.next_deadline())
        race.note(a.id, pinhole_checks_sent=sent)
        if a.winner is not None:
            hp.on_success(a.winner)
        else:
            span = hp.deadline - hp.start
            run.ended(
                a, Why.UNANSWERED, f"no probe hit one of the {n} pinholes within {span:.0f} s"
            )
    finally:
        run.release(a)


async def easy_side(run: Runner, a: Attempt, act: StartBirthdayEasy) -> None:
    host, race, budget = run.host, run.race, run.race.budget
    hard = act.hard
    assert hard.public_ip is not None
    m = budget.birthday_probes
    size = hard.range_size()
    span = scan_range(hard.port_range, m)
    ep = EasySidePlan(
        hard.public_ip,
        span,
        start=act.start,
        rng=run.rng,
        probes=m,
        rate=budget.birthday_rate,
        max_duration=budget.birthday_max_duration,
    )
    race.note(
        a.id,
        role="easy",
        sockets=act.sockets,
        range_size=size,
        scan_range=list(span),
        probes_sent=0,
        probability=ep.probability(act.sockets, size),
    )
    host.engine.raise_limits(len(ep.ports) + 64, len(ep.ports) + 64)
    # Stop a grace period after the last probe: its answer needs a round trip.
    grace = 4 * host.owd() + 0.5
    last = act.start + len(ep.ports) / ep.rate + grace
    try:
        while not a.done and ep.state is State.RUNNING:
            now = run.loop.time()
            for s in ep.poll(now):
                host.probe(host.base, s.dest, "birthday")
            race.note(a.id, probes_sent=ep.sent)
            if ep.pending == 0 and now >= last:
                break
            await run.wait(a, last if ep.pending == 0 else ep.next_deadline())
        if race.waterfall[Stage.BIRTHDAY].status is Status.SUCCEEDED:
            ep.on_success()
        race.note(a.id, probes_sent=ep.sent)
        run.ended(
            a,
            Why.UNANSWERED,
            f"no answer to {ep.sent} probes over ports {span[0]}-{span[1]} of "
            f"{hard.public_ip} (estimated range {size}, {act.sockets} pinholes)",
        )
    finally:
        a.done = True
