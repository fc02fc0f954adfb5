"""The kernel NAT lab itself: topology, cleanup, and each profile checked against coturn."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from punchthrough.cli.lab_cmd import lab_app
from punchthrough.lab import (
    PROFILES,
    STATE_DIR,
    HostSpec,
    Lab,
    NatDiscoveryResult,
    RouterOptions,
)
from punchthrough.lab import addresses as A
from punchthrough.lab.proc import child_env, pid_alive

pytestmark = pytest.mark.lab

COTURN = (A.COTURN_PRIMARY, A.STUN_PORT)
ADM_BASE = RouterOptions().adm_base
ADM_COUNT = RouterOptions().adm_count
LabFactory = Callable[..., Lab]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _assert_gone(prefix: str, pids: list[int]) -> None:
    assert not {n for n in _namespaces() if n.startswith(f"{prefix}-")}
    assert not [p for p in pids if pid_alive(p)]
    assert not (STATE_DIR / f"lab-{prefix}.json").exists()


_TCP_SCRIPT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("ok")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(type(exc).__name__)
"""


def _tcp_connects(ns: str, addr: tuple[str, int]) -> str:
    """'ok' / 'refused' (a RST came back: the address is reachable) / the error's name."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _TCP_SCRIPT, addr[0], str(addr[1])],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return out.stdout.strip()


# ----------------------------------------------------------------------------- topology
def test_build_and_teardown_leave_nothing() -> None:
    t0 = time.monotonic()
    with Lab(["eim-apdf", "open"], stun_server=False, coturn=False) as lab:
        built = time.monotonic() - t0
        assert set(lab.namespaces) <= _namespaces()
        sleeper = lab.host("open").popen(["sleep", "60"])
        pids = [sleeper.pid]
        state = json.loads((STATE_DIR / f"lab-{lab.prefix}.json").read_text())
        assert sleeper.pid in [p["pid"] for p in state["processes"]]
        workdir = lab.workdir
        assert workdir is not None and workdir.is_dir()
        # the open host has a public address, reachable from pub (no NAT on the way)
        assert lab.host("open").ip.startswith("192.0.2.")
        assert _tcp_connects(lab.pub_ns, (lab.host("open").ip, 22)) in ("refused", "ok")
        t1 = time.monotonic()
    torn = time.monotonic() - t1
    _assert_gone(lab.prefix, pids)
    assert not workdir.exists()
    assert built < 5 and torn < 5, (built, torn)


def test_nft_check_accepts_every_profile_with_all_options(lab_factory: LabFactory) -> None:
    opts = RouterOptions(udp_timeout=9, loss_percent=1.5, miniupnpd=False, seq_delta=3)
    lab = lab_factory([HostSpec(p, opts) for p in PROFILES], stun_server=False, coturn=False)
    for h in lab.hosts:
        ruleset = h.router_run(["nft", "list", "ruleset"]).stdout
        assert 'iifname "wan" ct state new drop' in ruleset
        assert "numgen random mod 1000 < 15" in ruleset
        timeout = h.router_run(["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout"])
        assert timeout.stdout.strip() == "9"


def test_two_labs_side_by_side(nat_lab: Lab, lab_factory: LabFactory) -> None:
    other = lab_factory(["eim-apdf"], stun_server=False, coturn=True)
    assert other.prefix != nat_lab.prefix
    # identical addresses in both labs, fully separate namespaces
    assert other.host(0).router_wan_ip == "203.0.113.1" == nat_lab.host(0).router_wan_ip
    for lab in (other, nat_lab):
        res = lab.host("eim-apdf").stun(COTURN)
        assert res["received"] == 1
        assert res["mapped"][0] == lab.host("eim-apdf").public_ip


def test_crashed_lab_is_cleaned_by_cli_down() -> None:
    script = textwrap.dedent("""
        import json, os, sys
        from punchthrough.lab import Lab
        lab = Lab(["eim-apdf"], stun_server=False, coturn=True).up()
        p = lab.host(0).popen(["sleep", "60"])
        print(json.dumps({"prefix": lab.prefix,
                          "pids": [p.pid] + [x.pid for x in lab.processes]}), flush=True)
        os._exit(1)  # crash: no cleanup at all
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    prefix, pids = info["prefix"], info["pids"]
    try:
        assert f"{prefix}-pub" in _namespaces()
        assert all(pid_alive(p) for p in pids)
        result = CliRunner().invoke(lab_app, ["down", "--prefix", prefix])
        assert result.exit_code == 0, result.output
        assert "removed 3 namespaces" in result.output
        _assert_gone(prefix, pids)
    finally:
        Lab.down(prefix)


def test_cli_up_status_exec_down() -> None:
    runner = CliRunner()
    prefix = "ptcli" + os.urandom(2).hex()
    up = runner.invoke(
        lab_app,
        [
            "up",
            "--prefix",
            prefix,
            "--profile",
            "eim-adf",
            "--no-stun-server",
            "--no-coturn",
            "--timeout",
            "5",
            "--json",
        ],
    )
    try:
        assert up.exit_code == 0, up.output
        state = json.loads(up.output)
        assert [h["profile"] for h in state["hosts"]] == ["eim-adf"]
        assert state["hosts"][0]["options"]["udp_timeout"] == 5
        st = runner.invoke(lab_app, ["status", "--prefix", prefix, "--json"])
        assert st.exit_code == 0, st.output
        assert json.loads(st.output)[0]["namespaces_alive"] == state["namespaces"]
        ex = runner.invoke(
            lab_app,
            [
                "exec",
                "--prefix",
                prefix,
                "eim-adf",
                "--",
                "sh",
                "-c",
                "ip -4 -o addr show eth0 | grep -q 10.0.1.2",
            ],
        )
        assert ex.exit_code == 0, ex.output
        ex = runner.invoke(lab_app, ["exec", "--prefix", prefix, "h1", "--", "sh", "-c", "exit 3"])
        assert ex.exit_code == 3
        ex = runner.invoke(lab_app, ["exec", "--prefix", prefix, "nope", "--", "true"])
        assert ex.exit_code == 2
    finally:
        down = runner.invoke(lab_app, ["down", "--prefix", prefix])
    assert down.exit_code == 0, down.output
    _assert_gone(prefix, [])


# ------------------------------------------------------------------- profile behaviour
@pytest.fixture(scope="module")
def natdiscovery(nat_lab: Lab) -> dict[str, NatDiscoveryResult]:
    """turnutils_natdiscovery against coturn from every host, in parallel (~6 s)."""
    return nat_lab.natdiscovery_all(A.COTURN_PRIMARY)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_profile_matches_coturn_natdiscovery(
    nat_lab: Lab, natdiscovery: dict[str, NatDiscoveryResult], profile: str
) -> None:
    host = nat_lab.host(profile)
    res = natdiscovery[host.name]
    expected = PROFILES[profile]
    assert (res.mapping, res.filtering) == (expected.mapping, expected.filtering), res.raw
    if expected.udp:
        assert res.nat is expected.nat
        assert {ip for ip, _ in res.reflexive} == {host.public_ip}


def test_udp_blocked_blocks_udp_only(nat_lab: Lab) -> None:
    blocked = nat_lab.host("udp-blocked")
    res = blocked.stun(COTURN, count=3, timeout=0.5)
    assert res["received"] == 0 and res["sent"] == 3
    # the router still forwards (and NATs) TCP for that host: coturn listens on TCP 3478
    assert _tcp_connects(blocked.ns, COTURN) == "ok"


def test_our_stun_server_answers_on_every_endpoint(nat_lab: Lab) -> None:
    host = nat_lab.host("eim-apdf")
    for server in nat_lab.stun_servers():
        res = host.stun(server)
        assert res["received"] == 1, server
        assert res["mapped"][0] == host.public_ip
        assert tuple(res["source"]) == server
        if server[0] in (A.OUR_STUN_PRIMARY, A.OUR_STUN_ALT):
            assert res["other_address"] is not None
    assert len(set(nat_lab.stun_servers())) >= 5
    assert len(set(nat_lab.coturn_servers())) >= 5
    for server in nat_lab.coturn_servers():
        assert host.stun(server)["received"] == 1, server


def _ports(host: Any, bind_port: int, servers: list[tuple[str, int]]) -> list[int]:
    """Mapped port seen by each server, each probe a new socket on the same local port."""
    out = []
    for server in servers:
        res = host.stun(server, bind=("0.0.0.0", bind_port))
        assert res["received"] == 1
        out.append(res["mapped"][1])
    return out


def test_port_allocation_per_profile(nat_lab: Lab) -> None:
    same_ip = [COTURN, (A.COTURN_PRIMARY, A.STUN_ALT_PORT)]
    other_ip = [COTURN, (A.COTURN_ALT, A.STUN_PORT)]
    # EIM, port preserved: the local port towards every destination
    assert _ports(nat_lab.host("eim-apdf"), 42001, same_ip + other_ip) == [42001] * 4
    # ADM: same port per remote IP, different across remote IPs
    adm = _ports(nat_lab.host("adm"), 42002, same_ip + other_ip)
    assert adm[0] == adm[1] == adm[2] and adm[3] != adm[0]
    assert all(ADM_BASE <= p < ADM_BASE + ADM_COUNT for p in adm)
    # sequential: every new flow takes the next port
    seq = _ports(nat_lab.host("apdm-sequential"), 42003, [COTURN, *same_ip[1:], other_ip[1]])
    assert [b - a for a, b in itertools.pairwise(seq)] == [1, 1]
    # random: no two flows share a port (3 draws from ~28k ports)
    rnd = _ports(nat_lab.host("apdm-random"), 42004, [COTURN, *same_ip[1:], other_ip[1]])
    assert len(set(rnd)) == 3


# --------------------------------------------------------------------- router options
@pytest.fixture(scope="module")
def options_lab() -> Any:
    """A second lab (its own prefix, alongside nat_lab) exercising per-router options."""
    with Lab(
        [
            HostSpec("eim-apdf", RouterOptions(miniupnpd=True)),
            HostSpec("eim-eif", RouterOptions(udp_timeout=2)),
            HostSpec("eim-apdf", RouterOptions(loss_percent=50)),
            HostSpec("apdm-sequential", RouterOptions(seq_base=50000, seq_count=10, seq_delta=7)),
        ],
        stun_server=False,
        coturn=True,
    ) as lab:
        yield lab


def test_miniupnpd_answers_natpmp(options_lab: Lab) -> None:
    host = options_lab.host(0)
    res = host.natpmp(timeout=3.0)
    assert res["result"] == 0, res  # RFC 6886 3.5: 0 = success
    assert res["external_ip"] == host.router_wan_ip
    assert tuple(res["source"]) == (host.gateway, A.NATPMP_PORT)
    # no miniupnpd elsewhere: no answer within the timeout
    assert options_lab.host(1).natpmp(timeout=0.6)["result"] is None


def _conntrack_sports(host: Any) -> set[int]:
    out = host.router_run(["conntrack", "-L", "-p", "udp"], check=False).stdout
    return {
        int(tok.split("=")[1])
        for line in out.splitlines()
        for tok in line.split()[:8]
        if tok.startswith("sport=")
    }


def test_udp_timeout_expires_binding(options_lab: Lab) -> None:
    host = options_lab.host(1)
    assert host.stun(COTURN, bind=("0.0.0.0", 43001))["received"] == 1
    assert 43001 in _conntrack_sports(host)
    fullcone = host.router_run(["nft", "list", "map", "ip", "nat", "fullcone"]).stdout
    assert "timeout 2s" in fullcone and "43001" in fullcone
    time.sleep(3.2)  # 2 s timeout + conntrack's lazy garbage collection slack
    assert 43001 not in _conntrack_sports(host)
    fullcone = host.router_run(["nft", "list", "map", "ip", "nat", "fullcone"]).stdout
    assert "43001" not in fullcone


def test_loss_option_drops_some_packets(options_lab: Lab) -> None:
    lossy = options_lab.host(2).stun(COTURN, count=200, interval=0.002, timeout=1.0)
    clean = options_lab.host(0).stun(COTURN, count=200, interval=0.002, timeout=1.0)
    # 50 % each way -> ~25 % answered (binomial sd ~3 %)
    assert 0.08 < lossy["received"] / lossy["sent"] < 0.45, lossy["received"]
    assert clean["received"] >= 190


def test_sequential_delta_option(options_lab: Lab) -> None:
    host = options_lab.host(3)
    ports = [host.stun(COTURN)["mapped"][1] for _ in range(3)]
    assert [b - a for a, b in itertools.pairwise(ports)] == [7, 7]
    assert all(p in range(50000, 50000 + 10 * 7, 7) for p in ports)


def test_state_file_lists_options_lab(options_lab: Lab) -> None:
    state = json.loads(Path(STATE_DIR / f"lab-{options_lab.prefix}.json").read_text())
    names = {p["name"] for p in state["processes"]}
    assert {"coturn1", "coturn2", "miniupnpd-1"} <= names
    assert state["hosts"][0]["options"]["miniupnpd"] is True
