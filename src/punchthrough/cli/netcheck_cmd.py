"""``punchthrough netcheck``: classify the NAT in front of this host."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from punchthrough.cli.addr import parse_addresses
from punchthrough.cli.render import make_console, netcheck_table
from punchthrough.nat import NetcheckError, run_netcheck
from punchthrough.netio import UdpNetwork


def netcheck(
    stun: Annotated[
        list[str] | None,
        typer.Option("--stun", help="STUN server IP:PORT (repeatable; no public default)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    timeout: Annotated[
        float, typer.Option(min=0.05, help="Seconds to wait for any single STUN answer.")
    ] = 3.0,
    samples: Annotated[
        int, typer.Option(min=3, help="Port-allocation samples wanted (distinct endpoints).")
    ] = 5,
    bind: Annotated[str, typer.Option(help="Local IP to bind the probe sockets to.")] = "0.0.0.0",
) -> None:
    """Report UDP reachability, mapping, filtering, port allocation and hairpinning."""
    servers = parse_addresses(stun)
    if not servers:
        raise typer.BadParameter(
            "give at least one STUN server with --stun IP:PORT (punchthrough never picks a "
            "public server for you); an RFC 5780 server (e.g. `punchthrough stun-server "
            "--alt-ip`) lets netcheck test filtering",
            param_hint="--stun",
        )

    async def go() -> dict[str, object]:
        try:
            report = await run_netcheck(
                UdpNetwork(), servers, timeout=timeout, samples=samples, bind_host=bind
            )
        except NetcheckError as exc:
            raise typer.BadParameter(str(exc)) from None
        return report.to_json()

    result = asyncio.run(go())
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        make_console().print(netcheck_table(result))
