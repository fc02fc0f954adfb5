"""A lab's names on the machine, and taking them down again.

Everything here works from the prefix and the saved state file alone (never from a live
:class:`~punchthrough.lab.topology.Lab`), so `Lab.down(prefix)` can clean up a lab whose creator
crashed.
"""

from __future__ import annotations

import re
import secrets
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from punchthrough.lab.proc import netns_pids, run, stop_many

STATE_DIR = Path("/run/punchthrough")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,11}$")


def default_prefix() -> str:
    return "pt" + secrets.token_hex(3)


def state_path(state_dir: Path, prefix: str) -> Path:
    return state_dir / f"lab-{prefix}.json"


def existing_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def lab_namespaces(prefix: str, names: Iterable[str]) -> list[str]:
    pat = re.compile(rf"^{re.escape(prefix)}-(pub|r\d+|h\d+)$")
    return [n for n in names if pat.match(n)]


def teardown(
    prefix: str,
    namespaces: Sequence[str],
    known: Sequence[tuple[int, subprocess.Popen[bytes] | None]],
) -> list[str]:
    """Kill known pids and every pid inside the namespaces, then delete the namespaces.

    A namespace with a live process keeps running (and answering) after `ip netns del`, so the
    kill comes first; pids from `ip netns pids` are authoritative (saved pids may be reused).
    """
    problems: list[str] = []
    existing = set(existing_namespaces())
    present = [ns for ns in namespaces if ns in existing]
    in_ns = {pid for ns in present for pid in netns_pids(ns)}
    targets: list[tuple[int, subprocess.Popen[bytes] | None]] = [
        (pid, p) for pid, p in known if p is None or p.poll() is None
    ]
    targets += [(pid, None) for pid in sorted(in_ns - {pid for pid, _ in targets})]
    survivors = stop_many(targets)
    if survivors:
        problems.append(f"pids survived SIGKILL: {survivors}")
    for ns in present:
        proc = run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0:
            problems.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    left = lab_namespaces(prefix, existing_namespaces())
    left = [ns for ns in left if ns in namespaces]
    if left:
        problems.append(f"namespaces left: {left}")
    return problems
