"""Run ``punchthrough netcheck`` behind every host of a lab at once (each host has its own router,
so the runs cannot disturb each other) and collect the JSON reports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from punchthrough.lab.addresses import Address
from punchthrough.lab.proc import LabError
from punchthrough.lab.topology import Lab


def netcheck_argv(servers: Sequence[Address], timeout: float = 2.0) -> list[str]:
    argv = [sys.executable, "-m", "punchthrough", "netcheck", "--json", "--timeout", str(timeout)]
    for host, port in servers:
        argv += ["--stun", f"{host}:{port}"]
    return argv


def netcheck_all(
    lab: Lab, servers: Sequence[Address], *, timeout: float = 2.0
) -> dict[str, dict[str, Any]]:
    """netcheck behind each host in parallel; reports keyed by the host's profile name."""
    argv = netcheck_argv(servers, timeout)
    procs = {
        h.profile.name: h.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for h in lab.hosts
    }
    reports: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=10 * timeout + 20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            errors.append(f"netcheck behind {name} timed out")
            continue
        if proc.returncode != 0:
            errors.append(f"netcheck behind {name} exited {proc.returncode}: {err.decode()!r}")
            continue
        reports[name] = json.loads(out)
    if errors:
        raise LabError("; ".join(errors))
    return reports
