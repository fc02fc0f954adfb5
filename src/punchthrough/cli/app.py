"""The ``punchthrough`` command: one Typer app, one module per command group."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from punchthrough import __version__
from punchthrough.cli.demo_cmd import demo
from punchthrough.cli.identity_cmd import identity_app
from punchthrough.cli.lab_cmd import lab_app
from punchthrough.cli.matrix_cmd import matrix
from punchthrough.cli.netcheck_cmd import netcheck
from punchthrough.cli.peer_cmd import connect, listen
from punchthrough.cli.relay_cmd import relay
from punchthrough.cli.sim_cmd import sim_app
from punchthrough.cli.stun_cmd import stun_server

app = typer.Typer(
    help="Direct, end-to-end encrypted QUIC connections through any NAT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("netcheck")(netcheck)
app.command("stun-server")(stun_server)
app.command("demo")(demo)
app.command("relay")(relay)
app.command("listen")(listen)
app.command("connect")(connect)
app.command("matrix")(matrix)
app.add_typer(lab_app, name="lab")
app.add_typer(identity_app, name="identity")
app.add_typer(sim_app, name="sim")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"punchthrough {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="More logs.")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    app()
