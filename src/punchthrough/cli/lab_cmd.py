"""``punchthrough lab``: build, inspect, use and tear down the kernel NAT lab (root)."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from punchthrough.lab import PROFILE_NAMES, HostSpec, Lab, LabError, RouterOptions, get_profile
from punchthrough.lab.proc import child_env, pid_alive

lab_app = typer.Typer(
    help="Real kernel NATs in network namespaces (nftables, coturn, miniupnpd). Needs root.",
    no_args_is_help=True,
)


def _need_root() -> None:
    if os.geteuid() != 0:
        typer.echo("punchthrough lab needs root (network namespaces, nftables)", err=True)
        raise typer.Exit(2)


def _fail(msg: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


@lab_app.command("up")
def up(
    prefix: Annotated[
        str | None, typer.Option(help="Namespace name prefix (default: random 'ptXXXXXX').")
    ] = None,
    profile: Annotated[
        list[str] | None,
        typer.Option(
            "--profile",
            "-p",
            help=f"One host per use ({', '.join(PROFILE_NAMES)}); default: one host of each.",
        ),
    ] = None,
    miniupnpd: Annotated[
        bool, typer.Option(help="Run miniupnpd (NAT-PMP/PCP/UPnP) on every NAT router.")
    ] = False,
    timeout: Annotated[
        int | None, typer.Option(help="UDP binding timeout on every router, seconds.")
    ] = None,
    loss: Annotated[float, typer.Option(help="Random loss percent on every router.")] = 0.0,
    stun_server: Annotated[
        bool, typer.Option(help="Start our STUN server (198.51.100.1-.4).")
    ] = True,
    coturn: Annotated[bool, typer.Option(help="Start coturn (198.51.100.10-.13).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the lab state as JSON.")] = False,
) -> None:
    """Build a lab and leave it running; `punchthrough lab down --prefix P` removes it."""
    _need_root()
    try:
        specs = []
        for name in profile or PROFILE_NAMES:
            prof = get_profile(name)
            opts = RouterOptions(
                udp_timeout=timeout, loss_percent=loss, miniupnpd=miniupnpd and prof.nat
            )
            specs.append(HostSpec(name, opts))
        lab = Lab(specs, prefix=prefix, stun_server=stun_server, coturn=coturn or miniupnpd)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    try:
        lab.up()
    except (LabError, OSError, KeyboardInterrupt) as exc:
        try:
            lab.close()
        finally:
            typer.echo(f"error: lab up failed: {exc}", err=True)
        raise typer.Exit(1) from None
    state = lab.to_json()
    if json_out:
        typer.echo(json.dumps(state, indent=2))
        return
    _print_lab(state)


_ABBR = {
    "endpoint-independent": "EI",
    "address-dependent": "AD",
    "address-and-port-dependent": "APD",
    "unknown": "?",
}


def _print_lab(state: dict[str, Any]) -> None:
    console = Console(width=max(Console().width, 100))
    table = Table(title=f"lab {state['prefix']}")
    for col in ("host", "profile", "ns / router ns", "host ip", "public ip", "map/filter"):
        table.add_column(col, no_wrap=True)
    for h in state["hosts"]:
        exp = h["expected"]
        table.add_row(
            h["name"],
            h["profile"],
            f"{h['ns']} / {h['router_ns']}",
            h["ip"],
            h["public_ip"],
            f"{_ABBR[exp['mapping']]}/{_ABBR[exp['filtering']]}",
        )
    console.print(table)
    servers = state.get("servers", {})
    for kind in ("stun", "coturn"):
        if servers.get(kind):
            eps = " ".join(f"{ip}:{port}" for ip, port in servers[kind])
            console.print(f"{kind}: {eps}  (namespace {state['pub_ns']})")
    p = state["prefix"]
    console.print(f"run a command:  punchthrough lab exec --prefix {p} h1 -- ip addr")
    console.print(f"tear down:      punchthrough lab down --prefix {p}")


@lab_app.command("down")
def down(
    prefix: Annotated[str | None, typer.Option(help="Lab to remove.")] = None,
    all_labs: Annotated[
        bool, typer.Option("--all", help="Remove every lab with saved state.")
    ] = False,
) -> None:
    """Kill a lab's processes and delete its namespaces (also after a crashed run)."""
    _need_root()
    if all_labs:
        prefixes = [s["prefix"] for s in Lab.list_states() if "prefix" in s]
    elif prefix:
        prefixes = [prefix]
    else:
        raise _fail("give --prefix P or --all", 2)
    failed = False
    for p in prefixes:
        try:
            removed = Lab.down(p)
        except (LabError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            failed = True
            continue
        typer.echo(f"lab {p}: removed {len(removed)} namespaces")
    if failed:
        raise typer.Exit(1)


def _resolve_prefix(prefix: str | None) -> str:
    if prefix:
        return prefix
    states = Lab.list_states()
    if len(states) == 1:
        return str(states[0]["prefix"])
    raise _fail("several or no labs running; give --prefix" if states else "no lab running", 2)


@lab_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def exec_(
    host: Annotated[str, typer.Argument(help="Host: profile name, name (h1) or index (0).")],
    cmd: Annotated[list[str], typer.Argument(help="Command after `--`.")],
    prefix: Annotated[str | None, typer.Option(help="Lab (default: the only one).")] = None,
    router: Annotated[bool, typer.Option(help="Run in the host's router instead.")] = False,
) -> None:
    """Run a command inside a lab host's namespace: `lab exec h1 -- ip addr`."""
    _need_root()
    try:
        state = Lab.load_state(_resolve_prefix(prefix))
    except LabError as exc:
        raise _fail(str(exc), 2) from None
    hosts = state.get("hosts", [])
    match = [h for h in hosts if host in (h["profile"], h["name"], str(h["index"]))]
    if not match:
        names = ", ".join(f"{h['name']}={h['profile']}" for h in hosts)
        raise _fail(f"no host {host!r}; hosts: {names}", 2)
    ns = match[0]["router_ns" if router else "ns"]
    try:
        rc = subprocess.call(["ip", "netns", "exec", ns, *cmd], env=child_env())
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(rc)


@lab_app.command("status")
def status(
    prefix: Annotated[str | None, typer.Option(help="Only this lab.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List labs with saved state, and whether their namespaces and processes are alive."""
    _need_root()
    ns_now = set(
        subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        ).stdout.split()
    )
    labs = []
    for st in Lab.list_states():
        if prefix and st.get("prefix") != prefix:
            continue
        st["namespaces_alive"] = [n for n in st.get("namespaces", []) if n in ns_now]
        for p in st.get("processes", []):
            p["alive"] = pid_alive(int(p["pid"]))
        labs.append(st)
    if json_out:
        typer.echo(json.dumps(labs, indent=2))
        return
    if not labs:
        typer.echo("no labs")
        return
    for st in labs:
        _print_lab(st)
        procs = st.get("processes", [])
        alive = sum(1 for p in procs if p["alive"])
        typer.echo(
            f"namespaces alive: {len(st['namespaces_alive'])}/{len(st['namespaces'])}; "
            f"processes alive: {alive}/{len(procs)}"
        )


# registered last: the command lives in its own module (it renders the netcheck matrix)
from punchthrough.cli.lab_netcheck_cmd import lab_netcheck  # noqa: E402

lab_app.command("netcheck")(lab_netcheck)
