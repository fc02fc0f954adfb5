"""PNG plots for the matrix report, when matplotlib is installed (extra ``report``).

Two figures:

- ``time_to_direct.png``: per cell, the distribution of time to direct over the trials that
  ended direct (box plot plus every point).
- ``birthday.png``: birthday-attack success against probes sent, measured (Wilson 95 % bars
  per bin) next to the theoretical ``1 - exp(-n m / N)``. Without birthday data in the run, the
  theoretical curve alone for the default attack (n = 256 sockets, N = 64512 ports), with a note.

The data preparation is pure (and tested without matplotlib); only :func:`write_plots` draws.
"""

from __future__ import annotations

import importlib
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from punchthrough.matrix.model import TrialResult
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
class BirthdayBin:
    """Attempts whose probe count fell in [lo, hi]: how many, how many won."""

    lo: int
    hi: int
    attempts: int
    successes: int

    @property
    def centre(self) -> float:
        return (self.lo + self.hi) / 2

    @property
    def rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0

    @property
    def ci95(self) -> tuple[float, float]:
        return wilson_interval(self.successes, self.attempts)


@dataclass(frozen=True)
class BirthdayData:
    """The measured points and the parameters of the theoretical curve drawn next to them."""

    sockets: int
    range_size: int
    max_probes: int
    bins: list[BirthdayBin] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return bool(self.bins)

    def curve(self, points: int = CURVE_POINTS) -> list[tuple[float, float]]:
        """(m, 1 - exp(-n m / N)) for m from 0 to ``max_probes``."""
        top = max(1, self.max_probes)
        return [
            (m, success_probability(self.sockets, m, self.range_size))
            for m in (round(top * i / (points - 1)) for i in range(points))
        ]


def birthday_data(trials: Sequence[TrialResult], bins: int = BIRTHDAY_BINS) -> BirthdayData:
    """Bin every birthday attempt of the run by probes sent; the curve uses the median sockets
    and range size of the attempts (defaults when there are none)."""
    attempts = [t.birthday for t in trials if t.birthday is not None]
    if not attempts:
        return BirthdayData(BIRTHDAY_SOCKETS, DEFAULT_RANGE_SIZE, BIRTHDAY_PROBES)
    sockets = round(statistics.median(x.sockets for x in attempts))
    sizes = [x.range_size for x in attempts if x.range_size]
    size = round(statistics.median(sizes)) if sizes else DEFAULT_RANGE_SIZE
    top = max(x.probes for x in attempts)
    width = max(1, math.ceil(top / bins))
    counts: dict[int, list[int]] = {}
    for x in attempts:
        k = min(bins - 1, (x.probes - 1) // width) if x.probes > 0 else 0
        slot = counts.setdefault(k, [0, 0])
        slot[0] += 1
        slot[1] += int(x.success)
    binned = [
        BirthdayBin(k * width + 1, (k + 1) * width, n, s) for k, (n, s) in sorted(counts.items())
    ]
    return BirthdayData(max(1, sockets), max(1, size), top, binned)


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
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        xs, ys = zip(*data.curve(), strict=True)
        ax.plot(
            xs,
            ys,
            color="tab:gray",
            label=f"theory 1 - exp(-n m / N), n = {data.sockets}, N = {data.range_size}",
        )
        if data.measured:
            centres = [b.centre for b in data.bins]
            rates = [b.rate for b in data.bins]
            err = [
                [b.rate - b.ci95[0] for b in data.bins],
                [b.ci95[1] - b.rate for b in data.bins],
            ]
            ax.errorbar(
                centres,
                rates,
                yerr=err,
                fmt="o",
                color="tab:red",
                capsize=3,
                label=f"measured ({sum(b.attempts for b in data.bins)} attempts, Wilson 95%)",
            )
            ax.set_title("birthday attack: success against probes sent")
        else:
            ax.set_title("birthday attack: theory only (no birthday attempts in this run)")
        ax.set_xlabel("probes sent by the easy side (m)")
        ax.set_ylabel("P(direct path)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
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
    data = birthday_data(trials)
    path = out_dir / BIRTHDAY_PNG
    _birthday(plt, data, path)
    report.files.append(path)
    if not data.measured:
        report.notes.append(
            f"{BIRTHDAY_PNG}: theoretical curve only (no birthday attempts reported in this run)"
        )
    return report
