"""`punchthrough lab netcheck`: netcheck behind every lab NAT, classified as its profile says."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from punchthrough.lab import PROFILE_NAMES, PROFILES

pytestmark = pytest.mark.lab


def test_lab_netcheck_json_reports_every_profile_as_expected() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "punchthrough", "lab", "netcheck", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["backend"] == "lab"
    assert set(data["reports"]) == set(PROFILE_NAMES)
    for name, report in data["reports"].items():
        want = PROFILES[name]
        assert (report["mapping"], report["filtering"], report["port_allocation"]["kind"]) == (
            want.mapping,
            want.filtering,
            want.allocation,
        ), name
