"""``punchthrough matrix``: the NAT pair success-rate matrix, in the simulator or the kernel lab.

Writes ``OUT/matrix.json`` (issue 7's schema), ``OUT/matrix.html`` (self-contained grid),
``OUT/trials.jsonl`` (one line per trial, written as trials finish, so a long run that dies
keeps what it measured) and PNG plots when matplotlib is installed. A progress bar on stderr
while it runs; a summary table at the end (stderr with ``--json``, which prints matrix.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from punchthrough.cli.render import make_console
from punchthrough.matrix import lab as lab_backend
from punchthrough.matrix import sim as sim_backend
from punchthrough.matrix.backend import MatrixBackend
from punchthrough.matrix.model import TrialResult, all_pairs, parse_pairs
from punchthrough.matrix.plots import write_plots
from punchthrough.matrix.profiles import BACKENDS, IPV6_MODES, default_profiles, known_profiles
from punchthrough.matrix.report_html import render_html
from punchthrough.matrix.runner import MatrixRun, run_matrix, run_matrix_parallel

EXIT_ALL_FAILED = 1
EXIT_BAD_ARGS = 2


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


def summary_table(run: MatrixRun) -> Table:
    table = Table(title=f"NAT pair matrix ({run.backend}, {run.trials} trials per cell)")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("a (calls)", "left"),
        ("b", "left"),
        ("direct", "right"),
        ("rate", "right"),
        ("95% CI", "right"),
        ("p50 ms", "right"),
        ("p95 ms", "right"),
        ("strategy", "left"),
        ("lost", "right"),
    )
    for col, just in columns:
        table.add_column(col, justify=just)
    for c in run.cells:
        table.add_row(
            escape(c.a),
            escape(c.b),
            f"{c.direct}/{c.trials}",
            f"{100 * c.success_rate:.0f}%",
            f"{100 * c.ci95[0]:.0f}-{100 * c.ci95[1]:.0f}%",
            _ms(c.p50_direct_ms),
            _ms(c.p95_direct_ms),
            escape(", ".join(f"{k} {v}" for k, v in c.strategies.items())),
            str(c.frames_lost),
        )
    return table


def _make_backend(
    backend: str,
    rtt: float,
    duration: float | None,
    pps: float,
    seed: int,
    jitter: float = 0.0,
    loss: float = 0.0,
    ipv6: str = "none",
) -> tuple[MatrixBackend, int]:
    """The backend and its default trials per cell."""
    if backend == "sim":
        sim = sim_backend.SimBackend(
            rtt_ms=rtt,
            duration=sim_backend.DEFAULT_DURATION_S if duration is None else duration,
            pps=pps,
            seed=seed,
            jitter_ms=jitter,
            loss=loss / 100.0,
            ipv6=ipv6,
        )
        return sim, sim_backend.DEFAULT_TRIALS
    lab = lab_backend.LabBackend(
        duration=lab_backend.DEFAULT_DURATION_S if duration is None else duration,
        pps=pps,
        requested_rtt_ms=rtt,
        ipv6=ipv6,
    )
    return lab, lab_backend.DEFAULT_TRIALS


def matrix(
    backend: Annotated[
        str, typer.Option(help="Where to run: sim (virtual time) or lab (root).")
    ] = "sim",
    trials: Annotated[
        int | None,
        typer.Option(min=1, max=100_000, help="Trials per cell (default: sim 200, lab 3)."),
    ] = None,
    pairs: Annotated[
        list[str] | None,
        typer.Option(
            "--pairs",
            help="Only these pairs, A:B (A calls B); repeatable or comma-separated. "
            "Default: every unordered pair of UDP-capable profiles, same-same included.",
        ),
    ] = None,
    rtt: Annotated[
        float,
        typer.Option(
            "--rtt",
            min=0.0,
            max=2000.0,
            help="Direct-path round-trip time in ms (sim: rtt/4 one-way on each WAN link, "
            "the relayed RTT is then 2x; lab: each router delays every packet rtt/4 with an "
            "NFQUEUE delayer, no netem, so direct and relayed RTT are both rtt; 0: no delay).",
        ),
    ] = sim_backend.DEFAULT_RTT_MS,
    duration: Annotated[
        float | None,
        typer.Option(min=0.0, max=600.0, help="Seconds of 50 pps call per trial (default 10)."),
    ] = None,
    pps: Annotated[float, typer.Option(min=1.0, max=1000.0, help="Call frames per second.")] = 50.0,
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("matrix-out"),
    seed: Annotated[
        int, typer.Option(min=0, help="Base seed (sim): trial k uses seed*1000000+k.")
    ] = 1,
    jobs: Annotated[
        int, typer.Option(min=1, max=256, help="Worker processes (sim only; results identical).")
    ] = 1,
    jitter: Annotated[
        float,
        typer.Option(min=0.0, max=1000.0, help="Sim: uniform jitter (ms) on the peers' WAN links."),
    ] = 0.0,
    loss: Annotated[
        float,
        typer.Option(min=0.0, max=50.0, help="Sim: loss percent on the peers' WAN links."),
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print matrix.json on stdout.")] = False,
    ipv6: Annotated[
        str,
        typer.Option(
            help="Which peers also have IPv6 behind a stateful firewall: none, both, a "
            "(the caller), b (the callee)."
        ),
    ] = "none",
) -> None:
    """Success-rate matrix across NAT pairs: how often each pair ends direct, how fast, how."""
    if backend not in BACKENDS:
        raise typer.BadParameter(f"choose from {', '.join(BACKENDS)}", param_hint="--backend")
    known = known_profiles(backend)
    try:
        chosen = parse_pairs(pairs, known) if pairs else all_pairs(default_profiles(backend))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--pairs") from None
    if not chosen:
        raise typer.BadParameter("no pairs given", param_hint="--pairs")
    if backend == "lab" and os.geteuid() != 0:
        typer.echo("error: the lab backend needs root (network namespaces, nftables)", err=True)
        raise typer.Exit(EXIT_BAD_ARGS)
    if ipv6 not in IPV6_MODES:
        raise typer.BadParameter(f"choose from {', '.join(IPV6_MODES)}", param_hint="--ipv6")
    runner, default_trials = _make_backend(backend, rtt, duration, pps, seed, jitter, loss, ipv6)
    n_trials = trials or default_trials
    out.mkdir(parents=True, exist_ok=True)
    err = make_console(stderr=True)
    human = err if as_json else make_console()
    for note in runner.notes:
        err.print(f"[dim]note: {escape(note)}[/dim]")
    if jobs > 1 and backend != "sim":
        err.print("[dim]note: --jobs applies to the sim backend only; running sequentially[/dim]")
    run = _run_with_progress(runner, chosen, n_trials, out, err, jobs)
    document = run.to_json()
    (out / "matrix.json").write_text(json.dumps(document, indent=2) + "\n")
    ranges = sim_backend.true_port_ranges(run.pairs) if backend == "sim" else None
    plots = write_plots(
        run.results,
        run.pairs,
        out,
        title=f"time to direct ({backend})",
        birthday_ranges=ranges,
    )
    notes = [*run.notes, *plots.notes]
    (out / "matrix.html").write_text(render_html(document, notes=notes, order=known))
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    human.print(summary_table(run))
    for note in plots.notes:
        human.print(f"[dim]note: {escape(note)}[/dim]")
    written = ["matrix.json", "matrix.html", "trials.jsonl", *(p.name for p in plots.files)]
    human.print(
        escape(
            f"{len(run.results)} trials in {run.wall_s:.1f} s; wrote {', '.join(written)} to {out}"
        )
    )
    if run.results and all(r.error is not None for r in run.results):
        first = run.results[0].error
        human.print(f"[red]every trial failed[/red], e.g.: {escape(first or '')}")
        raise typer.Exit(EXIT_ALL_FAILED)


def _run_with_progress(
    runner: MatrixBackend,
    pairs: list[tuple[str, str]],
    trials: int,
    out: Path,
    console: Console,
    jobs: int = 1,
) -> MatrixRun:
    progress = Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("direct {task.fields[direct]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    log: IO[str]
    with progress, (out / "trials.jsonl").open("w") as log:
        task = progress.add_task("matrix", total=len(pairs) * trials, direct=0)
        counts: dict[str, Any] = {"direct": 0}

        def on_cell(a: str, b: str) -> None:
            progress.update(task, description=f"{a} : {b}")

        def on_trial(result: TrialResult) -> None:
            counts["direct"] += int(result.direct)
            log.write(json.dumps(result.to_json()) + "\n")
            log.flush()
            progress.update(task, advance=1, direct=counts["direct"])

        if jobs > 1 and isinstance(runner, sim_backend.SimBackend):
            progress.update(task, description=f"{len(pairs)} pairs on {jobs} processes")
            return run_matrix_parallel(runner, pairs, trials, jobs, on_trial=on_trial)
        return run_matrix(runner, pairs, trials, on_cell=on_cell, on_trial=on_trial)
