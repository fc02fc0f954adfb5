"""The simulator must predict what the kernel does: the same netcheck in both worlds, per profile.

For each profile the lab and the simulator share, netcheck runs behind the real nftables NAT and
behind the simulated NAT with the same name; mapping, filtering, port-allocation kind and delta
must agree. This is what lets success rates measured in the simulator stand for the kernel.
"""

from __future__ import annotations

from typing import Any

import pytest

from punchthrough.lab import PROFILE_NAMES, PROFILES, Lab, netcheck_all
from punchthrough.scenario.netcheck import netcheck_world
from punchthrough.sim import PROFILES as SIM_PROFILES

pytestmark = pytest.mark.lab

SHARED = [p for p in PROFILE_NAMES if p in SIM_PROFILES]
SEEDS = (1, 2)
#: The relay-over-TCP firewalls exist in the lab only (README): the simulator carries UDP only,
#: and over UDP they are ``udp-blocked``, which it has.
LAB_ONLY = {"tcp443-only", "proxy-only"}


def _essentials(report: dict[str, Any]) -> tuple[object, ...]:
    alloc = report["port_allocation"]
    return (report["udp"], report["mapping"], report["filtering"], alloc["kind"], alloc["delta"])


@pytest.fixture(scope="module")
def lab_reports(nat_lab: Lab) -> dict[str, dict[str, Any]]:
    return netcheck_all(nat_lab, nat_lab.stun_servers())


def test_every_lab_profile_exists_in_the_simulator() -> None:
    assert set(PROFILE_NAMES) - LAB_ONLY <= set(SIM_PROFILES)
    assert all(not PROFILES[name].udp for name in LAB_ONLY)  # no UDP: nothing to simulate
    assert "udp-blocked" in SIM_PROFILES


@pytest.mark.parametrize("profile", SHARED)
def test_lab_and_simulator_agree(lab_reports: dict[str, dict[str, Any]], profile: str) -> None:
    lab = _essentials(lab_reports[profile])
    for seed in SEEDS:
        sim = _essentials(netcheck_world(profile, seed=seed).to_json())
        assert sim == lab, f"{profile} seed {seed}: sim {sim} != lab {lab}"
