"""netcheck end to end on loopback (no NAT): real sockets, our STUN server in RFC 5780 mode."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from punchthrough.cli.app import app
from punchthrough.nat import Behavior, NetcheckError, PortAllocation, run_netcheck
from punchthrough.netio import UdpNetwork
from punchthrough.stun import StunServer


async def test_no_nat_on_loopback_is_endpoint_independent_everything() -> None:
    net = UdpNetwork()
    server = await StunServer.start(net, listen=[("127.0.0.1", 0)], alt_ip="127.0.0.2")
    try:
        primary = server.addresses[0]
        report = await run_netcheck(net, [primary], timeout=1.0, bind_host="127.0.0.1")
    finally:
        server.close()
    assert report.udp
    assert report.public_ip == "127.0.0.1"
    assert report.rfc5780_server == f"{primary[0]}:{primary[1]}"
    assert report.mapping is Behavior.ENDPOINT_INDEPENDENT
    assert report.filtering is Behavior.ENDPOINT_INDEPENDENT
    # four distinct endpoints of one RFC 5780 server, all seeing our one unchanged port
    assert len(report.mapped_endpoints) == 4
    assert len(set(report.mapped_endpoints)) == 1
    assert report.allocation.kind is PortAllocation.PORT_PRESERVING
    assert report.preserves_port is True
    assert report.hairpinning is True
    assert any("thin" in e for e in report.errors)  # 4 < 5 samples wanted
    j = report.to_json()
    for key in (
        "udp",
        "public_ip",
        "mapped_endpoints",
        "mapping",
        "filtering",
        "port_allocation",
        "preserves_port",
        "hairpinning",
        "duration_ms",
    ):
        assert key in j
    assert set(j["port_allocation"]) >= {"kind", "delta", "ports", "confidence", "port_range"}  # type: ignore[arg-type]


async def test_plain_server_leaves_filtering_unknown() -> None:
    net = UdpNetwork()
    server = await StunServer.start(net, listen=[("127.0.0.1", 0)])
    try:
        report = await run_netcheck(net, server.addresses, timeout=1.0, bind_host="127.0.0.1")
    finally:
        server.close()
    assert report.udp
    assert report.filtering is Behavior.UNKNOWN
    assert report.mapping is Behavior.UNKNOWN  # one destination cannot tell
    assert report.allocation.kind is PortAllocation.UNKNOWN


async def test_silent_servers_mean_udp_false_not_an_exception() -> None:
    net = UdpNetwork()
    # bind then close a socket to get a port nobody listens on
    probe = await net.bind("127.0.0.1", 0)
    dead = probe.local_address
    probe.close()
    report = await run_netcheck(net, [dead], timeout=0.3, bind_host="127.0.0.1")
    assert report.udp is False
    assert report.mapping is Behavior.UNKNOWN
    assert report.errors


async def test_no_servers_is_a_configuration_error() -> None:
    with pytest.raises(NetcheckError, match="no STUN server"):
        await run_netcheck(UdpNetwork(), [])


runner = CliRunner()


def test_cli_without_stun_exits_2_with_a_message() -> None:
    result = runner.invoke(app, ["netcheck"])
    assert result.exit_code == 2
    assert "--stun" in result.output


@pytest.mark.parametrize("bad", ["nonsense", "1.2.3.4", "1.2.3.4:0", "1.2.3.4:70000", "x:1"])
def test_cli_bad_address_exits_2(bad: str) -> None:
    result = runner.invoke(app, ["netcheck", "--stun", bad])
    assert result.exit_code == 2


def test_cli_silent_server_prints_json_and_exits_0() -> None:
    result = runner.invoke(app, ["netcheck", "--stun", "127.0.0.1:9", "--timeout", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["udp"] is False


def test_python_dash_m_works() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "punchthrough", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("punchthrough ")
