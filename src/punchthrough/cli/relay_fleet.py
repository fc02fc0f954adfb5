"""The fleet and operations side of ``punchthrough relay``: ``--config FILE``, ``--relay-id``,
``--directory``, ``--advertise``, ``--metrics``, and what SIGTERM does (drain).

Config file (TOML; keys are the long option names with ``_`` for ``-``; an option given on the
command line wins over the file)::

    listen = ["198.51.100.20:3478"]
    relay_id = "fra-1"
    directory = "redis://10.0.0.5:6379/0"
    advertise = ["198.51.100.20:3478"]
    metrics = "127.0.0.1:9478"
    pps = 2000.0
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import typer

from punchthrough.cli.addr import parse_address, parse_addresses
from punchthrough.netio import Address
from punchthrough.relay.directory import Directory, open_directory
from punchthrough.relay.fleet import FleetConfig
from punchthrough.relay.metrics import MetricsServer
from punchthrough.relay.server import RelayServer

#: Keys a config file may hold (the relay command's long options).
CONFIG_KEYS: Final = frozenset(
    {
        "listen",
        "alt_ip",
        "identity",
        "json_stats",
        "stats_interval",
        "idle_timeout",
        "pps",
        "bps",
        "relay_id",
        "directory",
        "directory_ttl",
        "advertise",
        "metrics",
        "drain_grace",
        "memory_budget",
    }
)


def load_config(path: Path | None) -> dict[str, Any]:
    """The config file's settings (empty without one); BadParameter on any problem."""
    if path is None:
        return {}
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--config") from None
    unknown = set(doc) - CONFIG_KEYS
    if unknown:
        raise typer.BadParameter(f"{path}: unknown key(s) {sorted(unknown)}", param_hint="--config")
    return doc


def pick(cli: Any, default: Any, config: dict[str, Any], key: str) -> Any:
    """The command line's value if it was given (differs from the default), else the file's."""
    if cli != default or key not in config:
        return cli
    return config[key]


@dataclass
class FleetOptions:
    relay_id: str | None = None
    directory: str | None = None
    directory_ttl: float = 30.0
    advertise: list[Address] = field(default_factory=list)
    metrics: Address | None = None

    def fleet_config(self) -> FleetConfig | None:
        """None for a lone relay (no ``--relay-id``/``--directory``)."""
        if self.relay_id is None and self.directory is None:
            return None
        if self.relay_id is None:
            raise typer.BadParameter("--directory needs --relay-id", param_hint="--relay-id")
        try:
            directory: Directory = open_directory(self.directory)
            return FleetConfig(
                self.relay_id,
                directory,
                addresses=self.advertise or None,
                ttl=self.directory_ttl,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--directory") from None


def fleet_options(
    config: dict[str, Any],
    relay_id: str | None,
    directory: str | None,
    directory_ttl: float,
    advertise: list[str] | None,
    metrics: str | None,
) -> FleetOptions:
    adv = pick(advertise, None, config, "advertise")
    met = pick(metrics, None, config, "metrics")
    return FleetOptions(
        relay_id=pick(relay_id, None, config, "relay_id"),
        directory=pick(directory, None, config, "directory"),
        directory_ttl=float(pick(directory_ttl, 30.0, config, "directory_ttl")),
        advertise=parse_addresses(adv),
        metrics=parse_address(met) if met else None,
    )


def health(server: RelayServer) -> tuple[bool, str]:
    """``/healthz``: healthy while serving; the body says whether directory writes fail."""
    if server.closed:
        return False, "closed"
    stats = server.stats
    text = f"ok clients={stats.get('clients', 0)}"
    if server.fleet is not None:
        text += (
            f" relay_id={server.fleet.relay_id}"
            f" directory_errors={stats.get('directory_errors', 0)}"
            f" directory_write_errors={stats.get('directory_write_errors', 0)}"
        )
    return True, text


async def start_metrics(server: RelayServer, addr: Address | None) -> MetricsServer | None:
    if addr is None:
        return None
    metrics = MetricsServer(lambda: server.stats, lambda: health(server))
    try:
        await metrics.start(*addr)
    except OSError as exc:
        raise typer.BadParameter(f"cannot serve metrics: {exc}", param_hint="--metrics") from None
    return metrics
