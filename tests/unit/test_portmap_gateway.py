"""Default-gateway parsing and the double-NAT address test."""

from __future__ import annotations

from pathlib import Path

import pytest

from punchthrough.portmap import default_gateway, is_double_nat_address, parse_proc_net_route

ROUTE = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0
wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t0001000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
"""


def test_parse_proc_net_route_picks_lowest_metric_default() -> None:
    assert parse_proc_net_route(ROUTE) == "10.0.1.1"
    swapped = ROUTE.replace("\t100\t00000000", "\t900\t00000000", 1)
    assert parse_proc_net_route(swapped) == "192.168.2.1"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Iface\tDestination\n",
        "eth0 00000000 zz 0003 0 0 1 00000000",
        # a default route that is down (flags 0x2) or without a gateway
        "h\neth0\t00000000\t0101000A\t0002\t0\t0\t1\t00000000\n",
        "h\neth0\t00000000\t00000000\t0001\t0\t0\t1\t00000000\n",
    ],
)
def test_parse_proc_net_route_without_default(text: str) -> None:
    assert parse_proc_net_route(text) is None


def test_default_gateway_reads_a_route_file(tmp_path: Path) -> None:
    f = tmp_path / "route"
    f.write_text(ROUTE)
    assert default_gateway(f) == "10.0.1.1"
    assert default_gateway(tmp_path / "missing") is None


@pytest.mark.parametrize(
    ("ip", "double"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("192.168.1.1", True),
        ("100.64.0.1", True),
        ("100.127.255.254", True),
        ("169.254.1.1", True),
        ("0.0.0.0", True),
        ("127.0.0.1", True),
        ("not an ip", True),
        ("100.63.255.255", False),
        ("100.128.0.0", False),
        ("172.32.0.1", False),
        # documentation ranges stand in for public addresses in the lab and the simulator
        ("203.0.113.1", False),
        ("198.51.100.7", False),
        ("192.0.2.9", False),
        ("8.8.8.8", False),
        ("::ffff:10.0.0.1", True),
        ("fd00::1", True),
        ("fe80::1", True),
        ("2001:db8::1", False),
    ],
)
def test_double_nat_addresses(ip: str, double: bool) -> None:
    assert is_double_nat_address(ip) is double
