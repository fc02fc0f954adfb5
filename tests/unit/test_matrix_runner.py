"""The matrix runner (fake backends) and the CLI's argument handling (no trials run)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import typer
from typer.testing import CliRunner

from punchthrough.cli.matrix_cmd import matrix
from punchthrough.matrix.backend import TrialRunner
from punchthrough.matrix.model import TrialResult
from punchthrough.matrix.runner import run_matrix


class FakeBackend:
    """Direct on even trials; cell ("bad", *) fails to set up; cell ("leaky", *) on teardown."""

    name = "fake"
    rtt_ms = 12.0
    notes = ["fake backend"]

    def __init__(self) -> None:
        self.open_cells: list[tuple[str, str]] = []
        self.closed_cells: list[tuple[str, str]] = []

    @contextlib.contextmanager
    def cell(self, a: str, b: str) -> Iterator[TrialRunner]:
        if a == "bad":
            raise RuntimeError("lab did not build")
        self.open_cells.append((a, b))
        try:

            def trial(k: int) -> TrialResult:
                direct = k % 2 == 0
                return TrialResult(
                    a,
                    b,
                    k,
                    "direct" if direct else "relay",
                    10.0 * (k + 1) if direct else None,
                    "hole-punch" if direct else "relay",
                    0,
                )

            yield trial
        finally:
            self.closed_cells.append((a, b))
        if a == "leaky":
            raise RuntimeError("teardown failed")


def test_runner_runs_every_trial_of_every_pair_in_order() -> None:
    backend = FakeBackend()
    seen: list[tuple[str, str, int]] = []
    cells: list[tuple[str, str]] = []
    run = run_matrix(
        backend,
        [("x", "y"), ("y", "y")],
        3,
        on_cell=lambda a, b: cells.append((a, b)),
        on_trial=lambda r: seen.append((r.a, r.b, r.trial)),
    )
    assert cells == [("x", "y"), ("y", "y")] == backend.closed_cells
    assert seen == [(a, b, k) for a, b in cells for k in range(3)]
    doc = run.to_json()
    assert (doc["backend"], doc["trials"], doc["rtt_ms"]) == ("fake", 3, 12.0)
    assert [(c["direct"], c["p50_direct_ms"]) for c in doc["cells"]] == [(2, 20.0), (2, 20.0)]
    assert run.trials_json()["notes"] == ["fake backend"]
    assert len(run.trials_json()["results"]) == 6


def test_a_cell_that_cannot_be_set_up_records_error_trials_and_the_matrix_goes_on() -> None:
    run = run_matrix(FakeBackend(), [("bad", "x"), ("x", "x")], 2)
    bad, good = run.cells
    assert bad.trials == 2 and bad.direct == 0 and bad.strategies == {"error": 2}
    assert all("lab did not build" in (r.error or "") for r in run.results[:2])
    assert good.trials == 2 and good.direct == 1


def test_a_teardown_failure_keeps_the_trials_and_adds_a_note() -> None:
    run = run_matrix(FakeBackend(), [("leaky", "x")], 2)
    assert run.cells[0].trials == 2 and "error" not in run.cells[0].strategies
    assert any("teardown failed" in n for n in run.notes)


def test_runner_rejects_zero_trials() -> None:
    with pytest.raises(ValueError):
        run_matrix(FakeBackend(), [("x", "y")], 0)


# -- CLI argument handling ---------------------------------------------------------------------

cli = CliRunner()


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(matrix)
    return app


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--backend", "moon"], "sim, lab"),
        (["--pairs", "eim-apdf:nope"], "unknown NAT profile"),
        (["--pairs", "eim-apdf"], "A:B"),
        (["--trials", "0"], "trials"),
    ],
)
def test_cli_rejects_bad_arguments_before_running_anything(
    args: list[str], needle: str, tmp_path: object
) -> None:
    res = cli.invoke(_app(), [*args, "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert needle in res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="only a non-root user is refused the lab")
def test_cli_lab_backend_needs_root(tmp_path: object) -> None:
    res = cli.invoke(_app(), ["--backend", "lab", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "root" in res.output
