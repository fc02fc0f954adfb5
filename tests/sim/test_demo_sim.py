"""`make demo` = `punchthrough demo`: the whole system in the simulator, as a timeline."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from punchthrough.cli.app import app
from punchthrough.sim.scenario import run_call_scenario

runner = CliRunner()


def test_demo_json_tells_the_story_in_order() -> None:
    res = runner.invoke(app, ["demo", "--json", "--duration", "3"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    events = [e["event"] for e in data["timeline"]]
    times = [e["t_ms"] for e in data["timeline"]]
    assert times == sorted(times)
    order = [
        next(i for i, e in enumerate(events) if e.startswith(prefix))
        for prefix in (
            "netcheck",
            "registered",
            "connect to",
            "connected",
            "first frame",
            "call ended",
        )
    ]
    assert order == sorted(order)
    call = data["call"]
    assert call["frames_sent"] == 150 and call["frames_lost"] == 0
    assert data["netcheck"]["alice"]["mapping"] == "endpoint-independent"


def test_demo_is_deterministic_per_seed() -> None:
    a = run_call_scenario("eim-apdf", "apdm-random", seed=5, duration=2.0)
    b = run_call_scenario("eim-apdf", "apdm-random", seed=5, duration=2.0)
    strip = lambda r: [(e["t_ms"], e["actor"], e["event"].split("(")[0]) for e in r["timeline"]]  # noqa: E731
    assert strip(a) == strip(b)
    assert a["netcheck"]["bob"]["port_allocation"]["kind"] == "random"


def test_demo_rejects_unknown_profile() -> None:
    res = runner.invoke(app, ["demo", "--a", "nope"])
    assert res.exit_code == 2
    assert "eim-apdf" in res.output


def test_jitter_makes_seeds_differ_and_is_reported() -> None:
    runs = [
        run_call_scenario("eim-apdf", "eim-apdf", seed=s, duration=1.0, jitter_ms=8.0)
        for s in (1, 2, 3)
    ]
    assert all(r["jitter_ms"] == 8.0 for r in runs)
    rtts = {r["call"]["rtt_ms"]["p95"] for r in runs}
    assert len(rtts) > 1  # without jitter all three would be identical (tested above)
