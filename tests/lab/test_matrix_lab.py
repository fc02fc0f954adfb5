"""The matrix on real kernel NATs: relay, `listen --echo` and `connect --json` per trial.

One short cell (two trials of 2 s calls) keeps this under a minute. The cone pair's outcome is
whatever the system achieves today (relay before issue 5 lands, direct after), so the test
checks the harness: every trial produced a call, nothing was lost, the cell adds up, and the
lab is gone afterwards.
"""

from __future__ import annotations

import subprocess

import pytest

from punchthrough.matrix.lab import LabBackend
from punchthrough.matrix.report_html import render_html
from punchthrough.matrix.runner import run_matrix

pytestmark = pytest.mark.lab

PAIR = ("eim-apdf", "eim-apdf")  # two hosts with the same profile: one router each


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_lab_matrix_cell_runs_real_calls_and_cleans_up() -> None:
    backend = LabBackend(duration=2.0, requested_rtt_ms=40.0)
    run = run_matrix(backend, [PAIR], 2)
    (prefix,) = backend.prefixes
    assert not {n for n in _namespaces() if n.startswith(f"{prefix}-")}  # lab torn down
    errors = [r.error for r in run.results if r.error]
    assert not errors, errors
    for r in run.results:
        assert r.path in ("relay", "direct") and r.frames_sent == 100 and r.frames_lost == 0
        assert r.connected_ms is not None and r.connected_ms < 5000
    doc = run.to_json()
    assert doc["backend"] == "lab" and doc["rtt_ms"] == 40.0  # applied by the router delayers
    assert any("NFQUEUE" in n for n in run.notes)
    (cell,) = doc["cells"]
    assert cell["trials"] == 2 and sum(cell["strategies"].values()) == 2
    assert cell["direct"] == sum(1 for r in run.results if r.path == "direct")
    assert render_html(doc, notes=run.notes).count('class="cell"') == 1
