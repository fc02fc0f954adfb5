"""The real STUN client/server and netcheck, unchanged, through every simulated NAT profile."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from punchthrough.cli.sim_cmd import sim_app
from punchthrough.nat import Behavior, PortAllocation
from punchthrough.netio import Address
from punchthrough.scenario.netcheck import build_netcheck_topology, netcheck_world, run_sim_netcheck
from punchthrough.sim import PROFILES, World, run
from punchthrough.stun import StunClient, StunTimeout

EI, AD, APD = (
    Behavior.ENDPOINT_INDEPENDENT,
    Behavior.ADDRESS_DEPENDENT,
    Behavior.ADDRESS_AND_PORT_DEPENDENT,
)
PRESERVING, SEQUENTIAL, RANDOM = (
    PortAllocation.PORT_PRESERVING,
    PortAllocation.SEQUENTIAL,
    PortAllocation.RANDOM,
)


async def _bindings(nat: str) -> list[Address]:
    world = World(1)
    topo = await build_netcheck_topology(world, nat)
    sock = await topo.client.bind("0.0.0.0", 5000)
    client = StunClient(sock, rto=0.2, max_retransmits=2)
    client.attach()
    try:
        mapped = []
        for server in [("198.51.100.1", 3478), ("198.51.100.2", 3479), ("198.51.100.3", 3478)]:
            mapped.append((await client.binding(server)).mapped)
        return mapped
    finally:
        client.close()
        sock.close()
        topo.close()


@pytest.mark.parametrize("nat", [n for n in PROFILES if n != "udp-blocked"])
def test_stun_binding_through_each_profile(nat: str) -> None:
    mapped = run(_bindings(nat), seed=1)
    assert {ip for ip, _ in mapped} == {"203.0.113.1"}
    ports = [p for _, p in mapped]
    if nat in ("open", "eim-eif", "eim-adf", "eim-apdf"):
        assert ports == [5000] * 3
    elif nat == "adm":
        assert len(set(ports)) == 3 and all(20000 <= p <= 24095 for p in ports)
    elif nat == "apdm-sequential":
        assert ports[1] - ports[0] == ports[2] - ports[1] == 1
    else:
        assert len(set(ports)) == 3


def test_stun_times_out_when_udp_is_blocked() -> None:
    with pytest.raises(StunTimeout):
        run(_bindings("udp-blocked"), seed=1)


EXPECTED = {
    "open": (EI, EI, PRESERVING, 0),
    "eim-eif": (EI, EI, PRESERVING, 0),
    "eim-adf": (EI, AD, PRESERVING, 0),
    "eim-apdf": (EI, APD, PRESERVING, 0),
    "adm": (AD, APD, RANDOM, None),
    "apdm-sequential": (APD, APD, SEQUENTIAL, 1),
    "apdm-random": (APD, APD, RANDOM, None),
}


@pytest.mark.parametrize("nat", list(EXPECTED))
@pytest.mark.parametrize("seed", [0, 1])
def test_netcheck_classifies_each_profile(nat: str, seed: int) -> None:
    report = netcheck_world(nat, seed=seed)
    got = (report.mapping, report.filtering, report.allocation.kind, report.allocation.delta)
    assert got == EXPECTED[nat]
    assert report.udp and report.public_ip == "203.0.113.1"
    assert report.preserves_port == (nat in ("open", "eim-eif", "eim-adf", "eim-apdf"))
    assert report.hairpinning == (nat == "open")  # lab NATs do not hairpin
    assert len(report.mapped_endpoints) >= 5


def test_netcheck_reports_udp_blocked() -> None:
    report = netcheck_world("udp-blocked")
    assert not report.udp and report.public_ip is None


@pytest.mark.parametrize("delta", [-1, 2, -7, 25])
def test_netcheck_sees_any_sequential_delta(delta: int) -> None:
    report = netcheck_world("apdm-sequential", delta=delta)
    assert (report.allocation.kind, report.allocation.delta) == (SEQUENTIAL, delta)


@pytest.mark.parametrize("seed", range(5))
def test_netcheck_sequential_under_churn(seed: int) -> None:
    result = run_sim_netcheck("apdm-sequential", seed=seed, churn=10.0)
    alloc = result.report.allocation
    assert (alloc.kind, alloc.delta) == (SEQUENTIAL, 1)


def test_netcheck_with_hairpinning_nat() -> None:
    assert netcheck_world("eim-apdf", hairpinning=True).hairpinning is True


def test_cli_sim_netcheck_json_and_trace() -> None:
    runner = CliRunner()
    res = runner.invoke(
        sim_app,
        [
            "netcheck",
            "--nat",
            "apdm-sequential",
            "--delta",
            "-2",
            "--seed",
            "3",
            "--json",
            "--trace",
        ],
    )
    assert res.exit_code == 0, res.output
    out = res.stdout
    report = json.loads(out)
    assert report["mapping"] == "address-and-port-dependent"
    assert report["port_allocation"]["kind"] == "sequential"
    assert report["port_allocation"]["delta"] == -2
    assert "nat-out" in res.stderr and "filtered (apdf)" in res.stderr


def test_cli_sim_netcheck_table_and_errors() -> None:
    runner = CliRunner()
    res = runner.invoke(sim_app, ["netcheck", "--nat", "eim-adf"])
    assert res.exit_code == 0 and "address-dependent" in res.stdout
    assert runner.invoke(sim_app, ["netcheck", "--nat", "bogus"]).exit_code == 2
    assert runner.invoke(sim_app, ["netcheck", "--nat", "open", "--churn", "1"]).exit_code == 2
