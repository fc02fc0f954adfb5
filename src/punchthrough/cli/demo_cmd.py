"""``punchthrough demo``: the main job in the simulator, as a readable timeline.

Two peers behind NATs (by default the hard pair eim-apdf vs apdm-random, which only the birthday
attack connects directly), the real netcheck, relay, Endpoint and echo-session code in virtual
time (no root, no network, a second or two of real time): what each side learned about its NAT,
when the call worked over the relay, which traversal stages ran or were skipped (and why), when
(and how) it moved to a direct path.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from punchthrough.cli.render import make_console
from punchthrough.endpoint import EndpointError
from punchthrough.matrix.profiles import stacks_for
from punchthrough.scenario.call import run_call_scenario
from punchthrough.sim.nat import PROFILES

#: The hard pair (issue 6): an endpoint-independent NAT against a symmetric one with random
#: ports. Hole punching cannot open it; the birthday attack does, behind the relayed call.
DEFAULT_A = "eim-apdf"
DEFAULT_B = "apdm-random"


def _timeline_table(result: dict[str, Any]) -> Table:
    table = Table(title=f"alice ({result['nat_a']})  <->  bob ({result['nat_b']})")
    table.add_column("t (ms from connect())", justify="right")
    table.add_column("who")
    table.add_column("what")
    for e in result["timeline"]:
        extra = {k: v for k, v in e.items() if k not in ("t_ms", "actor", "event")}
        detail = ", ".join(f"{k}={v}" for k, v in extra.items() if v is not None)
        table.add_row(
            f"{e['t_ms']:.0f}", e["actor"], e["event"] + (f"  [dim]{detail}" if detail else "")
        )
    return table


def _traversal_table(call: dict[str, Any]) -> Table:
    table = Table(title="traversal stages")
    for col in ("stage", "status", "detail"):
        table.add_column(col)
    stages = call.get("traversal", {}).get("stages", [])
    for st in stages:
        detail = {k: v for k, v in st.items() if k not in ("stage", "status")}
        table.add_row(
            str(st.get("stage")),
            str(st.get("status")),
            ", ".join(f"{k}={v}" for k, v in detail.items()),
        )
    return table


def demo(
    nat_a: Annotated[
        str, typer.Option("--a", "--nat-a", help="alice's NAT profile (the caller).")
    ] = DEFAULT_A,
    nat_b: Annotated[
        str, typer.Option("--b", "--nat-b", help="bob's NAT profile (the callee).")
    ] = DEFAULT_B,
    seed: Annotated[int, typer.Option(help="Simulator seed (same seed, same run).")] = 1,
    duration: Annotated[float, typer.Option(min=0.0, max=600.0, help="Call length (s).")] = 10.0,
    one_way_ms: Annotated[
        float, typer.Option("--latency", min=0.0, max=1000.0, help="One-way WAN latency (ms).")
    ] = 10.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    trace: Annotated[bool, typer.Option(help="Also print the packet trace (long).")] = False,
    ipv6: Annotated[
        str,
        typer.Option(
            help="Which peers also have IPv6 behind a stateful firewall: none, both, a, b."
        ),
    ] = "none",
) -> None:
    """Two peers behind NATs in the simulator: netcheck, relay, a call, the move to direct."""
    try:
        stacks = stacks_for(ipv6)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ipv6") from None
    for name in (nat_a, nat_b):
        if name not in PROFILES:
            raise typer.BadParameter(
                f"unknown NAT profile {name!r}; choose from {', '.join(PROFILES)}"
            )
    try:
        result = run_call_scenario(
            nat_a,
            nat_b,
            seed=seed,
            duration=duration,
            one_way_ms=one_way_ms,
            trace=trace,
            stacks=stacks,
        )
    except EndpointError as exc:  # e.g. udp-blocked: the peer cannot even reach the relay
        typer.echo(f"demo: the call could not start: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = make_console()
    console.print(_timeline_table(result))
    console.print(_traversal_table(result["call"]))
    call = result["call"]
    console.print(
        f"path at the end: [bold]{call['path']}[/bold]; frames lost {call['frames_lost']} of "
        f"{call['frames_sent']}; connected after {call['connected_ms']} ms; "
        f"RTT p50 {call['rtt_ms']['p50']} ms (virtual time, {one_way_ms:g} ms one-way WAN links)"
    )
    alone = call["traversal"].get("ipv4_alone_reason")
    if call.get("family") == "ipv6":
        console.print(f"direct over IPv6; {alone}" if alone else "direct over IPv6")
    if trace:
        console.print(result["trace"], markup=False, highlight=False)
