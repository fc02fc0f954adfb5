"""Pure aggregation for the NAT pair matrix: trial results in, ``matrix.json`` cells out.

No I/O here. A *trial* is one call between a peer behind NAT profile ``a`` (the caller) and one
behind ``b``; a *cell* aggregates the trials of one pair. The JSON shape is the one issue 7 fixes
so other tools can read it::

    {"backend", "trials", "rtt_ms",
     "cells": [{"a", "b", "trials", "direct", "success_rate", "ci95": [lo, hi],
                "p50_direct_ms", "p95_direct_ms", "strategies": {STRATEGY: COUNT},
                "frames_lost": TOTAL}]}

Definitions (the matrix reports what the system achieved, nothing it merely attempted):

- ``direct``: trials whose call *ended* on path ``"direct"`` (a call that went direct and fell
  back to the relay for good counts as relayed).
- time to direct: the call result's ``direct_ms`` when present, else the first path change to
  ``direct`` (``path_changes[i].t_ms``), else the traversal report's ``direct_ms``; only trials
  that ended direct contribute to p50/p95.
- strategy: for a direct trial the call result's ``strategy`` (or the traversal report's;
  ``"direct"`` when neither names one); ``"relay"`` for a trial that ended on the relay;
  ``"error"`` for a trial that produced no call result (the reason is kept per trial).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from punchthrough.traversal.hardnat.stats import wilson_interval

PATH_DIRECT: Final = "direct"
STRATEGY_RELAY: Final = "relay"
STRATEGY_ERROR: Final = "error"
#: Direct, but the result named no strategy (an older ``connect --json``).
STRATEGY_UNNAMED: Final = "direct"

#: Trial seeds: ``seed * SEED_STRIDE + trial``. The stride keeps the trial seeds of two base
#: seeds apart for any trial count a matrix will ever run (< 1e6 per cell).
SEED_STRIDE: Final = 1_000_000

#: Digits kept in JSON for milliseconds and rates (virtual time has 0.1 ms resolution anyway).
MS_DIGITS: Final = 1
RATE_DIGITS: Final = 4


#: ``family`` of a trial that went direct over IPv6.
IPV6_FAMILY: Final = "ipv6"


def trial_seed(seed: int, trial: int) -> int:
    """The simulator seed of trial ``trial`` (0-based) of a matrix run with base ``seed``.

    Every cell uses the same trial seeds (common random numbers): a difference between two cells
    then comes from the NATs, not from one cell drawing luckier seeds.
    """
    if trial < 0 or trial >= SEED_STRIDE:
        raise ValueError(f"trial index must be 0..{SEED_STRIDE - 1}, got {trial}")
    return seed * SEED_STRIDE + trial


# -- one trial ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BirthdayAttempt:
    """What one trial's birthday stage reported: ``sockets`` pinholes, ``probes`` sent, the
    hard NAT's port-range size when known, and whether it won the direct path."""

    sockets: int
    probes: int
    range_size: int | None
    success: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "sockets": self.sockets,
            "probes": self.probes,
            "range_size": self.range_size,
            "success": self.success,
        }


@dataclass(frozen=True, slots=True)
class TrialResult:
    """One call of the matrix, reduced to what the matrix aggregates (plus context for humans)."""

    a: str
    b: str
    trial: int
    path: str | None
    direct_ms: float | None
    strategy: str
    frames_lost: int
    frames_sent: int = 0
    connected_ms: float | None = None
    seed: int | None = None
    error: str | None = None
    birthday: BirthdayAttempt | None = None
    #: ``stage: status (reason)`` per traversal stage: why a trial did not go direct.
    stages: tuple[str, ...] = ()
    wall_s: float = 0.0
    #: The direct path's address family (``ipv4`` / ``ipv6``), ``None`` on the relay.
    family: str | None = None

    @property
    def direct(self) -> bool:
        return self.path == PATH_DIRECT

    def to_json(self) -> dict[str, Any]:
        out = self._base_json()
        if self.family == IPV6_FAMILY:  # IPv4-only rows stay as they were before IPv6
            out["family"] = self.family
        return out

    def _base_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "trial": self.trial,
            "seed": self.seed,
            "path": self.path,
            "direct_ms": self.direct_ms,
            "strategy": self.strategy,
            "frames_lost": self.frames_lost,
            "frames_sent": self.frames_sent,
            "connected_ms": self.connected_ms,
            "error": self.error,
            "birthday": self.birthday.to_json() if self.birthday else None,
            "stages": list(self.stages),
            "wall_s": round(self.wall_s, 3),
        }


def _num(value: object) -> float | None:
    """A finite JSON number (bools are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: object) -> int:
    """A non-negative integer count, else 0 (results may come from another process's JSON)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(0, value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def direct_time_ms(call: Mapping[str, Any]) -> float | None:
    """When the call's direct path became active (ms from the start of the connect)."""
    explicit = _num(call.get("direct_ms"))
    if explicit is not None:
        return explicit
    for change in _list(call.get("path_changes")):
        change = _mapping(change)
        if change.get("to") == PATH_DIRECT:
            t = _num(change.get("t_ms"))
            if t is not None:
                return t
    return _num(_mapping(call.get("traversal")).get("direct_ms"))


def _birthday(call: Mapping[str, Any]) -> BirthdayAttempt | None:
    """The birthday stage's numbers, when the traversal report carries them.

    Read from the ``birthday`` entry of ``traversal.stages``: ``sockets`` (or ``n``), probes sent
    (``probes_sent``, ``probes`` or ``m``) and the port-range size (``range_size`` or ``N``).
    Anything missing: no data point (a stage that was skipped or never ran is not an attempt).
    """
    for stage in _list(_mapping(call.get("traversal")).get("stages")):
        stage = _mapping(stage)
        if stage.get("stage") != "birthday" or stage.get("status") not in ("succeeded", "failed"):
            continue
        sockets = next((_count(stage[k]) for k in ("sockets", "n") if k in stage), 0)
        probes = next((_count(stage[k]) for k in ("probes_sent", "probes", "m") if k in stage), 0)
        size = next((_count(stage[k]) for k in ("range_size", "N") if k in stage), 0)
        if sockets and probes:
            return BirthdayAttempt(
                sockets, probes, size or None, success=stage.get("status") == "succeeded"
            )
    return None


def _stages(call: Mapping[str, Any]) -> tuple[str, ...]:
    out = []
    for stage in _list(_mapping(call.get("traversal")).get("stages")):
        stage = _mapping(stage)
        name, status = _text(stage.get("stage")), _text(stage.get("status"))
        if name is None:
            continue
        reason = _text(stage.get("reason"))
        out.append(f"{name}: {status}" + (f" ({reason})" if reason else ""))
    return tuple(out)


def trial_from_call(
    a: str,
    b: str,
    trial: int,
    call: Mapping[str, Any],
    *,
    seed: int | None = None,
    wall_s: float = 0.0,
) -> TrialResult:
    """Reduce a call result (``run_echo_session`` / ``connect --json``) to a :class:`TrialResult`.

    Tolerates missing or ill-typed fields (lab results are another process's JSON): a result
    with an ``error`` and no ``path`` becomes an error trial.
    """
    path = _text(call.get("path"))
    if path is None:
        reason = _text(call.get("error")) or "call result has no path"
        return trial_error(a, b, trial, reason, seed=seed, wall_s=wall_s)
    traversal = _mapping(call.get("traversal"))
    if path == PATH_DIRECT:
        strategy = (
            _text(call.get("strategy")) or _text(traversal.get("strategy")) or STRATEGY_UNNAMED
        )
        direct_ms = direct_time_ms(call)
    else:
        strategy, direct_ms = STRATEGY_RELAY, None
    return TrialResult(
        a=a,
        b=b,
        trial=trial,
        path=path,
        direct_ms=direct_ms,
        strategy=strategy,
        frames_lost=_count(call.get("frames_lost")),
        frames_sent=_count(call.get("frames_sent")),
        connected_ms=_num(call.get("connected_ms")),
        seed=seed,
        birthday=_birthday(call),
        stages=_stages(call),
        wall_s=wall_s,
        family=_text(call.get("family")) if path == PATH_DIRECT else None,
    )


def trial_error(
    a: str, b: str, trial: int, reason: str, *, seed: int | None = None, wall_s: float = 0.0
) -> TrialResult:
    """A trial that produced no call (connect failed, a process crashed, the scenario raised)."""
    return TrialResult(
        a=a,
        b=b,
        trial=trial,
        path=None,
        direct_ms=None,
        strategy=STRATEGY_ERROR,
        frames_lost=0,
        seed=seed,
        error=reason,
        wall_s=wall_s,
    )


# -- one cell ----------------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by linear interpolation between order statistics.

    Hyndman & Fan type 7 (numpy's default), so figures match what a reader recomputes from
    ``trials.json``; None for no values.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return None
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def winning_strategy(strategies: Mapping[str, int]) -> str | None:
    """The strategy that ended most trials; on a tie a direct strategy beats relay and error,
    then alphabetical (deterministic)."""
    if not strategies:
        return None
    return min(strategies, key=lambda s: (-strategies[s], s in (STRATEGY_RELAY, STRATEGY_ERROR), s))


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True, slots=True)
class Cell:
    """The aggregate of one NAT pair (one entry of ``cells`` in ``matrix.json``)."""

    a: str
    b: str
    trials: int
    direct: int
    ci95: tuple[float, float]
    p50_direct_ms: float | None
    p95_direct_ms: float | None
    strategies: dict[str, int] = field(default_factory=dict)
    frames_lost: int = 0
    #: Trials that ended direct over IPv6 (listed in the JSON only when there are any).
    direct_ipv6: int = 0

    @property
    def success_rate(self) -> float:
        return self.direct / self.trials if self.trials else 0.0

    @property
    def winning_strategy(self) -> str | None:
        return winning_strategy(self.strategies)

    def to_json(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "trials": self.trials,
            "direct": self.direct,
            "success_rate": round(self.success_rate, RATE_DIGITS),
            "ci95": [round(self.ci95[0], RATE_DIGITS), round(self.ci95[1], RATE_DIGITS)],
            "p50_direct_ms": self.p50_direct_ms,
            "p95_direct_ms": self.p95_direct_ms,
            "strategies": dict(self.strategies),
            "frames_lost": self.frames_lost,
        } | ({"direct_ipv6": self.direct_ipv6} if self.direct_ipv6 else {})


def aggregate_cell(a: str, b: str, trials: Sequence[TrialResult]) -> Cell:
    """Aggregate the trials of pair (a, b); trials of other pairs are a caller bug."""
    for t in trials:
        if (t.a, t.b) != (a, b):
            raise ValueError(f"trial of {t.a}:{t.b} given to cell {a}:{b}")
    direct = [t for t in trials if t.direct]
    times = [t.direct_ms for t in direct if t.direct_ms is not None]
    strategies = Counter(t.strategy for t in trials)
    return Cell(
        a=a,
        b=b,
        trials=len(trials),
        direct=len(direct),
        ci95=wilson_interval(len(direct), len(trials)),
        p50_direct_ms=_round(percentile(times, 0.50), MS_DIGITS),
        p95_direct_ms=_round(percentile(times, 0.95), MS_DIGITS),
        # most common first, then by name: stable JSON for diffs
        strategies=dict(sorted(strategies.items(), key=lambda kv: (-kv[1], kv[0]))),
        frames_lost=sum(t.frames_lost for t in trials),
        direct_ipv6=sum(1 for t in direct if t.family == IPV6_FAMILY),
    )


def aggregate(pairs: Sequence[tuple[str, str]], trials: Iterable[TrialResult]) -> list[Cell]:
    """One cell per pair, in ``pairs`` order (trials of pairs not listed are ignored)."""
    by_pair: dict[tuple[str, str], list[TrialResult]] = {p: [] for p in pairs}
    for t in trials:
        bucket = by_pair.get((t.a, t.b))
        if bucket is not None:
            bucket.append(t)
    return [aggregate_cell(a, b, by_pair[(a, b)]) for a, b in pairs]


def matrix_json(
    backend: str, trials: int, rtt_ms: float | None, cells: Sequence[Cell]
) -> dict[str, Any]:
    """The ``matrix.json`` document (issue 7's schema, nothing more)."""
    return {
        "backend": backend,
        "trials": trials,
        "rtt_ms": rtt_ms,
        "cells": [c.to_json() for c in cells],
    }


# -- profiles and pairs ------------------------------------------------------------------------


def all_pairs(profiles: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair, same-same included, in profile order: (p0,p0), (p0,p1), ..."""
    return [(a, b) for i, a in enumerate(profiles) for b in profiles[i:]]


def parse_pair(text: str, known: Iterable[str]) -> tuple[str, str]:
    """``"eim-apdf:apdm-random"`` -> ("eim-apdf", "apdm-random"); ValueError naming the valid
    profiles. The order is kept: ``a`` places the call."""
    known = list(known)
    parts = text.strip().split(":")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"pair {text!r} must look like A:B (e.g. eim-apdf:apdm-random)")
    for p in parts:
        if p not in known:
            raise ValueError(f"unknown NAT profile {p!r} in {text!r}; known: {', '.join(known)}")
    return (parts[0], parts[1])


def parse_pairs(texts: Iterable[str], known: Iterable[str]) -> list[tuple[str, str]]:
    """Several ``A:B`` (also comma-separated within one argument), duplicates dropped."""
    known = list(known)
    out: list[tuple[str, str]] = []
    for text in texts:
        for item in text.split(","):
            if item.strip():
                pair = parse_pair(item, known)
                if pair not in out:
                    out.append(pair)
    return out


def profiles_of(pairs: Sequence[tuple[str, str]], order: Sequence[str]) -> list[str]:
    """The profiles appearing in ``pairs``, in ``order`` (then in first appearance)."""
    seen = {p for pair in pairs for p in pair}
    ranked = [p for p in order if p in seen]
    for pair in pairs:
        for p in pair:
            if p not in ranked:
                ranked.append(p)
    return ranked
