"""`make demo` runs `punchthrough demo`: it must work and classify every lab NAT right."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from punchthrough.lab import PROFILE_NAMES, PROFILES

pytestmark = pytest.mark.lab


def test_demo_json_reports_every_profile_as_expected() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "punchthrough", "demo", "--json"],
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
