"""Run a matrix: every pair, every trial, through a backend; collect results, aggregate.

The only stateful part of the package between the pure model and the CLI: it owns the loop
over cells and trials and the callbacks a progress display hooks into.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from punchthrough.matrix.backend import MatrixBackend
from punchthrough.matrix.model import Cell, TrialResult, aggregate, matrix_json, trial_error
from punchthrough.matrix.sim import SimBackend


@dataclass
class MatrixRun:
    """Everything a run produced: per-trial results and how they were obtained."""

    backend: str
    trials: int
    rtt_ms: float | None
    pairs: list[tuple[str, str]]
    results: list[TrialResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def cells(self) -> list[Cell]:
        return aggregate(self.pairs, self.results)

    def to_json(self) -> dict[str, Any]:
        """``matrix.json``."""
        return matrix_json(self.backend, self.trials, self.rtt_ms, self.cells)

    def trials_json(self) -> dict[str, Any]:
        """``trials.json``: the raw material (for plots, and to recompute any figure)."""
        return {
            "backend": self.backend,
            "trials": self.trials,
            "rtt_ms": self.rtt_ms,
            "notes": self.notes,
            "wall_s": round(self.wall_s, 3),
            "results": [r.to_json() for r in self.results],
        }


def run_matrix(
    backend: MatrixBackend,
    pairs: Sequence[tuple[str, str]],
    trials: int,
    *,
    on_cell: Callable[[str, str], None] | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
) -> MatrixRun:
    """Run ``trials`` trials of every pair, in order. A cell whose setup fails (a lab that does
    not build) gets error trials with the reason, and the matrix goes on."""
    if trials < 1:
        raise ValueError("trials must be >= 1")
    run = MatrixRun(backend.name, trials, backend.rtt_ms, list(pairs), notes=list(backend.notes))
    t0 = time.monotonic()
    try:
        for a, b in pairs:
            if on_cell is not None:
                on_cell(a, b)
            done = 0
            try:
                with backend.cell(a, b) as run_trial:
                    for k in range(trials):
                        result = run_trial(k)
                        run.results.append(result)
                        done += 1
                        if on_trial is not None:
                            on_trial(result)
            except Exception as exc:  # setup/teardown of one cell; its trials record why
                reason = f"cell {a}:{b} failed: {type(exc).__name__}: {exc}"
                if done == trials:  # teardown only: the trials stand, the note says why
                    run.notes.append(reason)
                for k in range(done, trials):
                    result = trial_error(a, b, k, reason)
                    run.results.append(result)
                    if on_trial is not None:
                        on_trial(result)
    finally:
        run.wall_s = time.monotonic() - t0
    return run


def run_matrix_parallel(
    backend: SimBackend,
    pairs: Sequence[tuple[str, str]],
    trials: int,
    jobs: int,
    *,
    on_trial: Callable[[TrialResult], None] | None = None,
) -> MatrixRun:
    """:func:`run_matrix` for the simulator on ``jobs`` worker processes.

    Every trial is an independent, seeded run, so the results equal the sequential ones (they
    are put back in pair and trial order); only ``on_trial`` sees them in completion order.
    """
    if trials < 1 or jobs < 1:
        raise ValueError("trials and jobs must be >= 1")
    run = MatrixRun(backend.name, trials, backend.rtt_ms, list(pairs), notes=list(backend.notes))
    order = {pair: i for i, pair in enumerate(run.pairs)}
    t0 = time.monotonic()
    try:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(backend.run_trial, a, b, k) for a, b in run.pairs for k in range(trials)
            ]
            for fut in as_completed(futures):
                result = fut.result()
                run.results.append(result)
                if on_trial is not None:
                    on_trial(result)
    finally:
        run.wall_s = time.monotonic() - t0
    run.results.sort(key=lambda r: (order[(r.a, r.b)], r.trial))
    return run
