"""Connection time in the kernel lab at a stated RTT, against the round trips it needs.

A cone pair (eim-apdf behind eim-apdf, each host behind its own router) in the lab, with the
routers' NFQUEUE delay set so the peers' RTT is R on the direct AND the relayed path (each router
delays R/4 each way; each peer is R/2 from the relay and the STUN servers). Per trial, exactly as
the matrix's lab backend: conntrack flushed, a fresh relay, `listen --echo --json` on the callee,
`connect --json --duration 1.5` on the caller. Times are from the caller process's event loop
start (before Endpoint.bind): `connect --json`'s ``from_process_start_ms`` (its top-level times
count from the connect() call, the origin of every report; these include bind and registration):

- ``connected_ms``: connect() returned (relayed QUIC connection up);
- ``first_echo_ms``: the first frame came back through the relay (time to first relayed frame,
  echoed: it includes that frame's own round trip);
- ``direct_ms``: the first verified direct check (the path manager switches to it).

Theoretical minimum, in round trips of R (the peers' RTT; the relay is R/2 away):
- registration with the relay: its QUIC handshake, 1 x R/2 (the registration signs that
  connection's channel binding, which exists only once the handshake is complete). `connect`
  pipelines the rest (issue 17): RelayRegister and the call's first Initial leave in the same
  flight, candidates are gathered alongside (STUN, R/2, in parallel);
- the end-to-end QUIC handshake through the relay: the Initial reaches the callee at R/2, its
  0.5-RTT answer (Hello, candidates) is back at R         -> connected >= 1.5 R;
- the first frame and its echo through the relay: 1 R    -> first echo >= 2.5 R;
- direct: one connectivity-check request/response on the direct path once both sides know
  the candidates: 1 R after connected                      -> direct >= 2.5 R.
(Before the pipelining: + R/2 for RelayRegistered and + R/2 for STUN gathering after it.)
Measured at several R, the slope of each time against R is the number of round trips the code
actually spends (the intercept is process and loop overhead plus fixed timers); the figure to
read is slope vs the minimum count.
"""

from __future__ import annotations

import statistics
from typing import Any

PAIR = ("eim-apdf", "eim-apdf")
STATED_RTT_MS = 50.0
#: (RTT ms, trials): the stated RTT with the most trials, two more for the slope.
PLAN = [(0.0, 3), (STATED_RTT_MS, 5), (100.0, 3)]
DURATION_S = 1.5
PPS = 50.0
MIN_RTTS = {
    "connected_ms": 1.5,
    "first_echo_ms": 2.5,
    "direct_ms": 2.5,
    "direct_after_connected_ms": 1,
}


def _slope(xs: list[float], ys: list[float]) -> float | None:
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


def bench_connect_lab(plan: list[tuple[float, int]] = PLAN) -> dict[str, Any]:
    from punchthrough.lab import LabError
    from punchthrough.matrix.lab import LabCell

    rows: list[dict[str, Any]] = []
    points: dict[str, list[tuple[float, float]]] = {k: [] for k in MIN_RTTS}
    for rtt, trials in plan:
        calls: list[dict[str, Any]] = []
        errors: list[str] = []
        with LabCell(*PAIR, DURATION_S, PPS, rtt or None) as cell:
            for t in range(trials):
                try:
                    calls.append(cell.call(t))
                except LabError as e:
                    errors.append(str(e)[-300:])
        metrics: dict[str, list[float]] = {k: [] for k in MIN_RTTS}
        for c in calls:
            ps = c.get("from_process_start_ms") or {}
            called = ps.get("connect_called")
            first = c.get("first_echo_ms")
            vals = {
                "connected_ms": ps.get("connected"),
                "first_echo_ms": None if first is None or called is None else called + first,
                "direct_ms": ps.get("direct"),
            }
            if vals["direct_ms"] is not None and vals["connected_ms"] is not None:
                vals["direct_after_connected_ms"] = vals["direct_ms"] - vals["connected_ms"]
            for k, v in vals.items():
                if isinstance(v, int | float):
                    metrics[k].append(float(v))
                    points[k].append((rtt, float(v)))
        rows.append(
            {
                "rtt_ms": rtt,
                "trials": trials,
                "calls": len(calls),
                "direct": sum(1 for c in calls if c.get("path") == "direct"),
                "frames_lost": sum(int(c.get("frames_lost") or 0) for c in calls),
                "measured_call_rtt_p50_ms": [c.get("rtt_ms", {}).get("p50") for c in calls],
                "errors": errors,
                **{
                    f"{k}_median": round(statistics.median(v), 1) if v else None
                    for k, v in metrics.items()
                },
                **{f"{k}_min_theory": MIN_RTTS[k] * rtt for k in MIN_RTTS},
            }
        )
    slopes = {}
    for k, pts in points.items():
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        s = _slope(xs, ys)
        slopes[k] = {
            "round_trips_spent_slope": round(s, 2) if s is not None else None,
            "intercept_ms": round(statistics.fmean(ys) - s * statistics.fmean(xs), 1)
            if s is not None
            else None,
            "round_trips_minimum": MIN_RTTS[k],
        }
    stated = next(r for r in rows if r["rtt_ms"] == STATED_RTT_MS)
    return {
        "how": __doc__,
        "pair": list(PAIR),
        "stated_rtt_ms": STATED_RTT_MS,
        "at_stated_rtt": {
            k: {
                "median_ms": stated[f"{k}_median"],
                "theoretical_min_ms": stated[f"{k}_min_theory"],
                "ratio": round(stated[f"{k}_median"] / stated[f"{k}_min_theory"], 2)
                if stated[f"{k}_median"] and stated[f"{k}_min_theory"]
                else None,
            }
            for k in MIN_RTTS
        },
        "slopes": slopes,
        "by_rtt": rows,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(bench_connect_lab([(0.0, 1), (50.0, 1), (100.0, 1)]), indent=2))
