"""``punchthrough relay``: run a relay (STUN + registration + forwarding) until interrupted."""

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
from punchthrough.identity import Identity, KeyFileError
from punchthrough.netio import UdpNetwork
from punchthrough.relay import RelayLimits, RelayServer
from punchthrough.relay.stream import StreamLimits, StreamListener, server_context

log = logging.getLogger("punchthrough.relay")


def relay(
    listen: Annotated[
        list[str], typer.Option("--listen", help="IP:PORT to serve relay + STUN on (repeatable).")
    ],
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
) -> None:
    """Relay end-to-end encrypted packets between registered peers (SIGINT/SIGTERM stops)."""
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
    try:
        limits = RelayLimits(
            idle_timeout=idle_timeout,
            packets_per_second=pps,
            packet_burst=max(pps, 1.0),
            bytes_per_second=bps,
            byte_burst=max(bps, 1500.0),
            memory_budget=None if memory_budget is None else int(memory_budget * 1e6),
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
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            server = await RelayServer.start(
                UdpNetwork(),
                listen=addresses,
                identity=ident,
                alt_ip=alt_ip,
                limits=limits,
                fast_path=fast_path,
            )
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot start: {exc}") from None
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
            await server.close()
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
