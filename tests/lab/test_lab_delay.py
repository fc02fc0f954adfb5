"""Router one-way delay (RouterOptions(delay_ms=...)): iptables NFQUEUE + the userspace delayer.

The lab test measures what the option promises: a host's RTT to a server on the public segment
grows by 2 x its router's delay, a flow between two delayed hosts by 2 x (d_a + d_b), an
undelayed router adds nothing, and the delayer processes go away with the lab.
"""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Callable

import pytest

from punchthrough.lab import HostSpec, Lab, RouterOptions, router_delay_for_rtt
from punchthrough.lab import addresses as A
from punchthrough.lab.delay import iptables_argv, queue_bound
from punchthrough.lab.proc import udp_listening, wait_until

D_NAT = 15.0  # ms one way on the NAT host's router
D_OPEN = 10.0  # ms one way on the open host's router
#: Allowed excess over the configured RTT: Python timers + scheduling on a loaded 2-core box
#: (the natlab README measured 20.4 ms for 20 ms).
SLACK_MS = 8.0
PEER_PORT = 3478


# ---------------------------------------------------------------- pure parts (no root)
def test_iptables_rule_targets_mangle_forward_queue() -> None:
    argv = iptables_argv("-A")
    assert argv[:6] == ["iptables", "-w", "-t", "mangle", "-A", "FORWARD"]
    assert argv[-4:] == ["-j", "NFQUEUE", "--queue-num", "0"]
    assert "--queue-bypass" not in argv  # a dead delayer must break the lab, not undelay it
    with pytest.raises(ValueError):
        iptables_argv("-F")


def test_queue_bound_reads_nfnetlink_queue_proc() -> None:
    assert queue_bound("    0  17916     0 1     0     0     0        0  1\n")
    assert not queue_bound("    1  17916     0 1     0     0     0        0  1\n")
    assert not queue_bound("")


def test_delay_option_is_validated_and_rtt_splits_over_four_legs() -> None:
    RouterOptions(delay_ms=25).validate()
    for bad in (-1.0, 10_001.0):
        with pytest.raises(ValueError):
            RouterOptions(delay_ms=bad).validate()
    assert router_delay_for_rtt(100) == 25
    with pytest.raises(ValueError):
        router_delay_for_rtt(-1)


# ------------------------------------------------------------------------ lab
def _median_rtt(lab: Lab, ns: str, server: tuple[str, int]) -> float:
    res = lab.stun_probe(ns, server, count=10, interval=0.05, timeout=2.0)
    assert res["received"] >= 8, res
    return float(statistics.median(res["rtt_ms"]))


@pytest.mark.lab
def test_router_delay_adds_the_configured_round_trip(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(
        [
            HostSpec("eim-apdf", RouterOptions(delay_ms=D_NAT)),
            HostSpec("open", RouterOptions(delay_ms=D_OPEN)),
            HostSpec("eim-eif"),  # no delay: control
        ],
        stun_server=False,  # coturn answers: this test needs nothing of ours but the lab
    )
    nat, open_, plain = lab.hosts
    delayers = [p for p in lab.processes if p.name.startswith("delay-")]
    assert sorted(p.ns for p in delayers) == sorted([nat.router_ns, open_.router_ns])
    server = (A.COTURN_PRIMARY, A.STUN_PORT)

    plain_rtt = _median_rtt(lab, plain.ns, server)
    nat_rtt = _median_rtt(lab, nat.ns, server)
    open_rtt = _median_rtt(lab, open_.ns, server)
    assert plain_rtt < 5.0, plain_rtt
    assert 2 * D_NAT <= nat_rtt < 2 * D_NAT + SLACK_MS, nat_rtt
    assert 2 * D_OPEN <= open_rtt < 2 * D_OPEN + SLACK_MS, open_rtt

    # host to host: both routers delay both directions
    assert lab.workdir is not None
    peer = open_.popen(
        [
            "turnserver",
            "-n",
            "-S",
            "-L",
            open_.ip,
            "--listening-port",
            str(PEER_PORT),
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--pidfile",
            str(lab.workdir / "peer-turn.pid"),
            "--userdb",
            str(lab.workdir / "peer-turn.db"),
        ],
        name="peer-stun",
    )
    try:
        wait_until(
            lambda: udp_listening(open_.ns, open_.ip, PEER_PORT), timeout=15, what="peer stun"
        )
        both = _median_rtt(lab, nat.ns, (open_.ip, PEER_PORT))
        expected = 2 * (D_NAT + D_OPEN)
        print({"plain": plain_rtt, "nat": nat_rtt, "open": open_rtt, "nat_to_open": both})
        assert expected <= both < expected + SLACK_MS, both
    finally:
        peer.terminate()
        peer.wait(10)
    pids = [p.pid for p in delayers]
    lab.close()
    for pid in pids:
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
