"""matrix.html structure (one cell per pair, escaping, self-contained) and plot data."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from punchthrough.matrix import plots
from punchthrough.matrix.model import (
    BirthdayAttempt,
    TrialResult,
    aggregate,
    matrix_json,
    trial_error,
)
from punchthrough.matrix.report_html import rate_colour, render_html

VOID = {"meta", "br", "hr", "img", "input", "link"}


class _Checker(HTMLParser):
    """Checks tags nest and close; collects cells and text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.cells: list[dict[str, str | None]] = []
        self.empty = 0
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "td" and a.get("class") == "cell":
            self.cells.append(a)
        if tag == "td" and a.get("class") == "empty":
            self.empty += 1
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _check(page: str) -> _Checker:
    c = _Checker()
    c.feed(page)
    c.close()
    assert not c.errors, c.errors
    assert c.stack == [], c.stack
    return c


def _t(a: str, b: str, k: int, path: str = "relay", ms: float | None = None) -> TrialResult:
    return TrialResult(a, b, k, path, ms, "hole-punch" if path == "direct" else "relay", 0)


def _doc(pairs: list[tuple[str, str]], trials: list[TrialResult]) -> dict[str, Any]:
    return matrix_json("sim", 2, 40.0, aggregate(pairs, trials))


def test_html_is_well_formed_with_one_cell_per_pair() -> None:
    pairs = [("open", "open"), ("open", "eim-apdf"), ("eim-apdf", "eim-apdf")]
    trials = [
        _t("open", "open", 0, "direct", 100.0),
        _t("open", "open", 1, "direct", 120.0),
        _t("open", "eim-apdf", 0, "direct", 150.0),
        _t("open", "eim-apdf", 1),
        _t("eim-apdf", "eim-apdf", 0),
        trial_error("eim-apdf", "eim-apdf", 1, "boom"),
    ]
    page = render_html(_doc(pairs, trials), notes=["a note"], order=["open", "eim-apdf"])
    assert page.startswith("<!DOCTYPE html>")
    c = _check(page)
    assert [(x["data-a"], x["data-b"]) for x in c.cells] == pairs
    assert c.empty == 1  # the lower triangle (eim-apdf calls open) was not measured
    text = " ".join(c.text)
    assert "100%" in text and "50%" in text and "a note" in text
    assert "1 trial(s) failed" in text
    assert "p50 110 ms" in text  # (100 + 120) / 2
    # colours follow the rate: the 100 % cell is green, the 0 % cell red
    styles = [str(x["style"]) for x in c.cells]
    assert rate_colour(1.0) in styles[0] and rate_colour(0.0) in styles[2]


def test_html_is_self_contained() -> None:
    page = render_html(_doc([("a", "b")], [_t("a", "b", 0)]))
    c = _check(page)
    assert not {"script", "link", "img", "iframe"} & set(c.tags)
    assert "http://" not in page and "https://" not in page and "url(" not in page


def test_html_escapes_every_text_from_the_document() -> None:
    evil = '<script>alert("x")</script>'
    trials = [TrialResult(evil, "b&b", 0, "direct", 1.0, '"><img src=x>', 0)]
    page = render_html(_doc([(evil, "b&b")], trials), notes=["<b>bold</b>"])
    assert "<script>" not in page and "<img" not in page and "<b>bold" not in page
    c = _check(page)
    assert c.cells[0]["data-a"] == evil and c.cells[0]["data-b"] == "b&b"
    assert '"><img src=x>' in " ".join(c.text)


def test_rate_colour_clamps_and_runs_red_to_green() -> None:
    assert rate_colour(-1.0) == rate_colour(0.0) == "hsl(0, 65%, 78%)"
    assert rate_colour(2.0) == rate_colour(1.0) == "hsl(120, 65%, 78%)"


# -- plot data ---------------------------------------------------------------------------------


def test_time_to_direct_series_only_direct_timed_trials_in_pair_order() -> None:
    trials = [_t("b", "b", 0, "direct", 5.0), _t("a", "a", 0), _t("a", "b", 0, "direct", 7.0)]
    got = plots.time_to_direct_series(trials, [("a", "a"), ("a", "b"), ("b", "b")])
    assert got == [("a : b", [7.0]), ("b : b", [5.0])]


def test_birthday_data_is_p_won_within_m_probes_per_cell_and_curve_is_the_formula() -> None:
    def att(a: str, probes: int, ok: bool, est: int = 4096) -> TrialResult:
        return TrialResult(
            a,
            "y",
            0,
            "direct" if ok else "relay",
            None,
            "birthday",
            0,
            birthday=BirthdayAttempt(256, probes, est, ok),
        )

    # cell x: two won late, one lost after its whole budget, one won early
    trials = [
        att("x", 1024, True),
        att("x", 1000, True),
        att("x", 1024, False),
        att("x", 120, True),
    ]
    trials += [att("z", 10, True, est=900)]
    data = plots.birthday_data(trials, bins=8, ranges={("x", "y"): 4096})
    assert data.measured and data.max_probes == 1024
    x, z = data.curves
    assert (x.label, x.sockets, x.range_size, x.range_known) == ("x : y", 256, 4096, True)
    # every attempt counts at every m (an attack stops only when it wins or its budget ends):
    # no survivor bias, the failure weighs on every point
    assert [(p.probes, p.attempts, p.successes) for p in x.points] == [
        (128, 4, 1),
        (256, 4, 1),
        (384, 4, 1),
        (512, 4, 1),
        (640, 4, 1),
        (768, 4, 1),
        (896, 4, 1),
        (1024, 4, 3),
    ]
    assert x.points[-1].rate == 0.75 and x.points[-1].ci95[0] < 0.75 < x.points[-1].ci95[1]
    for m, p in x.curve(1024, points=11):
        assert p == pytest.approx(1 - math.exp(-256 * m / 4096))
    # no true range given: the attempts' estimate, flagged as such
    assert (z.range_size, z.range_known) == (900, False)
    assert all(p.successes == 1 for p in z.points)
    empty = plots.birthday_data([])
    assert not empty.measured and empty.max_probes == 1024


def test_plots_are_skipped_with_a_note_without_matplotlib(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(plots, "load_pyplot", lambda: None)
    report = plots.write_plots([_t("a", "b", 0, "direct", 3.0)], [("a", "b")], tmp_path)
    assert report.files == [] and "matplotlib" in report.notes[0]
    assert list(tmp_path.iterdir()) == []


def test_plots_are_pngs_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    trials = [_t("a", "b", k, "direct", 100.0 + k) for k in range(5)]
    report = plots.write_plots(trials, [("a", "b"), ("c", "c")], tmp_path)
    names = sorted(p.name for p in report.files)
    assert names == [plots.BIRTHDAY_PNG, plots.TIME_TO_DIRECT_PNG]
    for p in report.files:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("theoretical curve only" in n for n in report.notes)
    none_direct = plots.write_plots([_t("a", "b", 0)], [("a", "b")], tmp_path / "x")
    assert any("no trial ended on a direct path" in n for n in none_direct.notes)
