"""Port prediction's three roles (plans: :mod:`punchthrough.traversal.hardnat.prediction`).

- ``predicted`` (starts; our NAT is sequential, the peer's endpoint-independent): one fresh
  socket, STUN samples to distinct servers back to back, then the target flow (a check to the
  peer's public endpoint, re-sent on the same flow), then ``HardNatProbe`` with the samples.
- ``predicting`` (on ``HardNatProbe``): checks the predicted window of the peer's target port
  from the main socket (our NAT maps endpoint-independently: our sends move nothing), in
  rounds (:func:`~punchthrough.traversal.hardnat.prediction.predicting_schedule`).
- ``mutual`` (both NATs sequential; starts, or on the peer's ``HardNatProbe``): fresh samples
  on a fresh socket, our probe out; with the peer's in, flow k (its own fresh socket: one new
  allocation) checks the peer's predicted port of its flow k (``mutual_schedule``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

from punchthrough.netio import Address
from punchthrough.stun import StunClient, StunError
from punchthrough.traversal.hard.runner import Attempt, Runner
from punchthrough.traversal.hardnat.prediction import (
    BURST_GAP,
    churn_per_gap,
    make_probe,
    mutual_schedule,
    predicted_burst,
    predicting_schedule,
)
from punchthrough.traversal.race import StartMutual, StartPredicted, StartPredicting, Why

#: STUN sample budget on a fresh socket (a server that has not answered by then is left out).
SAMPLE_TIMEOUT: Final = 1.0
SAMPLE_RTO: Final = 0.25
#: The predicting side gives its window checks this long to be answered before failing.
PREDICTION_GRACE: Final = 1.0
#: The predicted side keeps its target flow (and fresh socket) this long at most.
PREDICTION_MAX: Final = 4.0
#: Mutual prediction: flows per sweep, sweeps (churn hypotheses 0, +1, -1), so one fresh socket
#: per flow; how long to wait for the peer's probe; the grace after the last check; the hard
#: stop of one attempt (seconds since it began).
MUTUAL_FLOWS_PER_SWEEP: Final = 4
MUTUAL_SWEEPS: Final = 3
MUTUAL_MAX_SOCKETS: Final = 16
MUTUAL_PROBE_WAIT: Final = 3.0
MUTUAL_GRACE: Final = 1.0
MUTUAL_MAX: Final = 8.0


def _sampler(client: StunClient) -> Callable[[Address], Coroutine[Any, Any, Address | None]]:
    """One STUN Binding from ``client``'s socket: the mapped address, or None (no answer)."""

    async def sample(dest: Address) -> Address | None:
        try:
            res = await client.binding(dest, timeout=SAMPLE_TIMEOUT)
        except (StunError, OSError):
            return None
        return res.mapped

    return sample


async def predicted(run: Runner, a: Attempt, act: StartPredicted) -> None:
    host, race, loop = run.host, run.race, run.loop
    race.note(a.id, role="predicted", delta=act.delta)
    sock_client: StunClient | None = None
    try:
        try:
            sock = await host.network.bind(host.base[0], 0)
        except OSError as exc:
            run.ended(a, Why.NO_SOCKETS, f"could not open a socket: {exc}")
            return
        sock_client = StunClient(sock, rto=SAMPLE_RTO)
        a.sockets[1] = sock
        local = sock.local_address
        a.by_local[local] = 1
        race.socket_opened(a.id, local)
        sock.set_receiver(run.receiver(local, sock_client))
        host.adopt_socket(local, sock)
        host.engine.add_probe_base(local)
        burst = predicted_burst(list(act.servers), act.peer)
        t0 = loop.time()
        samples: list[asyncio.Task[Address | None]] = []
        sample = _sampler(sock_client)
        last_sample_at = t0
        targets = 0
        for s in burst:
            await run.wait(a, t0 + s.t_offset)
            if a.done:
                break
            if s.purpose == "sample":
                samples.append(loop.create_task(sample(s.dest)))
                last_sample_at = loop.time()
                await asyncio.sleep(0)  # let the task send now: send order is allocation order
            else:
                host.probe(local, s.dest, "port-prediction")
                targets += 1
                if targets == 1:
                    mapped = await asyncio.gather(*samples)
                    ports = [m[1] for m in mapped if m is not None]
                    ip = next((m[0] for m in mapped if m is not None), None)
                    race.note(a.id, samples=ports)
                    if len(ports) < 2 or ip is None:
                        run.ended(a, Why.TOO_FEW_SAMPLES, "too few STUN samples answered")
                        return
                    stamp = max(0, round(last_sample_at * 1000))
                    host.send_control(make_probe(race.call_id, ports, act.delta, stamp, ip))
            if loop.time() - t0 > PREDICTION_MAX:
                break
        if not a.done:
            await run.wait(a, t0 + PREDICTION_MAX)
        run.ended(
            a,
            Why.UNANSWERED,
            f"the peer's checks did not reach the predicted port within "
            f"{PREDICTION_MAX:g} s (samples {race.waterfall[a.stage].details.get('samples')})",
        )
    finally:
        if sock_client is not None:
            sock_client.close()
        run.release(a)


async def mutual(run: Runner, a: Attempt, act: StartMutual) -> None:
    """Fresh samples on a fresh socket, our HardNatProbe out, the peer's in; then flow k (its
    own fresh socket: one new allocation on our NAT) checks the peer's predicted port of its
    flow k. The peer does the same the other way round."""
    host, race, loop = run.host, run.race, run.loop
    t_begin = loop.time()
    race.note(a.id, role="mutual", delta=act.delta)
    flows = min(MUTUAL_FLOWS_PER_SWEEP * MUTUAL_SWEEPS, MUTUAL_MAX_SOCKETS - 1)
    sample_client: StunClient | None = None
    try:
        try:
            # Every socket first (binding allocates nothing): nothing slow may come between
            # the last sample and the first flow.
            sample_sock = await host.network.bind(host.base[0], 0)
            a.sockets[0] = sample_sock
            sample_client = StunClient(sample_sock, rto=SAMPLE_RTO)
            sample_sock.set_receiver(run.receiver(sample_sock.local_address, sample_client))
            local_of: dict[int, Address] = {}
            for i in range(1, flows + 1):
                local_of[i] = await run.bind(a, i)
                host.engine.add_probe_base(local_of[i])
        except OSError as exc:
            run.ended(a, Why.NO_SOCKETS, f"could not open {flows + 1} sockets: {exc}")
            return
        host.engine.raise_limits(flows * 4 + 64, flows * 4 + 64)
        if a.done:
            return
        sample = _sampler(sample_client)
        tasks: list[asyncio.Task[Address | None]] = []
        for dest in dict.fromkeys(act.servers):
            tasks.append(loop.create_task(sample(dest)))
            await asyncio.sleep(0)  # send order is allocation order
        last_sample_at = loop.time()
        mapped = await asyncio.gather(*tasks)
        sample_client.close()
        sample_client = None
        run.close_socket(a, 0, sample_sock)
        ports = [m[1] for m in mapped if m is not None]
        ip = next((m[0] for m in mapped if m is not None), None)
        race.note(a.id, samples=ports)
        if len(ports) < 2 or ip is None or a.done:
            run.ended(a, Why.TOO_FEW_SAMPLES, "too few STUN samples answered")
            return
        stamp = max(0, round(last_sample_at * 1000))
        host.send_control(make_probe(race.call_id, ports, act.delta, stamp, ip))
        deadline = loop.time() + MUTUAL_PROBE_WAIT
        while a.peer_probe is None and not a.done and loop.time() < deadline:
            await run.wait(a, deadline)  # a delivered probe wakes us at once
        peer = a.peer_probe
        if a.done:
            return
        if peer is None:
            text = f"no port samples from the peer within {MUTUAL_PROBE_WAIT:g} s"
            run.ended(a, Why.NO_PEER_PROBE, text)
            return
        sched = mutual_schedule(
            peer,
            peer_churn=churn_per_gap(peer.ports, peer.delta),
            flows_per_sweep=MUTUAL_FLOWS_PER_SWEEP,
            sweeps=MUTUAL_SWEEPS,
            controlling=race.controlling,
            socket=1,
            socket_per_flow=True,
        )
        race.note(a.id, peer_samples=list(peer.ports), flows=flows, peer_delta=peer.delta)
        t0 = loop.time()
        stop = t_begin + MUTUAL_MAX
        sent = 0
        for s in sched:
            when = t0 + s.t_offset
            if when > stop:
                break
            await run.wait(a, when)
            if a.done:
                break
            loc = local_of.get(s.socket)
            if loc is not None and s.socket in a.sockets:
                host.probe(loc, s.dest, "port-prediction")
                sent += 1
        race.note(a.id, checks_sent=sent)
        end = t0 + (sched[-1].t_offset if sched else 0.0) + MUTUAL_GRACE
        await run.wait(a, min(end, stop))
        run.ended(
            a,
            Why.UNANSWERED,
            f"no answer to {sent} checks from {flows} fresh flows to the peer's "
            f"predicted ports (our samples {ports}, the peer's {list(peer.ports)})",
        )
    finally:
        if sample_client is not None:
            sample_client.close()
        run.release(a)


async def predicting(run: Runner, a: Attempt, act: StartPredicting) -> None:
    host, race, loop = run.host, run.race, run.loop
    window = act.window
    now = loop.time()
    race.note(
        a.id, role="predicting", window=list(window.ports), coverage=round(window.coverage, 3)
    )
    sched = predicting_schedule(act.peer_ip, window)
    try:
        sent = 0
        for s in sched:
            await run.wait(a, now + s.t_offset)
            if a.done:
                break
            host.probe(host.base, s.dest, "port-prediction")
            sent += 1
        race.note(a.id, checks_sent=sent)
        end = now + (sched[-1].t_offset if sched else 0.0) + PREDICTION_GRACE + BURST_GAP
        await run.wait(a, end)
        run.ended(
            a,
            Why.UNANSWERED,
            f"no answer from the {len(window.ports)} predicted ports of {act.peer_ip} "
            f"({sent} checks)",
        )
    finally:
        a.done = True
