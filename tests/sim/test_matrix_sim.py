"""The matrix on the simulator: real system, virtual time, a couple of short cells."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from punchthrough.cli.matrix_cmd import matrix
from punchthrough.matrix.runner import MatrixRun, run_matrix, run_matrix_parallel
from punchthrough.matrix.sim import SimBackend, one_way_ms
from punchthrough.scenario.call import run_call_scenario

DURATION = 2.0
#: A cone pair goes direct by hole punching; random vs random can never go direct (the design's
#: matrix: stay on the relay), so both assertions hold whatever later stages are added.
CONE = ("eim-apdf", "eim-apdf")
HOPELESS = ("apdm-random", "apdm-random")


def test_sim_matrix_reports_direct_for_cones_and_relay_for_random_pairs() -> None:
    backend = SimBackend(rtt_ms=40.0, duration=DURATION, seed=3)
    run = run_matrix(backend, [CONE, HOPELESS], 2)
    cone, hopeless = run.to_json()["cells"]
    assert (cone["trials"], cone["direct"], cone["success_rate"]) == (2, 2, 1.0)
    assert cone["strategies"] == {"hole-punch": 2} and cone["frames_lost"] == 0
    # Direct needs the relayed round trip of setup (80 ms) and a direct one (40 ms) at least.
    assert cone["p50_direct_ms"] is not None and 120.0 <= cone["p50_direct_ms"] < 2000.0
    assert hopeless["direct"] == 0 and hopeless["strategies"] == {"relay": 2}
    assert hopeless["p50_direct_ms"] is None and hopeless["ci95"][1] < 1.0
    assert all(r.seed == 3_000_000 + r.trial for r in run.results)


def test_sim_matrix_is_deterministic_per_seed() -> None:
    def facts(seed: int) -> list[tuple[object, ...]]:
        run = run_matrix(SimBackend(duration=DURATION, seed=seed), [CONE], 2)
        return [(r.path, r.direct_ms, r.strategy, r.frames_lost, r.seed) for r in run.results]

    assert facts(9) == facts(9)


def test_parallel_sim_matrix_equals_the_sequential_one() -> None:
    backend = SimBackend(duration=DURATION, seed=4)
    pairs = [CONE, HOPELESS]
    seq = run_matrix(backend, pairs, 2)
    par = run_matrix_parallel(backend, pairs, 2, jobs=2)
    assert par.to_json() == seq.to_json()

    def strip(run: MatrixRun) -> list[tuple[object, ...]]:
        return [(r.a, r.b, r.trial, r.path, r.direct_ms, r.seed, r.stages) for r in run.results]

    assert strip(par) == strip(seq)


def test_rtt_option_gives_the_direct_path_that_round_trip_time() -> None:
    """The documented mapping: one_way = rtt / 4 makes the direct RTT exactly rtt (relay 2x)."""
    for rtt in (20.0, 60.0):
        call = run_call_scenario(*CONE, seed=1, duration=DURATION, one_way_ms=one_way_ms(rtt))
        assert call["call"]["path"] == "direct"
        assert call["call"]["rtt_ms"]["p50"] == rtt  # most frames travel the direct path
        relayed = run_call_scenario(
            *HOPELESS, seed=1, duration=DURATION, one_way_ms=one_way_ms(rtt)
        )
        assert relayed["call"]["rtt_ms"]["p50"] == 2 * rtt


def test_matrix_command_writes_json_html_and_trials(tmp_path: Path) -> None:
    app = typer.Typer(add_completion=False)
    app.command()(matrix)
    out = tmp_path / "m"
    res = CliRunner().invoke(
        app,
        [
            "--pairs",
            "eim-apdf:eim-apdf,apdm-random:apdm-random",
            "--trials",
            "2",
            "--duration",
            str(DURATION),
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "matrix.json").read_text())
    assert (doc["backend"], doc["trials"], doc["rtt_ms"]) == ("sim", 2, 40.0)
    assert [(c["a"], c["b"], c["direct"]) for c in doc["cells"]] == [(*CONE, 2), (*HOPELESS, 0)]
    assert json.loads(res.stdout) == doc  # --json prints the document, and only it
    lines = (out / "trials.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["strategy"] == "hole-punch"
    page = (out / "matrix.html").read_text()
    assert page.count('class="cell"') == 2
