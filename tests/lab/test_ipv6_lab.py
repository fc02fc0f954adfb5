"""IPv6 on real kernels: both peers behind random-port symmetric NATs (apdm-random, relay-only
over IPv4) and behind their routers' nftables inet stateful firewalls on IPv6. The real
`listen --echo` / `connect --json` processes go direct over IPv6, lose no frame, and the
report says IPv4 alone would have stayed on the relay. Three trials of 3 s calls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from punchthrough.lab import addresses as A
from punchthrough.lab.ipv6 import STUN6_PRIMARY, host6
from punchthrough.matrix.lab import LabBackend
from punchthrough.matrix.runner import run_matrix

pytestmark = pytest.mark.lab

PAIR = ("apdm-random", "apdm-random")
TRIALS = 3


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def test_random_nats_go_direct_over_ipv6_through_kernel_firewalls() -> None:
    backend = LabBackend(duration=3.0, ipv6="both")
    calls = []
    with backend.cell(*PAIR) as cell:
        lab = cell.lab
        # the firewall is really there: an unsolicited packet from the other host is dropped
        fw = lab.hosts[0].router_run(["nft", "list", "table", "inet", "pt_fw6"], check=True)
        assert "ct state established,related accept" in fw.stdout
        for trial in range(TRIALS):
            calls.append(cell.call(trial))
        # netcheck on the real kernel: IPv6 reachable, our own address (no NAT66), and the
        # firewall seen as address-and-port-dependent filtering (RFC 5780 over IPv6)
        out = lab.hosts[0].run(
            [sys.executable, "-m", "punchthrough", "netcheck", "--json",
             "--stun", f"{A.OUR_STUN_PRIMARY}:{A.STUN_PORT}",
             "--stun", f"[{STUN6_PRIMARY}]:{A.STUN_PORT}"],
            timeout=60,
        )  # fmt: skip
        v6 = json.loads(out.stdout)["ipv6"]
        assert v6["reachable"] is True and v6["public_ip"] == host6(1), out.stdout
        assert v6["translated"] is False and v6["mapping"] == "endpoint-independent"
        assert v6["filtering"] == "address-and-port-dependent"
    (prefix,) = backend.prefixes
    assert not {n for n in _namespaces() if n.startswith(f"{prefix}-")}
    for call in calls:
        assert call["path"] == "direct", call.get("traversal")
        assert call["family"] == "ipv6"
        assert call["frames_lost"] == 0 and call["frames_sent"] == 150
        t = call["traversal"]
        assert t["ipv4_alone"] == "relay", t
        pair = next(s for s in t["stages"] if s["stage"] == "hole-punch")["pair"]
        assert f"[{host6(2)}]" in pair or f"[{host6(1)}]" in pair


def test_lab_matrix_ipv6_cell() -> None:
    """The matrix's --ipv6 on the lab backend: the cell counts the IPv6 direct calls."""
    run = run_matrix(LabBackend(duration=2.0, ipv6="both"), [PAIR], 1)
    (cell,) = run.to_json()["cells"]
    assert cell["direct"] == 1 and cell.get("direct_ipv6") == 1, run.results
    assert any("IPv6 (both)" in n for n in run.notes)
