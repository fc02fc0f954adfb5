"""Human renderings of reports (the ``--json`` forms are the reports' own ``to_json``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

#: Width used when output is not a terminal (pipes, CI logs): rich would otherwise assume 80
#: columns and wrap every port list.
PIPE_WIDTH = 120


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr)
    if not console.is_terminal:
        console = Console(stderr=stderr, width=PIPE_WIDTH)
    return console


def _alloc_text(alloc: Mapping[str, object]) -> str:
    kind = str(alloc.get("kind"))
    delta = alloc.get("delta")
    if kind == "sequential" and isinstance(delta, int):
        kind += f" (delta {delta:+d})"
    conf = alloc.get("confidence")
    if isinstance(conf, float | int) and kind != "unknown":
        kind += f", conf {conf:.2f}"
    return kind


def _opt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


#: Display names of the port-mapping protocols, in the JSON's key order.
PORTMAP_NAMES = {"nat_pmp": "NAT-PMP", "pcp": "PCP", "upnp": "UPnP"}


def _portmap_text(report: Mapping[str, object]) -> str:
    gateway = report.get("port_mapping_gateway")
    if gateway is None:
        return "- (no gateway given)"
    pm = report.get("port_mapping")
    flags: Mapping[str, object] = pm if isinstance(pm, Mapping) else {}
    names = [name for key, name in PORTMAP_NAMES.items() if flags.get(key) is True]
    return f"{', '.join(names) if names else 'none'} (gateway {gateway})"


def _mapped_text(report: Mapping[str, object]) -> str:
    external = report.get("port_mapping_external")
    if external is None:
        return "-"
    if report.get("double_nat") is True:
        return f"{external} (double NAT: not usable by peers)"
    return str(external)


def _ipv6_text(v6: Mapping[str, object]) -> str:
    if not v6.get("reachable"):
        return "not reachable"
    translated = v6.get("translated")
    nat = (
        "translated (NAT66/NPTv6)"
        if translated is True
        else "no NAT"
        if translated is False
        else ""
    )
    parts = [str(v6.get("public_ip")), nat, f"mapping {v6.get('mapping')}"]
    return ", ".join(p for p in parts if p) + f", filtering {v6.get('filtering')}"


def netcheck_table(report: Mapping[str, object], title: str = "netcheck") -> Table:
    """One report as a two-column table."""
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    alloc = report.get("port_allocation")
    alloc_map: Mapping[str, object] = alloc if isinstance(alloc, Mapping) else {}
    seen = alloc_map.get("ports")
    rows: list[tuple[str, str]] = [
        ("UDP", _opt(report.get("udp"))),
        ("public IP", _opt(report.get("public_ip"))),
        ("local address", _opt(report.get("local_address"))),
        ("mapping", _opt(report.get("mapping"))),
        ("filtering", _opt(report.get("filtering"))),
        ("port allocation", _alloc_text(alloc_map) if alloc_map else "-"),
        ("ports seen", ", ".join(str(p) for p in seen) if isinstance(seen, list) else "-"),
        ("preserves local port", _opt(report.get("preserves_port"))),
        ("hairpinning", _opt(report.get("hairpinning"))),
        ("RFC 5780 server", _opt(report.get("rfc5780_server"))),
        ("port mapping", _portmap_text(report)),
        ("mapped endpoint", _mapped_text(report)),
        ("duration", f"{report.get('duration_ms')} ms"),
    ]
    v6 = report.get("ipv6")
    if isinstance(v6, Mapping):
        rows.append(("IPv6", _ipv6_text(v6)))
    for name, value in rows:
        table.add_row(name, value)
    errors = report.get("errors")
    if isinstance(errors, Sequence) and errors:
        table.add_row("notes", "\n".join(str(e) for e in errors))
    return table


#: Short forms for matrix cells (a legend is printed under the table).
BEHAVIOR_SHORT = {
    "endpoint-independent": "EI",
    "address-dependent": "AD",
    "address-and-port-dependent": "APD",
    "unknown": "?",
}
ALLOC_SHORT = {"port-preserving": "preserving", "sequential": "seq", "random": "random"}
MATRIX_LEGEND = "EI endpoint-independent, AD address-dependent, APD address-and-port-dependent"


def _ports_short(ports: object) -> str:
    if not isinstance(ports, list) or not ports:
        return "-"
    if len(set(ports)) == 1:
        return f"{ports[0]} x{len(ports)}"
    head = " ".join(str(p) for p in ports[:3])
    return head + (" ..." if len(ports) > 3 else "")


def netcheck_matrix(
    rows: Sequence[tuple[str, Mapping[str, object]]],
    title: str,
    expected: Mapping[str, tuple[str, str, str]] | None = None,
) -> Table:
    """Several reports (one per NAT profile), one row each; ``expected`` adds a check column."""
    table = Table(title=title, caption=MATRIX_LEGEND)
    for col in ("NAT", "UDP", "map", "filter", "allocation", "ports", "hairpin", "ms"):
        table.add_column(col, no_wrap=col in ("NAT", "allocation"))
    if expected is not None:
        table.add_column("ok")
    for name, r in rows:
        alloc = r.get("port_allocation")
        a: Mapping[str, object] = alloc if isinstance(alloc, Mapping) else {}
        kind = str(a.get("kind", "unknown"))
        kind_text = ALLOC_SHORT.get(kind, kind)
        delta = a.get("delta")
        if kind == "sequential" and isinstance(delta, int):
            kind_text += f" {delta:+d}"
        ms = r.get("duration_ms")
        cells = [
            name,
            _opt(r.get("udp")),
            BEHAVIOR_SHORT.get(str(r.get("mapping")), "?"),
            BEHAVIOR_SHORT.get(str(r.get("filtering")), "?"),
            kind_text,
            _ports_short(a.get("ports")),
            _opt(r.get("hairpinning")),
            f"{ms:.0f}" if isinstance(ms, float | int) else "-",
        ]
        if expected is not None:
            want = expected.get(name)
            got = (str(r.get("mapping")), str(r.get("filtering")), kind)
            cells.append("-" if want is None else ("[green]yes" if got == want else "[red]NO"))
        table.add_row(*cells)
    return table
