"""``punchthrough lab netcheck``: netcheck behind one real kernel NAT of each kind (root)."""

from __future__ import annotations

import json
import os
import time
from typing import Annotated

import typer

from punchthrough.cli.render import make_console, netcheck_matrix
from punchthrough.lab import PROFILE_NAMES, PROFILES, Lab, netcheck_all


def lab_netcheck(
    as_json: Annotated[bool, typer.Option("--json", help="Print the reports as JSON.")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Per-probe timeout (s).")] = 2.0,
) -> None:
    """Build a lab, run netcheck behind one real NAT of each kind, compare with the profiles."""
    if os.geteuid() != 0:
        typer.echo(
            "punchthrough lab netcheck builds real kernel NATs in network namespaces: run it as "
            "root, or try `punchthrough sim netcheck --nat eim-apdf`.",
            err=True,
        )
        raise typer.Exit(1)
    console = make_console(stderr=as_json)
    t0 = time.monotonic()
    with console.status("building the lab: 8 routers with real nftables NATs, STUN servers"):
        lab = Lab(PROFILE_NAMES).up()
    try:
        console.print(
            f"lab {lab.prefix} up in {time.monotonic() - t0:.2f} s: "
            f"{len(lab.namespaces)} namespaces"
        )
        with console.status("netcheck behind every NAT (in parallel)"):
            reports = netcheck_all(lab, lab.stun_servers(), timeout=timeout)
    finally:
        lab.close()
    if as_json:
        typer.echo(json.dumps({"backend": "lab", "reports": reports}, indent=2))
        return
    expected = {n: (p.mapping, p.filtering, p.allocation) for n, p in PROFILES.items()}
    console.print(
        netcheck_matrix(list(reports.items()), "netcheck behind real kernel NATs", expected)
    )
    wrong = [
        name
        for name, r in reports.items()
        if (r["mapping"], r["filtering"], r["port_allocation"]["kind"])
        != (PROFILES[name].mapping, PROFILES[name].filtering, PROFILES[name].allocation)
    ]
    if wrong:
        console.print(f"[red]differs from the profile's expected behaviour: {', '.join(wrong)}")
        raise typer.Exit(1)
    console.print(
        "[green]every NAT classified as its profile says (mapping, filtering, port allocation)."
    )
