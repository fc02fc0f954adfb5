"""``punchthrough sim ...``: run punchthrough's real code against simulated NATs."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from punchthrough.cli.render import netcheck_table
from punchthrough.scenario.netcheck import run_sim_netcheck
from punchthrough.sim import PROFILES, SimulationError

sim_app = typer.Typer(
    help="Run punchthrough in the deterministic simulator (virtual time, RFC 4787 NAT models).",
    no_args_is_help=True,
)


@sim_app.callback()
def _sim() -> None:
    """Keeps ``sim`` a command group even while it has a single command."""


@sim_app.command("netcheck")
def sim_netcheck(
    nat: Annotated[
        str, typer.Option("--nat", help=f"NAT profile: {', '.join(PROFILES)}.")
    ] = "eim-apdf",
    delta: Annotated[
        int | None, typer.Option(help="Sequential allocation step (any sign, not 0).")
    ] = None,
    churn: Annotated[
        float | None,
        typer.Option(min=0.0, help="Background flows per second from other hosts behind the NAT."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same run.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    trace: Annotated[
        bool, typer.Option("--trace", help="Print the packet trace (to stderr).")
    ] = False,
    timeout: Annotated[
        float, typer.Option(min=0.05, help="Seconds (virtual) to wait for any STUN answer.")
    ] = 3.0,
) -> None:
    """Run netcheck behind a simulated NAT and print the same report as `punchthrough netcheck`."""
    if nat not in PROFILES:
        raise typer.BadParameter(
            f"unknown profile; choose from {', '.join(PROFILES)}", param_hint="--nat"
        )
    params: dict[str, Any] = {}
    if delta is not None:
        params["delta"] = delta
        params.setdefault("allocation", "sequential")
    if churn is not None:
        params["churn"] = churn
    try:
        result = run_sim_netcheck(nat, seed=seed, trace=trace, timeout=timeout, **params)
    except ValueError as exc:  # bad free parameters, e.g. --delta 0 or a NAT option on `open`
        raise typer.BadParameter(str(exc)) from None
    except SimulationError as exc:
        typer.echo(f"simulation failed: {exc}", err=True)
        raise typer.Exit(2) from None
    if trace:
        typer.echo(result.world.format_trace(), err=True)
    report = result.report.to_json()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        Console().print(netcheck_table(report, title=f"netcheck (simulated: {nat}, seed {seed})"))
