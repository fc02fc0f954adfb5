"""Compare two sim matrix runs trial by trial (the refactoring oracle).

Usage: python bench/oracle_compare.py BEFORE/trials.jsonl AFTER/trials.jsonl [--json OUT]

For every (pair, trial) both runs have: is the outcome (path, strategy) the same, and how did
time to direct move. Per cell: p50/p95 time to direct before and after, and the direct rate with
its Wilson 95% interval before and after. Exit status 1 if any outcome differs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from typing import Any

from punchthrough.traversal.hardnat.stats import wilson_interval


def load(path: str) -> dict[tuple[str, str, int], dict[str, Any]]:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["a"], r["b"], r["trial"]): r for r in rows}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    before, after = load(args.before), load(args.after)
    common = sorted(set(before) & set(after))
    cells: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for key in common:
        cells[key[:2]].append((before[key], after[key]))
    differ = []
    out_cells = []
    for (a, b), trials in cells.items():
        same = [
            x
            for x in trials
            if (x[0]["path"], x[0]["strategy"]) == (x[1]["path"], x[1]["strategy"])
        ]
        for x, y in trials:
            if (x["path"], x["strategy"]) != (y["path"], y["strategy"]):
                differ.append(
                    (a, b, x["trial"], x["path"], x["strategy"], y["path"], y["strategy"])
                )
        t_before = [x["direct_ms"] for x, _ in trials if x["direct_ms"] is not None]
        t_after = [y["direct_ms"] for _, y in trials if y["direct_ms"] is not None]
        moved = [
            y["direct_ms"] - x["direct_ms"]
            for x, y in trials
            if x["direct_ms"] is not None and y["direct_ms"] is not None
        ]
        n = len(trials)
        db = sum(1 for x, _ in trials if x["path"] == "direct")
        da = sum(1 for _, y in trials if y["path"] == "direct")
        out_cells.append(
            {
                "a": a,
                "b": b,
                "trials": n,
                "same_outcome": len(same),
                "direct_before": db,
                "direct_after": da,
                "ci95_before": wilson_interval(db, n),
                "ci95_after": wilson_interval(da, n),
                "p50_before_ms": pct(t_before, 0.5),
                "p50_after_ms": pct(t_after, 0.5),
                "p95_before_ms": pct(t_before, 0.95),
                "p95_after_ms": pct(t_after, 0.95),
                "direct_ms_changed": sum(1 for m in moved if abs(m) > 1e-9),
                "max_abs_change_ms": max((abs(m) for m in moved), default=0.0),
                "median_change_ms": statistics.median(moved) if moved else 0.0,
            }
        )
    print(f"{len(common)} trials compared ({len(before)} before, {len(after)} after)")
    print(
        f"{'cell':32} {'same':>9} {'direct b/a':>11} "
        f"{'p50 b/a ms':>14} {'p95 b/a ms':>14} {'moved':>6}"
    )
    for c in out_cells:
        print(
            f"{c['a'] + ':' + c['b']:32} {c['same_outcome']:>4}/{c['trials']:<4} "
            f"{c['direct_before']:>5}/{c['direct_after']:<5} "
            f"{c['p50_before_ms']!s:>6}/{c['p50_after_ms']!s:<7} "
            f"{c['p95_before_ms']!s:>6}/{c['p95_after_ms']!s:<7} "
            f"{c['direct_ms_changed']:>6}"
        )
    for d in differ[:50]:
        print("DIFFERS", d)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "compared": len(common),
                    "differing": len(differ),
                    "cells": out_cells,
                    "differences": [list(d) for d in differ],
                },
                f,
                indent=1,
            )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
