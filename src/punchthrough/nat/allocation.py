"""Port-allocation classification and port prediction (phase A of the hard-NAT plan).

Pure functions: they take observed external ports (in the order the NAT allocated them, i.e. the
order our probes left the socket) and say how the NAT picks ports. Port prediction (phase B) and
the birthday attack (phase C) are planned from this answer, so it must say UNKNOWN rather than
guess when the evidence is thin.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

#: The range a NAT is assumed to allocate from when nothing better is known: Linux netfilter's
#: masquerade default (nf_nat_core picks from 1024-65535 for sources above 1023).
DEFAULT_PORT_RANGE: tuple[int, int] = (1024, 65535)

#: Fewer samples than this cannot tell a pattern from chance (two points always form a line).
MIN_SAMPLES = 3

#: Allocation jitter tolerated around a multiple of delta. Some NATs (and races between our own
#: probes) shift a port by one; a tolerance of 1 keeps random ports from matching by accident
#: (3 candidate values out of ~64k per step).
JITTER = 1

#: Most ports other flows may take between two of our samples and still count as "sequential
#: with churn". Our samples leave within milliseconds of each other, so even a busy CGNAT hands
#: out only a few ports in between; bounding churn in ports (not in steps of delta) is what keeps
#: a coincidence like 2728 = 11 * 248 in random ports from reading as "delta 248".
MAX_CHURN_PORTS = 32

#: Largest |delta| we call sequential. Beyond this the "next port" is no easier to hit than random.
MAX_DELTA = 1024

#: Share of the intervals that must fit the chosen delta (majority rule for noisy sequences).
MAJORITY = 0.6


class PortAllocation(enum.Enum):
    """How a NAT chooses the external port for a new mapping."""

    #: One external port for every destination (the PRD's "PortPreserving"; this is really
    #: endpoint-independent mapping; whether it equals the local port is reported separately).
    PORT_PRESERVING = "port-preserving"
    #: Each new mapping gets the previous port plus a fixed signed delta.
    SEQUENTIAL = "sequential"
    #: No usable pattern: only the birthday attack can find the port.
    RANDOM = "random"
    #: Not enough evidence.
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class AllocationResult:
    """The verdict on a port sequence, with what it rests on."""

    kind: PortAllocation
    delta: int | None
    confidence: float
    port_range: tuple[int, int] | None
    ports: tuple[int, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "delta": self.delta,
            "ports": list(self.ports),
            "confidence": round(self.confidence, 3),
            "port_range": list(self.port_range) if self.port_range else None,
        }


def _wrap_diff(diff: int, span: int) -> int:
    """Bring a port difference into (-span/2, span/2]: a wrap at the top of the range is a step."""
    diff %= span
    if diff > span // 2:
        diff -= span
    return diff


#: Costs of explaining one observed step with a candidate delta (a minimum-description rule):
#: every port skipped by churn costs 1, a jittered step 2 (jitter is rarer than churn), a step
#: the delta cannot explain 4. So [2, 2, 3, 1, 2, 2, 2] reads as delta 2 with two jitters (cost 4),
#: not delta 1 with many skips (7), and [2, 4, 2, 2] as delta 2 with one churned port.
CHURN_COST = 1.0
JITTER_COST = 2.0
OUTLIER_COST = 4.0


def _step_cost(diff: int, delta: int) -> float | None:
    """Cheapest way to explain ``diff`` as k steps of ``delta`` plus jitter; None if impossible."""
    if delta == 0 or diff == 0:
        return None
    best: float | None = None
    centre = round(diff / delta)
    for steps in (centre - 1, centre, centre + 1):
        if steps < 1 or (steps - 1) * abs(delta) > MAX_CHURN_PORTS:
            continue
        off = abs(diff - steps * delta)
        if off > JITTER:
            continue
        cost = (steps - 1) * CHURN_COST + off * JITTER_COST
        if best is None or cost < best:
            best = cost
    return best


def _score(diffs: Sequence[int], delta: int) -> tuple[float, int]:
    """(total cost, intervals explained) of reading ``diffs`` as steps of ``delta``."""
    total = 0.0
    explained = 0
    for d in diffs:
        cost = _step_cost(d, delta)
        if cost is None:
            total += OUTLIER_COST
        else:
            total += cost
            explained += 1
    return total, explained


def classify_port_allocation(
    ports: Sequence[int], port_range: tuple[int, int] = DEFAULT_PORT_RANGE
) -> AllocationResult:
    """Classify external ports observed from one local socket towards distinct destinations.

    ``ports`` must be in allocation order. ``port_range`` is the range the NAT is believed to
    allocate from; it only matters for wrap-around at its top.
    """
    ports = tuple(int(p) for p in ports)
    observed = (min(ports), max(ports)) if ports else None
    if len(ports) < MIN_SAMPLES:
        return AllocationResult(PortAllocation.UNKNOWN, None, 0.0, observed, ports)

    n = len(ports)
    # Enough evidence grows with the sample count; 5 samples is what netcheck takes by default.
    evidence = min(1.0, (n - 1) / 4)

    _top_port, top_count = Counter(ports).most_common(1)[0]
    if top_count == n or (top_count / n >= MAJORITY and top_count >= MIN_SAMPLES):
        return AllocationResult(
            PortAllocation.PORT_PRESERVING, 0, evidence * top_count / n, observed, ports
        )

    # A port seen before is an existing mapping reused (address-dependent mapping sends every
    # destination on one IP through one port), not a new allocation: only new ports are steps.
    fresh = tuple(dict.fromkeys(ports))
    if len(fresh) < MIN_SAMPLES:
        return AllocationResult(PortAllocation.UNKNOWN, None, 0.0, observed, ports)
    span = port_range[1] - port_range[0] + 1
    diffs = [_wrap_diff(b - a, span) for a, b in itertools.pairwise(fresh)]
    # Candidate deltas: every observed step and its divisors (a delta may never be observed
    # directly when churn hit every step, e.g. steps 8, 8, 12 for delta 4).
    candidates = {
        d // k
        for d in diffs
        for k in range(1, MAX_CHURN_PORTS + 2)
        if d != 0 and d % k == 0 and abs(d // k) <= MAX_DELTA
    }
    # Also consider the jitter neighbours of each observed step (a true delta may never appear
    # exactly when every step was jittered or churned).
    candidates |= {c + j for c in candidates for j in (-JITTER, JITTER) if c + j != 0}
    # Among the deltas that explain a majority of the steps, the cheapest explanation wins.
    need = max(MIN_SAMPLES - 1, math.ceil(MAJORITY * len(diffs)))
    best: tuple[float, int, int] | None = None  # (cost, |delta|, delta): lowest wins
    best_share = 0.0
    for delta in candidates:
        cost, explained = _score(diffs, delta)
        best_share = max(best_share, explained / len(diffs))
        if explained < need:
            continue
        key = (cost, abs(delta), delta)
        if best is None or key < best:
            best, share = key, explained / len(diffs)
    if best is not None:
        return AllocationResult(
            PortAllocation.SEQUENTIAL, best[2], evidence * share, observed, ports
        )

    if len(fresh) < MIN_SAMPLES + 1:
        # Three scattered ports could be a churned sequence with big gaps: do not guess.
        return AllocationResult(PortAllocation.UNKNOWN, None, 0.0, observed, ports)
    return AllocationResult(
        PortAllocation.RANDOM, None, evidence * (1 - best_share), observed, ports
    )


def predict_ports(
    last_port: int,
    delta: int,
    offset: int = 1,
    spread: int = 2,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
) -> list[int]:
    """Ports a sequential NAT is likely to allocate next, most likely first.

    The centre is ``last_port + delta * offset`` (``offset`` = how many allocations ahead, e.g.
    counting the flows the predicting side opens itself); then alternating neighbours out to
    ``spread`` on each side, all wrapped into ``port_range``. No duplicates, even when the window
    is wider than the range.
    """
    lo, hi = port_range
    if lo > hi or lo < 1 or hi > 65535:
        raise ValueError(f"port_range {port_range} is not a valid range of UDP ports")
    if not 1 <= last_port <= 65535:
        raise ValueError(f"last_port {last_port} is not a UDP port")
    # A port seen outside the assumed range proves the range wrong: widen it rather than wrap a
    # prediction for port 100 to the top of 1024-65535.
    lo, hi = min(lo, last_port), max(hi, last_port)
    if spread < 0:
        raise ValueError("spread must be >= 0")
    span = hi - lo + 1

    def wrap(p: int) -> int:
        return lo + (p - lo) % span

    centre = last_port + delta * offset
    out: list[int] = []
    seen: set[int] = set()
    order = [0]
    for k in range(1, spread + 1):
        # Lean the first neighbour in the direction of travel: late allocations (churn) push the
        # real port further along, not back.
        ahead = k if delta >= 0 else -k
        order += [ahead, -ahead]
    for k in order:
        p = wrap(centre + k)
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
