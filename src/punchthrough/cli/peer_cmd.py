"""``punchthrough listen`` and ``punchthrough connect``: a peer that accepts calls, and a caller
that streams voice-sized datagram frames to it and reports what came back.

Thin wrappers: the echo logic is :func:`punchthrough.apps.echo.run_echo_session` /
:func:`punchthrough.apps.echo.serve_endpoint`, which the simulator runs on virtual time.
Exit codes: 0 success, 1 connection failed (one-line reason on stderr), 2 bad arguments,
3 (``connect``) the call ran but lost more frames than ``--max-loss`` allows, 4 (``listen``)
displaced: another endpoint with the same identity registered and took over.

A relay fleet (``--relay-map FILE``, or ``--relay ID=IP:PORT``): register with the nearest
relay only and call peers by id through their home relays (``endpoint.fleet``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from punchthrough.apps.echo import run_echo_session, serve_endpoint
from punchthrough.endpoint import Connection, Endpoint, EndpointConfig, EndpointError
from punchthrough.endpoint.config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_RELAY_TIMEOUT
from punchthrough.endpoint.relaymap import RelayMap, RelayMapError, parse_peer_address
from punchthrough.endpoint.relayspec import names_transports, parse_relay_entry
from punchthrough.identity import Identity, IdentityError, InvalidPeerId, PeerId
from punchthrough.netio import Address, UdpNetwork

EXIT_FAILED = 1
EXIT_BAD_ARGS = 2
EXIT_LOSSY = 3
EXIT_DISPLACED = 4
#: ``connect --max-loss`` default (percent of frames sent): a 50 pps call that loses more than
#: 1 frame in 20 is not a working call, while a relay -> direct switch loses none and a path
#: that dies mid-call and falls back loses about 11 frames in 0.4 s (2% of a 10 s call).
DEFAULT_MAX_LOSS = 5.0

_IDENTITY = typer.Option(
    "--identity",
    help="Identity key file (see `punchthrough identity generate`).",
    show_default=False,
)
_RELAY = typer.Option(
    "--relay",
    help="Relay (repeatable; at least one): HOST:PORT (UDP), optionally with its TLS/WebSocket "
    "transports and identity, comma-separated: "
    "'HOST:3478,tls://HOST:443,wss://HOST/relay,id=pt1...'. ID=IP:PORT: a relay fleet (home "
    "relay by RTT, peers called through their home relays).",
)
_PROXY = typer.Option(
    "--proxy",
    help="HTTP proxy for the relays' TLS/WebSocket transports (http://[user:pass@]host:port); "
    "default: HTTPS_PROXY/https_proxy unless NO_PROXY names the relay.",
)
_RELAY_MAP = typer.Option(
    "--relay-map", help="Relay fleet map file (JSON or TOML: id, addresses, key, region)."
)
_HOME_RELAY = typer.Option(
    "--home-relay", help="Fleet: start homed on this relay id (default: the nearest by RTT)."
)
_STUN = typer.Option(
    "--stun",
    help="STUN server HOST:PORT (repeatable; names resolved): server-reflexive candidates, NAT "
    "mapping.",
)
_BIND = typer.Option(
    "--bind",
    help="Local IP for the endpoint's socket (default: '::', one dual-stack socket, when this "
    "host has a global IPv6 address, else 0.0.0.0).",
)
_PORT = typer.Option("--port", min=0, max=65535, help="Local UDP port (0: any).")
_JSON = typer.Option("--json", help="Machine-readable JSON output.")
_GATEWAY = typer.Option(
    "--gateway",
    help="Gateway IP to ask for a port mapping of our socket (NAT-PMP/PCP); never by default.",
)
_UPNP = typer.Option("--upnp", help="With --gateway: also try UPnP IGD.")
_RELAY_TIMEOUT = typer.Option(
    "--relay-timeout",
    min=0.1,
    help="Seconds to wait for each relay registration (EndpointConfig.relay_timeout).",
)


def _out(obj: dict[str, Any] | str, as_json: bool) -> None:
    """One line on stdout, flushed (scripts and lab tests read it as it comes)."""
    line = json.dumps(obj) if as_json and not isinstance(obj, str) else str(obj)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _fail(reason: str, as_json: bool) -> typer.Exit:
    if as_json:
        _out({"error": reason}, True)
    typer.echo(f"error: {reason}", err=True)
    return typer.Exit(EXIT_FAILED)


def _fleet(relay: list[str] | None, relay_map: Path | None) -> RelayMap | None:
    """A relay map from ``--relay-map``, or from ``--relay ID=IP:PORT`` arguments."""
    try:
        if relay_map is not None:
            return RelayMap.load(relay_map)
        if relay and all("=" in r and not names_transports(r) for r in relay):
            return RelayMap.from_specs(relay)
    except RelayMapError as exc:
        raise typer.BadParameter(str(exc), param_hint="--relay-map/--relay") from None
    if relay and any("=" in r and not names_transports(r) for r in relay):
        raise typer.BadParameter("give every --relay as ID=IP:PORT, or none", param_hint="--relay")
    return None


def _load(
    identity: Path, relay: list[str] | None, stun: list[str] | None, fleet: bool = False
) -> tuple[Identity, list[str], list[str]]:
    try:
        ident = Identity.load(identity)
    except IdentityError as exc:
        raise typer.BadParameter(str(exc), param_hint="--identity") from None
    relays = [] if fleet else list(relay or [])
    for text in relays:
        try:
            parse_relay_entry(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--relay") from None
    if not relays and not fleet:
        raise typer.BadParameter(
            "give at least one relay with --relay IP:PORT", param_hint="--relay"
        )
    stuns = list(stun or [])
    for text in stuns:
        try:
            entry = parse_relay_entry(text)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--stun") from None
        if entry.udp is None or entry.streams or entry.pin:
            raise typer.BadParameter(f"{text!r} is not HOST:PORT", param_hint="--stun")
    return ident, relays, stuns


def _addr(a: Address) -> str:
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


def listen(
    identity: Annotated[Path, _IDENTITY],
    relay: Annotated[list[str] | None, _RELAY] = None,
    stun: Annotated[list[str] | None, _STUN] = None,
    echo: Annotated[bool, typer.Option("--echo", help="Echo datagrams and streams back.")] = False,
    as_json: Annotated[bool, _JSON] = False,
    bind: Annotated[str, _BIND] = "",
    port: Annotated[int, _PORT] = 0,
    gateway: Annotated[str | None, _GATEWAY] = None,
    upnp: Annotated[bool, _UPNP] = False,
    relay_timeout: Annotated[float, _RELAY_TIMEOUT] = DEFAULT_RELAY_TIMEOUT,
    proxy: Annotated[str | None, _PROXY] = None,
    relay_map: Annotated[Path | None, _RELAY_MAP] = None,
    home_relay: Annotated[str | None, _HOME_RELAY] = None,
) -> None:
    """Accept calls through the relay(s) until SIGINT/SIGTERM; print each caller's peer id.

    Exits 4 if another endpoint with the same identity registers and displaces this one.
    """
    fleet = _fleet(relay, relay_map)
    ident, relays, stuns = _load(identity, relay, stun, fleet is not None)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            try:
                ep = await Endpoint.bind(
                    ident,
                    relays=relays,
                    stun=stuns,
                    network=UdpNetwork(),
                    host=bind,
                    port=port,
                    config=EndpointConfig(relay_timeout=relay_timeout, relay_proxy=proxy),
                    gateway=gateway,
                    upnp=upnp,
                    relay_map=fleet,
                    home_relay=home_relay,
                )
            except (EndpointError, OSError) as exc:
                raise _fail(f"cannot listen: {exc}", as_json) from None
            try:
                observed = {_addr(a): _addr(c.observed_address) for a, c in ep.relays.items()}
                _out(
                    {
                        "event": "listening",
                        "peer_id": str(ep.peer_id),
                        "local": _addr(ep.local_address),
                        "relays": [_addr(a) for a in ep.relay_addresses],
                        "home_relay": ep.home_relay,
                        "address": ep.address,
                        "observed": observed,
                        "relay_transports": {_addr(a): t for a, t in ep.relay_transports.items()},
                        "echo": echo,
                    }
                    if as_json
                    else f"listening as {ep.peer_id} on {_addr(ep.local_address)} via "
                    + ", ".join(_addr(a) for a in ep.relay_addresses),
                    as_json,
                )

                def accepted(conn: Connection) -> None:
                    _out(
                        {"event": "accepted", "peer_id": str(conn.peer_id), "path": conn.path}
                        if as_json
                        else f"accepted {conn.peer_id} ({conn.path})",
                        as_json,
                    )

                def closed(conn: Connection) -> None:
                    why = conn.close_reason.reason if conn.close_reason else ""
                    _out(
                        {
                            "event": "closed",
                            "peer_id": str(conn.peer_id),
                            "reason": why,
                            "stats": {
                                k: v for k, v in conn.stats.items() if isinstance(v, int | float)
                            },
                        }
                        if as_json
                        else f"closed {conn.peer_id}: {why}",
                        as_json,
                    )

                server = loop.create_task(
                    serve_endpoint(ep, echo=echo, on_accept=accepted, on_close=closed)
                )
                stopper = loop.create_task(stop.wait())
                await asyncio.wait({server, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                server.cancel()
                await asyncio.gather(server, stopper, return_exceptions=True)
            finally:
                await ep.close("listener shutting down")
            if ep.displaced is not None:
                if as_json:
                    _out({"event": "displaced", "reason": ep.displaced}, True)
                typer.echo(f"error: displaced: {ep.displaced}", err=True)
                return EXIT_DISPLACED
            _out({"event": "stopped"} if as_json else "stopped", as_json)
            return 0
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, RuntimeError):
                    loop.remove_signal_handler(sig)

    raise typer.Exit(asyncio.run(main()))


def connect(
    peer_id: Annotated[str, typer.Argument(help="Peer id to call (pt1...).", show_default=False)],
    identity: Annotated[Path, _IDENTITY],
    relay: Annotated[list[str] | None, _RELAY] = None,
    stun: Annotated[list[str] | None, _STUN] = None,
    duration: Annotated[
        float, typer.Option(min=0.0, max=3600.0, help="Seconds of frames to send.")
    ] = 10.0,
    pps: Annotated[float, typer.Option(min=0.1, max=1000.0, help="Frames per second.")] = 50.0,
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout",
            "--timeout",
            min=0.1,
            help="Seconds to wait for a usable connection to the peer once registered with a "
            "relay (EndpointConfig.connect_timeout). Registration is --relay-timeout.",
        ),
    ] = DEFAULT_CONNECT_TIMEOUT,
    relay_timeout: Annotated[float, _RELAY_TIMEOUT] = DEFAULT_RELAY_TIMEOUT,
    max_loss: Annotated[
        float,
        typer.Option(
            "--max-loss",
            min=0.0,
            max=100.0,
            metavar="PERCENT",
            help="Exit 3 if more than this percentage of the frames sent never came back.",
        ),
    ] = DEFAULT_MAX_LOSS,
    as_json: Annotated[bool, _JSON] = False,
    bind: Annotated[str, _BIND] = "",
    port: Annotated[int, _PORT] = 0,
    gateway: Annotated[str | None, _GATEWAY] = None,
    upnp: Annotated[bool, _UPNP] = False,
    proxy: Annotated[str | None, _PROXY] = None,
    relay_map: Annotated[Path | None, _RELAY_MAP] = None,
    home_relay: Annotated[str | None, _HOME_RELAY] = None,
) -> None:
    """Call PEER_ID (which runs `listen --echo`), stream numbered 160-byte frames, report.

    In a relay fleet PEER_ID may carry its home relay: pt1...@RELAY_ID (no lookup then).

    The call starts on the relay and moves to a direct path when one is found.
    --json reports path, direct_ms, strategy and the traversal report.

    Exit codes:
      0  the call worked (at most --max-loss percent of the frames lost)
      1  no connection: bind, relay or connect failed (reason on stderr)
      2  bad arguments
      3  connected, but more than --max-loss percent of the frames lost
    """
    try:
        parse_peer_address(peer_id)
    except (InvalidPeerId, ValueError) as exc:
        raise typer.BadParameter(str(exc), param_hint="PEER_ID") from None
    peer: PeerId | str = peer_id if "@" in peer_id else PeerId.parse(peer_id)
    fleet = _fleet(relay, relay_map)
    ident, relays, stuns = _load(identity, relay, stun, fleet is not None)

    async def main() -> dict[str, object]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        config = EndpointConfig(
            connect_timeout=connect_timeout,
            relay_timeout=relay_timeout,
            relay_proxy=proxy,
            pipeline_registration=True,  # we dial first: no idle round trip (issue 17)
        )
        try:
            ep = await Endpoint.bind(
                ident,
                relays=relays,
                stun=stuns,
                network=UdpNetwork(),
                host=bind,
                port=port,
                config=config,
                gateway=gateway,
                upnp=upnp,
                relay_map=fleet,
                home_relay=home_relay,
            )
        except (EndpointError, OSError) as exc:
            raise _fail(f"connection failed: {exc}", as_json) from None
        try:
            return await run_echo_session(ep, peer, duration, pps, process_started_at=started)
        except EndpointError as exc:
            raise _fail(f"connection failed: {exc}", as_json) from None
        finally:
            await ep.close("caller done")

    result = asyncio.run(main())
    if as_json:
        _out(result, True)
    else:
        _out(
            f"connected to {result['peer_id']} in {result['connected_ms']} ms; "
            f"direct at {result['direct_ms']} ms ({result['strategy']}); "
            f"ended on {result['path']}\n"
            f"frames sent {result['frames_sent']}, received {result['frames_received']}, "
            f"lost {result['frames_lost']}; first echo {result['first_echo_ms']} ms; "
            f"max gap {result['max_gap_ms']} ms; rtt {result['rtt_ms']}",
            False,
        )
    loss = _loss_percent(result)
    if loss > max_loss:
        typer.echo(
            f"error: lost {result['frames_lost']} of {result['frames_sent']} frames "
            f"({loss:.1f}%), more than --max-loss {max_loss:g}%",
            err=True,
        )
        raise typer.Exit(EXIT_LOSSY)


def _loss_percent(result: dict[str, object]) -> float:
    """Frames lost as a percentage of frames sent (0 when nothing was sent)."""
    sent, lost = result["frames_sent"], result["frames_lost"]
    assert isinstance(sent, int) and isinstance(lost, int)
    return 100.0 * lost / sent if sent else 0.0


def standalone_app() -> typer.Typer:
    """These two commands on their own (``python -m punchthrough.cli.peer_cmd``)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
    app.command("listen")(listen)
    app.command("connect")(connect)
    return app


if __name__ == "__main__":
    standalone_app()()
