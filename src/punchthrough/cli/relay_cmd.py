"""``punchthrough relay``: run a relay (STUN + registration + forwarding) until interrupted.

SIGINT stops it; SIGTERM drains it (clients are told to move to another relay, then it stops).
Fleet, metrics and config-file options: :mod:`punchthrough.cli.relay_fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer

from punchthrough.cli.addr import parse_addresses
from punchthrough.cli.relay_fleet import fleet_options, load_config, pick, start_metrics
from punchthrough.identity import Identity, KeyFileError
from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayCloseCode, RelayLimits, RelayServer
from punchthrough.relay.stream import StreamLimits, StreamListener, server_context

log = logging.getLogger("punchthrough.relay")


def relay(
    listen: Annotated[
        list[str] | None,
        typer.Option("--listen", help="IP:PORT to serve relay + STUN on (repeatable)."),
    ] = None,
    alt_ip: Annotated[
        str | None,
        typer.Option(help="Second IP: answer STUN on it and on port+1 too (RFC 5780)."),
    ] = None,
    identity: Annotated[
        Path | None,
        typer.Option(help="Relay key file (default: an ephemeral identity for this run)."),
    ] = None,
    json_stats: Annotated[
        bool, typer.Option("--json-stats", help="Print stats as JSON lines on stdout.")
    ] = False,
    stats_interval: Annotated[
        float, typer.Option(help="Seconds between stats reports (0: only at exit).")
    ] = 60.0,
    idle_timeout: Annotated[
        float, typer.Option(help="Forget a silent client after this many seconds.")
    ] = 30.0,
    pps: Annotated[float, typer.Option(help="Per-client packet rate limit (packets/s).")] = 2000.0,
    bps: Annotated[
        float, typer.Option(help="Per-client payload byte rate limit (bytes/s).")
    ] = 4_000_000.0,
    uvloop: Annotated[
        bool | None,
        typer.Option("--uvloop/--no-uvloop", help="Use uvloop (default: if installed)."),
    ] = None,
    tcp_listen: Annotated[
        list[str] | None,
        typer.Option(
            "--tcp-listen",
            help="IP:PORT for the relay over TCP (repeatable): TLS and WebSocket (wss://) on "
            "one port, chosen by ALPN. Clients list it as tls://HOST:PORT / wss://HOST:PORT/PATH.",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="CA-issued certificate chain (PEM) for --tcp-listen (default: the "
            "relay's identity-bound certificate; clients then pin the relay's id=)."
        ),
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Private key (PEM) of --tls-cert.")] = None,
    ws_path: Annotated[str, typer.Option(help="URL path of the WebSocket upgrade.")] = "/relay",
    memory_budget: Annotated[
        float | None,
        typer.Option(
            "--memory-budget",
            help="MB of memory for client connections (~0.1 MB each); full: new clients refused.",
        ),
    ] = None,
    fast_path: Annotated[
        bool,
        typer.Option(
            "--fast-path/--no-fast-path",
            help="Forward relay frames in batches, in place (recvmmsg/sendmmsg on Linux).",
        ),
    ] = True,
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML settings file (options win over it).")
    ] = None,
    relay_id: Annotated[
        str | None, typer.Option("--relay-id", help="This relay's id in a fleet.")
    ] = None,
    directory: Annotated[
        str | None,
        typer.Option(help="Fleet directory: 'memory' (default with --relay-id) or redis://..."),
    ] = None,
    directory_ttl: Annotated[
        float, typer.Option(min=1.0, help="Seconds a directory entry lives unrefreshed.")
    ] = 30.0,
    advertise: Annotated[
        list[str] | None,
        typer.Option(help="IP:PORT clients reach this relay at (directory; default: --listen)."),
    ] = None,
    metrics: Annotated[
        str | None, typer.Option(help="IP:PORT to serve Prometheus /metrics and /healthz on.")
    ] = None,
    drain_grace: Annotated[
        float, typer.Option(min=0.0, help="SIGTERM: seconds to let clients move before exit.")
    ] = 2.0,
) -> None:
    """Relay end-to-end encrypted packets between registered peers (SIGINT stops, SIGTERM
    drains: clients are told to move to another relay of the fleet first)."""
    cfg = load_config(config)
    listen = pick(listen, None, cfg, "listen")
    alt_ip = pick(alt_ip, None, cfg, "alt_ip")
    identity = pick(identity, None, cfg, "identity")
    identity = Path(identity) if identity is not None else None
    json_stats = bool(pick(json_stats, False, cfg, "json_stats"))
    stats_interval = float(pick(stats_interval, 60.0, cfg, "stats_interval"))
    idle_timeout = float(pick(idle_timeout, 30.0, cfg, "idle_timeout"))
    pps = float(pick(pps, 2000.0, cfg, "pps"))
    bps = float(pick(bps, 4_000_000.0, cfg, "bps"))
    drain_grace = float(pick(drain_grace, 2.0, cfg, "drain_grace"))
    memory_budget = pick(memory_budget, None, cfg, "memory_budget")
    fast_path = bool(pick(fast_path, True, cfg, "fast_path"))
    fleet_opts = fleet_options(cfg, relay_id, directory, directory_ttl, advertise, metrics)
    addresses = parse_addresses(listen)
    if not addresses:
        raise typer.BadParameter("give at least one --listen IP:PORT")
    tcp_addresses = parse_addresses(tcp_listen)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    try:
        stream_limits = StreamLimits(ws_path=ws_path)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ws-path") from None
    ident: Identity | None = None
    if identity is not None:
        try:
            ident = Identity.load(identity)
        except KeyFileError as exc:
            raise typer.BadParameter(str(exc)) from None
    fleet = fleet_opts.fleet_config()
    try:
        limits = RelayLimits(
            idle_timeout=idle_timeout,
            packets_per_second=pps,
            packet_burst=max(pps, 1.0),
            bytes_per_second=bps,
            byte_burst=max(bps, 1500.0),
            memory_budget=None if memory_budget is None else int(memory_budget * 1e6),
            shutdown_grace=drain_grace,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    def report(server: RelayServer, final: bool) -> None:
        stats = server.stats
        if json_stats:
            print(json.dumps({"event": "final" if final else "stats", **stats}), flush=True)
        if final and not json_stats:
            typer.echo("stats: " + " ".join(f"{k}={v}" for k, v in stats.items() if v), err=True)
        log.info("stats: %s", stats)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        close_code = [RelayCloseCode.SHUTDOWN]

        def drain() -> None:
            close_code[0] = RelayCloseCode.DRAINING
            stop.set()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGINT, stop.set)
            loop.add_signal_handler(signal.SIGTERM, drain)
        try:
            server = await RelayServer.start(
                UdpNetwork(),
                listen=addresses,
                identity=ident,
                alt_ip=alt_ip,
                limits=limits,
                fast_path=fast_path,
                fleet=fleet,
            )
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot start: {exc}") from None
        metrics_server = None
        try:
            listeners = []
            if tcp_addresses:
                try:
                    ctx = server_context(server.identity, cert_file=tls_cert, key_file=tls_key)
                    for host, port in tcp_addresses:
                        listeners.append(
                            await StreamListener.start(server, host, port, ctx, stream_limits)
                        )
                except (OSError, ValueError) as exc:
                    raise typer.BadParameter(f"cannot start TCP: {exc}") from None
            tcp = [f"{h}:{p}" for h, p in (lst.address for lst in listeners)]
            metrics_server = await start_metrics(server, fleet_opts.metrics)
            bound = ", ".join(f"{h}:{p}" for h, p in server.addresses)
            stun = ", ".join(f"{h}:{p}" for h, p in server.stun_addresses)
            typer.echo(f"relay {server.peer_id} listening on {bound} (STUN on {stun})", err=True)
            if tcp:
                typer.echo(f"relay over TLS/WebSocket on TCP {', '.join(tcp)}", err=True)
            if json_stats:
                print(
                    json.dumps(
                        {
                            "event": "listening",
                            "peer_id": str(server.peer_id),
                            "addresses": [f"{h}:{p}" for h, p in server.addresses],
                            "stun_addresses": [f"{h}:{p}" for h, p in server.stun_addresses],
                            "tcp_addresses": tcp,
                            "relay_id": fleet.relay_id if fleet is not None else None,
                        }
                    ),
                    flush=True,
                )
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(stats_interval if stats_interval > 0 else None):
                        await stop.wait()
                if not stop.is_set():
                    report(server, final=False)
        finally:
            if close_code[0] == RelayCloseCode.DRAINING:
                typer.echo("draining: telling clients to move", err=True)
            await server.close(code=close_code[0])
            if metrics_server is not None:
                await metrics_server.close()
            if fleet is not None:
                await fleet.directory.close()
            report(server, final=True)
            typer.echo("relay stopped", err=True)

    if uvloop is not False:
        try:
            import uvloop as _uvloop
        except ImportError:
            if uvloop:
                raise typer.BadParameter(
                    "uvloop is not installed (pip install 'punchthrough[fast]')"
                ) from None
        else:
            _uvloop.run(serve())
            return
    asyncio.run(serve())
