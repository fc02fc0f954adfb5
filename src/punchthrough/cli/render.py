"""Human renderings of reports (the ``--json`` forms are the reports' own ``to_json``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.table import Table


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
        ("duration", f"{report.get('duration_ms')} ms"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    errors = report.get("errors")
    if isinstance(errors, Sequence) and errors:
        table.add_row("notes", "\n".join(str(e) for e in errors))
    return table


def netcheck_matrix(rows: Sequence[tuple[str, Mapping[str, object]]], title: str) -> Table:
    """Several reports (one per NAT profile) side by side, one row each."""
    table = Table(title=title)
    for col in ("NAT", "UDP", "mapping", "filtering", "port allocation", "ports", "hairpin", "ms"):
        table.add_column(col)
    for name, r in rows:
        alloc = r.get("port_allocation")
        ports = alloc.get("ports", []) if isinstance(alloc, Mapping) else []
        table.add_row(
            name,
            _opt(r.get("udp")),
            _opt(r.get("mapping")),
            _opt(r.get("filtering")),
            _alloc_text(alloc) if isinstance(alloc, Mapping) else "-",
            " ".join(str(p) for p in ports) if isinstance(ports, Sequence) else "-",
            _opt(r.get("hairpinning")),
            _opt(r.get("duration_ms")),
        )
    return table
