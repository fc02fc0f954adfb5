"""``punchthrough stun-server``: a STUN server, RFC 5780 capable with ``--alt-ip``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Annotated

import typer

from punchthrough.cli.addr import parse_addresses
from punchthrough.netio import UdpNetwork
from punchthrough.stun import StunServer

log = logging.getLogger("punchthrough.stun-server")


def stun_server(
    listen: Annotated[list[str], typer.Option("--listen", help="IP:PORT to serve (repeatable).")],
    alt_ip: Annotated[
        str | None,
        typer.Option(help="Second IP: serve every port on it too and do RFC 5780."),
    ] = None,
    alt_port: Annotated[
        int | None,
        typer.Option(help="Alternate port for RFC 5780 (default: each listen port + 1)."),
    ] = None,
) -> None:
    """Answer STUN Binding requests until interrupted (SIGINT/SIGTERM)."""
    addresses = parse_addresses(listen)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            server = await StunServer.start(
                UdpNetwork(), listen=addresses, alt_ip=alt_ip, alt_port=alt_port
            )
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot start: {exc}") from None
        try:
            bound = ", ".join(f"{h}:{p}" for h, p in server.addresses)
            mode = "RFC 5780" if alt_ip else "plain (no OTHER-ADDRESS)"
            typer.echo(f"stun-server listening on {bound} [{mode}]", err=True)
            await stop.wait()
        finally:
            server.close()
            log.info("stats: %s", server.stats)

    asyncio.run(serve())
