"""The relay fleet in the simulator: the relay carrying a relayed call dies; both peers move
and the call continues on the same QUIC connection (deterministic, virtual time)."""

from __future__ import annotations

import pytest

from punchthrough.scenario.fleet import run_failover_trial

pytestmark = pytest.mark.sim


def test_relay_death_mid_call_recovers_on_the_same_connection() -> None:
    r = run_failover_trial(seed=1)
    assert r["homes_before"] == ("r1", "r2")  # by RTT; bob's map has no r1
    assert r["victim"] == "198.51.100.32:3478"  # the call went through bob's home
    assert r["recovered"] and r["same_connection"]
    assert r["homes_after"] == ("r1", "r3")  # bob re-homed to the next nearest
    assert "198.51.100.32" not in "".join(r["paths_after"])
    # frames lost: only those sent while the failure was being detected (< 2 s at 50 pps
    # each way would be 200)
    assert 0 < r["frames_lost"] < 200
    assert r == run_failover_trial(seed=1)  # deterministic


def test_slow_directory_delays_but_does_not_prevent_recovery() -> None:
    r = run_failover_trial(seed=2, directory_lag=0.2)
    assert r["recovered"] and r["same_connection"]
