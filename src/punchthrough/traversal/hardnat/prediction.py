"""Port prediction (phase B): where will a sequential NAT put the peer's next flow, and in what
order do we send so that we hit it?

A sequential NAT gives every new flow (new destination, on an address-and-port-dependent NAT)
the previous port plus ``delta``, shared by every host behind it, so the port of a flow the peer
opens *later* drifts with every flow allocated in between: background churn on its NAT, and the
peer's own sends. Three rules keep the target still:

1. **Burst, then target** (one side sequential, the other endpoint-independent). The sequential
   (``predicted``) side opens a fresh socket and sends, back to back, its STUN samples and then
   ONE check to the peer's server-reflexive endpoint (:func:`predicted_burst`). That check's
   flow is the target: by convention (:data:`TARGET_OFFSET`) it is the first allocation after the
   last sample, opened within :data:`BURST_GAP` of it, so only churn during a few milliseconds can
   move it. A fresh socket because the main socket already has a flow to the peer's srflx (the
   hole punch made it): a repeated destination allocates nothing. The endpoint-independent
   (``predicting``) side may send to as many destinations as it likes: its NAT maps them all to
   one port, so its own sends move nothing. It checks the window from its main socket
   (:func:`predicting_schedule`), most likely port first, 2-3 rounds 200 ms apart so a pinhole
   that opens late is still hit. The target check is re-sent on the same flow (no new port).
2. **Count churn from the samples.** Steps between samples beyond ``delta`` are other hosts'
   flows; the burst's fixed spacing turns them into "churned allocations per gap"
   (:func:`churn_per_gap`), floored by a prior rate, and the window covers the Poisson quantile
   of the churn expected before the target, most likely count first (:func:`predict_window`).
3. **Matched order** (both sequential, "flaky"). Every check either side sends to a predicted
   port is itself a new flow on its own NAT and takes the next port. So both sides send their
   k-th new flow to the peer's predicted port of *its* k-th new flow (:func:`mutual_schedule`):
   A's k-th flow gets port lastA + dA*(k + cA) and goes to lastB + dB*(k + cB'), B's the other
   way round, and the pair (k, k) connects when both churn guesses are right. A sweep per churn
   hypothesis covers small errors; each sweep's flows are counted into the next sweep's offsets.

All functions are pure and return :class:`~.schedule.Send` lists with caps.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from punchthrough.nat.allocation import DEFAULT_PORT_RANGE, predict_ports
from punchthrough.netio import Address
from punchthrough.signal.messages import HardNatProbe, format_allocation, parse_allocation
from punchthrough.traversal.hardnat.schedule import Send
from punchthrough.traversal.hardnat.stats import poisson_cdf, poisson_quantile

#: The target flow is the first allocation after the last sample (rule 1).
TARGET_OFFSET: Final = 1
#: Spacing of the predicted side's burst (samples, then target), seconds. A few ms: long
#: enough to keep send order = allocation order, short enough that churn rarely intervenes.
BURST_GAP: Final = 0.002
#: The issue: "2-3 checks per port 200 ms apart so a pinhole that opens late is still hit".
CHECKS_PER_PORT: Final = 3
CHECK_INTERVAL: Final = 0.2
#: Gap between two checks of one sweep (500/s: small sweeps, far below NAT rate limits).
CHECK_PACE: Final = 0.002
#: Caps: ports in a window, checks in a schedule, sweeps of the mutual plan.
MAX_WINDOW: Final = 64
MAX_CHECKS: Final = 512
MAX_SWEEPS: Final = 8
#: Prior background churn (flows/s) when the samples show none (a quiet home NAT).
PRIOR_CHURN: Final = 1.0


class PredictionError(ValueError):
    """A HardNatProbe cannot be used for prediction (not sequential, too few samples)."""


@dataclass(frozen=True, slots=True)
class SequentialProbe:
    """A peer's fresh samples of a sequential NAT, most recent port first."""

    ports: tuple[int, ...]
    delta: int
    probe_time: float  # seconds, on the sender's clock
    external_ip: str

    @property
    def last(self) -> int:
        return self.ports[0]


def make_probe(
    call_id: str,
    ports_in_allocation_order: Sequence[int],
    delta: int,
    probe_time_ms: int,
    external_ip: str,
) -> HardNatProbe:
    """The message the sequential side sends: ports reversed to most recent first (the PRD)."""
    return HardNatProbe(
        call_id=call_id,
        port_sequence=tuple(reversed(tuple(ports_in_allocation_order))),
        allocation=format_allocation("sequential", delta),
        probe_time_ms=probe_time_ms,
        external_ip=external_ip,
    )


def parse_probe(msg: HardNatProbe) -> SequentialProbe:
    """Check a peer's probe is usable for prediction; :class:`PredictionError` otherwise."""
    try:
        kind, delta = parse_allocation(msg.allocation)
        ipaddress.ip_address(msg.external_ip)
    except ValueError as exc:
        raise PredictionError(str(exc)) from None
    if kind != "sequential" or not delta:
        raise PredictionError(f"allocation {msg.allocation!r} is not sequential")
    if not msg.port_sequence:
        raise PredictionError("empty port_sequence")
    return SequentialProbe(
        tuple(msg.port_sequence), delta, msg.probe_time_ms / 1000.0, msg.external_ip
    )


def churned_steps(ports_most_recent_first: Sequence[int], delta: int, span: int = 65536) -> int:
    """Allocations other than ours between the samples: steps beyond one ``delta`` each."""
    ports = list(reversed(ports_most_recent_first))
    skipped = 0
    for a, b in itertools.pairwise(ports):
        diff = (b - a) % span
        if diff > span // 2:
            diff -= span
        steps = round(diff / delta)
        if steps >= 1:
            skipped += steps - 1
    return skipped


def churn_per_gap(ports_most_recent_first: Sequence[int], delta: int) -> float:
    """Mean churned allocations per gap between two of the peer's consecutive allocations."""
    gaps = len(ports_most_recent_first) - 1
    if gaps < 1:
        return 0.0
    return churned_steps(ports_most_recent_first, delta) / gaps


def estimate_churn(
    ports_most_recent_first: Sequence[int], delta: int, span_seconds: float
) -> float | None:
    """Background flows per second seen over a sampling span (None when it cannot be told)."""
    if span_seconds <= 0 or len(ports_most_recent_first) < 2:
        return None
    return churned_steps(ports_most_recent_first, delta) / span_seconds


@dataclass(frozen=True, slots=True)
class Window:
    """Predicted ports of the target flow, most likely first."""

    ports: tuple[int, ...]
    #: Allocations ahead of the last sample assumed for the centre (before churn).
    offset: int
    expected_churn: float
    #: P(the churn before the target is one the window covers), Poisson.
    coverage: float


def predict_window(
    probe: SequentialProbe,
    *,
    offset: int = TARGET_OFFSET,
    expected_churn: float | None = None,
    elapsed: float = BURST_GAP,
    churn_rate: float = PRIOR_CHURN,
    coverage: float = 0.99,
    max_ports: int = 16,
    jitter: bool = True,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
) -> Window:
    """The window for the peer's flow ``offset`` allocations after its last sample.

    Churn before the target is Poisson with mean ``expected_churn`` if given, else the larger
    of the samples' churn per gap (times ``offset`` gaps) and ``churn_rate * elapsed``. Port
    k of the window is ``last + delta * (offset + c)`` for churn counts c in decreasing
    likelihood, then (``jitter``) the +-1 neighbours of the centre, as the classifier tolerates.
    """
    if offset < 1:
        raise ValueError("offset must be >= 1 (the target is allocated after the last sample)")
    max_ports = max(1, min(max_ports, MAX_WINDOW))
    if expected_churn is None:
        observed = churn_per_gap(probe.ports, probe.delta) * offset
        expected_churn = max(observed, churn_rate * max(0.0, elapsed))
    mean = max(0.0, expected_churn)
    top = poisson_quantile(coverage, mean)
    # The max_ports most likely churn counts up to the quantile, most likely first (the Poisson
    # pmf is unimodal: the mode, then its neighbours).
    counts = sorted(range(top + 1), key=lambda c: (-_pmf(c, mean), c))[:max_ports]
    ports: list[int] = []
    for c in counts:
        p = predict_ports(probe.last, probe.delta, offset + c, 0, port_range)[0]
        if p not in ports:
            ports.append(p)
    if jitter:
        for p in predict_ports(probe.last, probe.delta, offset + counts[0], 1, port_range):
            if p not in ports and len(ports) < max_ports:
                ports.append(p)
    return Window(tuple(ports[:max_ports]), offset, mean, sum(_pmf(c, mean) for c in counts))


def _pmf(k: int, mean: float) -> float:
    return poisson_cdf(k, mean) - poisson_cdf(k - 1, mean)


def predicted_burst(
    stun_servers: Sequence[Address],
    peer: Address,
    *,
    gap: float = BURST_GAP,
    resends: int = 10,
    interval: float = CHECK_INTERVAL,
    socket: int = 1,
) -> list[Send]:
    """The sequential side's burst on a fresh ``socket``: samples, then the target flow.

    Every STUN server must be a distinct destination (each is one allocation); the target check
    follows the last sample by ``gap`` and is re-sent on the same flow every ``interval``
    (keeps the pinhole open, and gets through once the peer's window check opened its filter).
    """
    dests = list(dict.fromkeys(stun_servers))
    if len(dests) < 2:
        raise ValueError("need at least 2 distinct STUN servers to sample a sequential NAT")
    if peer in dests:
        raise ValueError("the peer endpoint must differ from the sampling destinations")
    out = [Send(i * gap, socket, d, "sample") for i, d in enumerate(dests)]
    t0 = len(dests) * gap
    out += [Send(t0 + k * interval, socket, peer, "target") for k in range(max(1, resends))]
    return out


def predicting_schedule(
    peer_ip: str,
    window: Window,
    *,
    checks_per_port: int = CHECKS_PER_PORT,
    interval: float = CHECK_INTERVAL,
    pace: float = CHECK_PACE,
    max_checks: int = MAX_CHECKS,
    socket: int = 0,
) -> list[Send]:
    """An endpoint-independent side's checks to the window: rounds ``interval`` apart, each
    round sweeping the window most likely port first, paced ``pace`` apart; capped."""
    checks_per_port = max(1, min(checks_per_port, CHECKS_PER_PORT + 2))
    sweep = len(window.ports) * pace
    step = max(interval, sweep)
    out: list[Send] = []
    for r in range(checks_per_port):
        for i, port in enumerate(window.ports):
            if len(out) >= max_checks:
                return out
            out.append(Send(r * step + i * pace, socket, (peer_ip, port), "check"))
    return out


def mutual_schedule(
    peer: SequentialProbe,
    *,
    peer_churn: float,
    flows_per_sweep: int = 4,
    sweeps: int = 3,
    controlling: bool,
    checks_per_port: int = CHECKS_PER_PORT,
    interval: float = CHECK_INTERVAL,
    pace: float = CHECK_PACE,
    socket: int = 0,
    socket_per_flow: bool = False,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
) -> list[Send]:
    """Both sides sequential (rule 3): our k-th new flow goes to the peer's k-th flow's port.

    ``peer_churn`` = expected allocations by others on the peer's NAT between its last sample
    and its first flow (both sides start at the agreed moment). Sweep s covers hypothesis
    e_s in 0, +1, -1, +2, ... for the *combined* churn error; only the controlling side shifts
    its targets by e_s, so the two sides' hypotheses never cancel out. Flow indices run on
    across sweeps (each sweep's own flows consumed ports on both NATs).

    ``socket_per_flow``: flow k is sent from socket ``socket + k - 1`` (its own fresh socket)
    instead of every flow from ``socket``. Then every flow is one allocation even when two
    sweeps' hypotheses name the same destination port (from one socket a repeated destination
    allocates nothing, and the count of flows would drift from the peer's).
    """
    sweeps = max(1, min(sweeps, MAX_SWEEPS))
    flows_per_sweep = max(1, flows_per_sweep)
    hyps = [0]
    k = 1
    while len(hyps) < sweeps:
        hyps.append(k)
        if len(hyps) < sweeps:
            hyps.append(-k)
        k += 1
    base = round(peer_churn)
    sweep_time = max(interval * checks_per_port, flows_per_sweep * pace)
    out: list[Send] = []
    for s, e in enumerate(hyps):
        shift = base + (e if controlling else 0)
        for i in range(flows_per_sweep):
            flow = s * flows_per_sweep + i + 1  # our flow index since the last sample
            port = predict_ports(peer.last, peer.delta, flow + shift, 0, port_range)[0]
            for r in range(checks_per_port):
                t = s * sweep_time + r * interval + i * pace
                sock = socket + flow - 1 if socket_per_flow else socket
                out.append(Send(t, sock, (peer.external_ip, port), "check"))
    out.sort()
    return out[:MAX_CHECKS]
