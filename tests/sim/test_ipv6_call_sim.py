"""Whole calls with IPv6 in the simulator: direct over IPv6 where IPv4 needs the relay, an
IPv6-only peer calling an IPv4-only one through the dual-stack relay, the matrix's --ipv6."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from punchthrough.cli.matrix_cmd import matrix
from punchthrough.matrix.runner import run_matrix
from punchthrough.matrix.sim import SimBackend
from punchthrough.scenario.call import run_call_scenario

DURATION = 3.0
HOPELESS = ("apdm-random", "apdm-random")
#: Trials of the headline cell here; the 200-trial figure is in bench/results/ipv6_sim.json.
TRIALS = 4


def test_random_nats_both_sides_go_direct_over_ipv6_through_stateful_firewalls() -> None:
    """The issue's headline: relay-only over IPv4 (both NATs random), direct over IPv6 with a
    plain simultaneous open through both firewalls, no frame lost, and the report says IPv4
    alone would have stayed on the relay."""
    for seed in range(1, TRIALS + 1):
        out = run_call_scenario(*HOPELESS, seed=seed, duration=DURATION, stacks=("dual", "dual"))
        call = out["call"]
        assert call["path"] == "direct", seed
        assert call["family"] == "ipv6"
        assert call["strategy"] == "hole-punch"
        assert call["frames_lost"] == 0
        t = call["traversal"]
        assert t["family"] == "ipv6" and t["ipv4_alone"] == "relay"
        assert "stayed on the relay" in t["ipv4_alone_reason"]
        birthday = next(s for s in t["stages"] if s["stage"] == "birthday")
        assert birthday["status"] == "skipped"  # the IPv4 plan: random x random stays relayed
        switch = [e for e in out["timeline"] if e["event"] == "path relay -> direct"]
        assert switch and "[2001:db8:2::2]" in switch[0]["reason"]


def test_the_same_pair_without_ipv6_stays_on_the_relay() -> None:
    call = run_call_scenario(*HOPELESS, seed=1, duration=DURATION)["call"]
    assert call["path"] == "relay" and call["family"] is None
    assert "ipv4_alone" not in call["traversal"]


def test_ipv6_only_calls_ipv4_only_through_the_dual_stack_relay() -> None:
    for a, b, stacks in (
        ("eim-apdf", "eim-apdf", ("ipv6", "ipv4")),
        ("eim-apdf", "apdm-random", ("ipv4", "ipv6")),
    ):
        out = run_call_scenario(a, b, seed=2, duration=DURATION, stacks=stacks)
        call = out["call"]
        assert call["path"] == "relay" and call["frames_lost"] == 0
        assert call["frames_sent"] > 0
        stages = {s["stage"]: s for s in call["traversal"]["stages"]}
        for st in ("port-mapping", "port-prediction", "birthday"):
            assert stages[st]["status"] == "skipped"
            assert stages[st]["reason_code"] == "no-common-family"
        registered = [e for e in out["timeline"] if e["event"] == "registered with the relay"]
        v6_side = 0 if stacks[0] == "ipv6" else 1
        assert registered[v6_side]["relay"].startswith("2001:db8:100::20")


def test_dual_stack_both_open_prefers_ipv6_when_rtt_is_comparable() -> None:
    """Both families answer (no NAT, no firewall): IPv6 carries the call (same RTT here)."""
    call = run_call_scenario(
        "open", "eim-apdf", seed=1, duration=DURATION, stacks=("dual", "dual")
    )["call"]
    assert call["path"] == "direct" and call["family"] == "ipv6" and call["frames_lost"] == 0
    assert call["traversal"]["ipv4_alone"] == "direct"


def test_one_dual_stack_peer_changes_nothing_for_ipv4_pairs() -> None:
    """Only the caller has IPv6: its IPv6 candidates find no partner; the IPv4 cell is the same
    call as without IPv6 (same path, strategy and time to direct)."""
    base = run_call_scenario("eim-apdf", "eim-apdf", seed=5, duration=DURATION)["call"]
    one = run_call_scenario(
        "eim-apdf", "eim-apdf", seed=5, duration=DURATION, stacks=("dual", "ipv4")
    )["call"]
    assert (one["path"], one["strategy"], one["family"]) == ("direct", "hole-punch", "ipv4")
    assert base["path"] == one["path"] and base["strategy"] == one["strategy"]
    assert one["frames_lost"] == 0


def test_matrix_ipv6_dimension(tmp_path: Path) -> None:
    run = run_matrix(SimBackend(duration=DURATION, seed=3, ipv6="both"), [HOPELESS], 2)
    (cell,) = run.to_json()["cells"]
    assert cell["direct"] == 2 and cell["direct_ipv6"] == 2 and cell["frames_lost"] == 0
    assert all(r.family == "ipv6" for r in run.results)
    assert any("IPv6 (both)" in n for n in run.notes)
    plain = run_matrix(SimBackend(duration=DURATION, seed=3), [HOPELESS], 1).to_json()["cells"]
    assert plain[0]["direct"] == 0 and "direct_ipv6" not in plain[0]

    app = typer.Typer(add_completion=False)
    app.command()(matrix)
    out = tmp_path / "m"
    args = ["--pairs", "apdm-random:apdm-random", "--trials", "1", "--duration", "2"]
    res = CliRunner().invoke(app, [*args, "--ipv6", "a", "--out", str(out)])
    assert res.exit_code == 0, res.output
    (row,) = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    assert row["path"] == "relay"  # only the caller has IPv6: nothing to pair it with
    bad = CliRunner().invoke(app, [*args, "--ipv6", "sometimes", "--out", str(out)])
    assert bad.exit_code != 0 and "--ipv6" in bad.output
