"""``punchthrough netcheck``: classify the NAT in front of this host."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from typing import Annotated

import typer

from punchthrough.cli.addr import parse_addresses
from punchthrough.cli.render import make_console, netcheck_table
from punchthrough.nat import NetcheckError, run_netcheck
from punchthrough.netio import UdpNetwork
from punchthrough.portmap import default_gateway, local_ip_towards
from punchthrough.portmap.upnp import upnp_available


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
    gateway: Annotated[
        str | None,
        typer.Option(
            help="Also probe port mapping (PCP, NAT-PMP, UPnP) on this gateway IP; 'auto' = the "
            "default route's gateway from /proc/net/route. Off unless given: it sends to the "
            "gateway."
        ),
    ] = None,
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

    gw = default_gateway() if gateway == "auto" else gateway
    if gateway == "auto" and gw is None:
        raise typer.BadParameter("no default IPv4 gateway found", param_hint="--gateway")
    if gw is not None:
        try:
            ipaddress.IPv4Address(gw)
        except ValueError:
            raise typer.BadParameter(
                f"not an IPv4 address: {gw!r}", param_hint="--gateway"
            ) from None
    local_ip = bind if bind not in ("0.0.0.0", "") else None
    if gw is not None and local_ip is None:
        local_ip = local_ip_towards(gw)

    async def go() -> dict[str, object]:
        try:
            report = await run_netcheck(
                UdpNetwork(),
                servers,
                timeout=timeout,
                samples=samples,
                bind_host=bind,
                gateway=gw,
                port_mapping=gw is not None,
                local_ip=local_ip,
                upnp=upnp_available(),
            )
        except NetcheckError as exc:
            raise typer.BadParameter(str(exc)) from None
        return report.to_json()

    result = asyncio.run(go())
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        make_console().print(netcheck_table(result))
