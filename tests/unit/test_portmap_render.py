"""netcheck's human table shows the port-mapping fields."""

from __future__ import annotations

from rich.console import Console

from punchthrough.cli.render import netcheck_table


def _text(report: dict[str, object]) -> str:
    console = Console(width=120, record=True)
    console.print(netcheck_table(report))
    return console.export_text()


def test_table_shows_protocols_and_mapped_endpoint() -> None:
    out = _text(
        {
            "udp": True,
            "port_mapping_gateway": "10.0.1.1",
            "port_mapping": {"nat_pmp": True, "pcp": True, "upnp": False},
            "port_mapping_external": "203.0.113.1:40000",
            "double_nat": False,
        }
    )
    assert "NAT-PMP, PCP (gateway 10.0.1.1)" in out
    assert "203.0.113.1:40000" in out and "double NAT" not in out


def test_table_flags_double_nat_and_absent_probe() -> None:
    out = _text(
        {
            "port_mapping_gateway": "10.0.1.1",
            "port_mapping": {"nat_pmp": False, "pcp": True, "upnp": False},
            "port_mapping_external": "100.64.0.2:5000",
            "double_nat": True,
        }
    )
    assert "100.64.0.2:5000 (double NAT" in out
    none = _text(
        {
            "port_mapping_gateway": "10.0.1.1",
            "port_mapping": {"nat_pmp": False, "pcp": False, "upnp": False},
        }
    )
    assert "none (gateway 10.0.1.1)" in none
    assert "no gateway given" in _text({"udp": True})
