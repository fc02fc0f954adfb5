"""`make demo` = `punchthrough demo`: the whole system in the simulator, as a timeline."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from punchthrough.cli.app import app
from punchthrough.scenario.call import run_call_scenario

runner = CliRunner()


def test_demo_json_tells_the_story_in_order() -> None:
    """`make demo` = `punchthrough demo` with no arguments: the hard pair, the birthday attack."""
    res = runner.invoke(app, ["demo", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert (data["nat_a"], data["nat_b"]) == ("eim-apdf", "apdm-random")
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
            "hole punch started",
            "birthday attack started: 256 sockets on bob's side, alice probing random ports",
            "birthday attack hit after",
            "path relay -> direct",
            "call ended on direct",
        )
    ]
    assert order == sorted(order), events
    assert any(e.startswith("port-prediction skipped:") for e in events), events
    call = data["call"]
    assert call["path"] == "direct" and call["strategy"] == "birthday", call["traversal"]
    assert call["frames_sent"] == 500 and call["frames_lost"] == 0
    assert [c["to"] for c in call["path_changes"]] == ["direct"]
    assert data["netcheck"]["alice"]["mapping"] == "endpoint-independent"
    assert data["netcheck"]["bob"]["port_allocation"]["kind"] == "random"


def test_demo_table_shows_the_birthday_stage() -> None:
    res = runner.invoke(app, ["demo", "--duration", "8"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long rows
    assert "alice (eim-apdf) <-> bob (apdm-random)" in text
    assert "birthday attack started: 256 sockets" in text
    assert "path relay -> direct" in text
    assert "path at the end: direct; frames lost 0 of 400" in text


def test_demo_accepts_nat_a_and_nat_b() -> None:
    """`--nat-a/--nat-b` (issue 5's names) are aliases of `--a/--b`; an easy pair punches."""
    res = runner.invoke(
        app, ["demo", "--json", "--nat-a", "eim-apdf", "--nat-b", "eim-apdf", "--duration", "3"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert (data["nat_a"], data["nat_b"]) == ("eim-apdf", "eim-apdf")
    assert data["call"]["strategy"] == "hole-punch" and data["call"]["frames_lost"] == 0
    events = [e["event"] for e in data["timeline"]]
    assert any(e.startswith("birthday skipped: not needed") for e in events), events
    assert not any(e.startswith("birthday attack") for e in events), events


def test_demo_two_random_nats_say_why_they_stay_on_the_relay() -> None:
    r = run_call_scenario("apdm-random", "apdm-random", seed=1, duration=3.0)
    assert r["call"]["path"] == "relay" and r["call"]["frames_lost"] == 0
    skipped = [e["event"] for e in r["timeline"] if e["event"].startswith("birthday skipped:")]
    assert len(skipped) == 1 and "staying on the relay" in skipped[0], skipped


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


def test_demo_says_why_a_call_cannot_start() -> None:
    """A peer whose UDP is blocked never reaches the relay: one line, not a traceback."""
    res = runner.invoke(app, ["demo", "--nat-b", "udp-blocked", "--duration", "1"])
    assert res.exit_code == 1, res.output
    assert "the call could not start: no relay registered us" in res.output


def test_demo_ipv6_both_goes_direct_over_ipv6() -> None:
    args = ["demo", "--a", "apdm-random", "--b", "apdm-random", "--duration", "2"]
    res = runner.invoke(app, [*args, "--ipv6", "both", "--json"])
    assert res.exit_code == 0, res.output
    call = json.loads(res.output)["call"]
    assert call["family"] == "ipv6" and call["traversal"]["ipv4_alone"] == "relay"
    table = runner.invoke(app, [*args, "--ipv6", "both"])
    assert table.exit_code == 0 and "direct over IPv6" in table.output
    bad = runner.invoke(app, [*args, "--ipv6", "maybe"])
    assert bad.exit_code != 0
