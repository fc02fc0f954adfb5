"""The deployment files in deploy/ match the relay's configuration surface."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from punchthrough.cli.relay_fleet import fleet_options, load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_example_config_is_valid_and_complete() -> None:
    cfg = load_config(DEPLOY / "relay.toml")
    opts = fleet_options(cfg, None, None, 30.0, None, None)
    assert opts.relay_id == "fra-1" and opts.directory == "redis://10.0.0.5:6379/0"
    assert opts.metrics == ("127.0.0.1", 9478) and opts.advertise == [("198.51.100.20", 3478)]
    # the command line wins over the file
    assert fleet_options(cfg, "nyc-1", None, 30.0, None, None).relay_id == "nyc-1"


def test_unknown_config_keys_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "r.toml"
    bad.write_text('lisen = ["198.51.100.1:3478"]\n')
    with pytest.raises(typer.BadParameter, match="lisen"):
        load_config(bad)


def test_unit_and_container_run_the_relay_with_the_config_and_drain_on_stop() -> None:
    unit = (DEPLOY / "punchthrough-relay@.service").read_text()
    assert "relay --config /etc/punchthrough/relay-%i.toml" in unit
    assert "KillSignal=SIGTERM" in unit
    container = (DEPLOY / "Containerfile").read_text()
    assert 'ENTRYPOINT ["punchthrough", "relay"]' in container and "STOPSIGNAL SIGTERM" in container
