"""PNG plots for the matrix report, when matplotlib is installed (extra ``report``).

Two figures:

- ``time_to_direct.png``: per cell, the distribution of time to direct over the trials that
  ended direct (box plot plus every point).
- ``birthday.png``: per cell with birthday attacks, the measured probability of having won
  within m probes (Wilson 95 % bars) next to the theoretical ``1 - exp(-n m / N)``, N the hard
  NAT's true port range when the backend knows it (the simulator), else the attempts' estimate.
  Without birthday data in the run, the theoretical curve alone for the default attack
  (n = 256 sockets, N = 64512 ports), with a note.

The data preparation is pure (and tested without matplotlib); only :func:`write_plots` draws.
"""

from __future__ import annotations

import importlib
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from punchthrough.matrix.model import BirthdayAttempt, TrialResult
from punchthrough.nat.allocation import DEFAULT_PORT_RANGE
from punchthrough.traversal.hardnat.plan import BIRTHDAY_PROBES, BIRTHDAY_SOCKETS
from punchthrough.traversal.hardnat.stats import success_probability, wilson_interval

#: Full port range a random NAT draws from when nothing better is known (1024..65535).
DEFAULT_RANGE_SIZE: Final = DEFAULT_PORT_RANGE[1] - DEFAULT_PORT_RANGE[0] + 1
#: Bins of the measured birthday curve (enough to see a shape at 200 trials per cell).
BIRTHDAY_BINS: Final = 8
CURVE_POINTS: Final = 200
DPI: Final = 120

TIME_TO_DIRECT_PNG: Final = "time_to_direct.png"
BIRTHDAY_PNG: Final = "birthday.png"


# -- pure data preparation ---------------------------------------------------------------------


def time_to_direct_series(
    trials: Sequence[TrialResult], pairs: Sequence[tuple[str, str]]
) -> list[tuple[str, list[float]]]:
    """(label "a : b", times in ms) per pair with at least one timed direct trial, pair order."""
    out = []
    for a, b in pairs:
        times = [
            t.direct_ms
            for t in trials
            if (t.a, t.b) == (a, b) and t.direct and t.direct_ms is not None
        ]
        if times:
            out.append((f"{a} : {b}", times))
    return out


@dataclass(frozen=True)
class BirthdayPoint:
    """Of ``attempts`` attacks, ``successes`` had won by the time ``probes`` probes were out."""

    probes: int
    attempts: int
    successes: int

    @property
    def rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.attempts)


@dataclass(frozen=True)
class BirthdayCurve:
    """One cell's birthday attacks: the measured P(won within m probes) next to the formula.

    An attack stops only when it wins or its budget ends, so "won within m probes" is known for
    every attempt at every m up to the budget: the measured points are an unbiased estimate of
    the probability the formula ``1 - exp(-n m / N)`` gives, not a survivor-biased one.
    """

    label: str
    sockets: int
    range_size: int
    #: True when ``range_size`` is the NAT's real range (the simulator's profile), False when
    #: it is the attempts' own estimate from four port samples.
    range_known: bool
    points: list[BirthdayPoint] = field(default_factory=list)

    @property
    def attempts(self) -> int:
        return self.points[0].attempts if self.points else 0

    def curve(self, top: int, points: int = CURVE_POINTS) -> list[tuple[float, float]]:
        """(m, 1 - exp(-n m / N)) for m from 0 to ``top``."""
        top = max(1, top)
        return [
            (m, success_probability(self.sockets, m, self.range_size))
            for m in (round(top * i / (points - 1)) for i in range(points))
        ]


@dataclass(frozen=True)
class BirthdayData:
    """Every cell's curve (none: the formula alone for the default attack)."""

    max_probes: int
    curves: list[BirthdayCurve] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return bool(self.curves)


def birthday_data(
    trials: Sequence[TrialResult],
    bins: int = BIRTHDAY_BINS,
    ranges: Mapping[tuple[str, str], int] | None = None,
) -> BirthdayData:
    """Per cell with birthday attempts: P(won within m probes) at ``bins`` evenly spaced m.

    ``ranges`` gives a cell's true port-range size N when the backend knows it; otherwise the
    curve uses the median of the attempts' own estimates (and says so)."""
    cells: dict[tuple[str, str], list[BirthdayAttempt]] = {}
    for t in trials:
        if t.birthday is not None:
            cells.setdefault((t.a, t.b), []).append(t.birthday)
    if not cells:
        return BirthdayData(BIRTHDAY_PROBES)
    top = max(x.probes for attempts in cells.values() for x in attempts)
    grid = sorted({max(1, math.ceil(top * k / bins)) for k in range(1, bins + 1)})
    curves = []
    for (a, b), attempts in cells.items():
        sockets = max(1, round(statistics.median(x.sockets for x in attempts)))
        known = (ranges or {}).get((a, b))
        sizes = [x.range_size for x in attempts if x.range_size]
        size = known or (round(statistics.median(sizes)) if sizes else DEFAULT_RANGE_SIZE)
        points = [
            BirthdayPoint(m, len(attempts), sum(1 for x in attempts if x.success and x.probes <= m))
            for m in grid
        ]
        curves.append(BirthdayCurve(f"{a} : {b}", sockets, max(1, size), known is not None, points))
    return BirthdayData(top, curves)


# -- drawing -----------------------------------------------------------------------------------


def load_pyplot() -> Any | None:
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return None
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


@dataclass
class PlotReport:
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _time_to_direct(
    plt: Any, series: list[tuple[str, list[float]]], path: Path, title: str
) -> None:
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(series) + 1.6))
    try:
        labels = [label for label, _ in series]
        data = [times for _, times in series]
        try:  # matplotlib >= 3.10 spells it orientation=; `vert` is deprecated there
            ax.boxplot(data, orientation="horizontal", showfliers=False)
        except TypeError:
            ax.boxplot(data, vert=False, showfliers=False)
        for i, times in enumerate(data, start=1):
            ax.scatter(times, [i] * len(times), s=8, alpha=0.5, color="tab:blue")
        ax.set_yticks(range(1, len(labels) + 1), labels)
        ax.invert_yaxis()
        ax.set_xlabel("time to direct (ms from connect)")
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def _birthday(plt: Any, data: BirthdayData, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    try:
        if not data.measured:
            default = BirthdayCurve("default", BIRTHDAY_SOCKETS, DEFAULT_RANGE_SIZE, True)
            xs, ys = zip(*default.curve(data.max_probes), strict=True)
            ax.plot(
                xs,
                ys,
                color="tab:gray",
                label=f"1 - exp(-n m / N), n = {default.sockets}, N = {default.range_size}",
            )
            ax.set_title("birthday attack: theory only (no birthday attempts in this run)")
        for i, c in enumerate(data.curves):
            color = f"C{i % 10}"
            xs, ys = zip(*c.curve(data.max_probes), strict=True)
            n_text = f"N = {c.range_size}" + ("" if c.range_known else " (estimated)")
            ax.plot(
                xs,
                ys,
                color=color,
                alpha=0.6,
                label=f"{c.label}: theory, n = {c.sockets}, {n_text}",
            )
            ax.errorbar(
                [p.probes for p in c.points],
                [p.rate for p in c.points],
                yerr=[
                    [p.rate - p.ci95[0] for p in c.points],
                    [p.ci95[1] - p.rate for p in c.points],
                ],
                fmt="o",
                color=color,
                capsize=3,
                label=f"{c.label}: measured, {c.attempts} attempts (Wilson 95%)",
            )
        if data.measured:
            ax.set_title(
                "birthday attack: P(direct within m probes), measured and 1 - exp(-n m / N)"
            )
        ax.set_xlabel("probes sent by the easy side (m)")
        ax.set_ylabel("P(won within m probes)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def write_plots(
    trials: Sequence[TrialResult],
    pairs: Sequence[tuple[str, str]],
    out_dir: Path,
    *,
    title: str = "time to direct per NAT pair",
    birthday_ranges: Mapping[tuple[str, str], int] | None = None,
) -> PlotReport:
    """Write the PNGs that have data into ``out_dir``; the report says what was skipped, why."""
    report = PlotReport()
    plt = load_pyplot()
    if plt is None:
        report.notes.append(
            "PNG plots skipped: matplotlib is not installed (pip install 'punchthrough[report]')"
        )
        return report
    out_dir.mkdir(parents=True, exist_ok=True)
    series = time_to_direct_series(trials, pairs)
    if series:
        path = out_dir / TIME_TO_DIRECT_PNG
        _time_to_direct(plt, series, path, title)
        report.files.append(path)
    else:
        report.notes.append(f"{TIME_TO_DIRECT_PNG} skipped: no trial ended on a direct path")
    data = birthday_data(trials, ranges=birthday_ranges)
    path = out_dir / BIRTHDAY_PNG
    _birthday(plt, data, path)
    report.files.append(path)
    if not data.measured:
        report.notes.append(
            f"{BIRTHDAY_PNG}: theoretical curve only (no birthday attempts reported in this run)"
        )
    return report
