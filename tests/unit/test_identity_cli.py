"""``punchthrough identity generate|show`` (the sub-app, exercised directly)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from punchthrough.cli.identity_cmd import identity_app
from punchthrough.identity import Identity, PeerId

runner = CliRunner()


def test_generate_then_show(tmp_path: Path) -> None:
    key = tmp_path / "me.pem"
    gen = runner.invoke(identity_app, ["generate", str(key)])
    assert gen.exit_code == 0, gen.output
    peer_id = PeerId.parse(gen.stdout.strip())
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Identity.load(key).peer_id == peer_id
    show = runner.invoke(identity_app, ["show", str(key)])
    assert show.exit_code == 0 and show.stdout.strip() == str(peer_id)


def test_json_output(tmp_path: Path) -> None:
    key = tmp_path / "me.pem"
    gen = runner.invoke(identity_app, ["generate", str(key), "--json"])
    assert gen.exit_code == 0, gen.output
    doc = json.loads(gen.stdout)
    assert doc == {"peer_id": str(Identity.load(key).peer_id), "file": str(key)}
    show = json.loads(runner.invoke(identity_app, ["show", str(key), "--json"]).stdout)
    assert show == doc


def test_generate_refuses_overwrite_without_force(tmp_path: Path) -> None:
    key = tmp_path / "me.pem"
    first = runner.invoke(identity_app, ["generate", str(key)]).stdout.strip()
    again = runner.invoke(identity_app, ["generate", str(key)])
    assert again.exit_code == 1
    assert "--force" in again.stderr
    assert str(Identity.load(key).peer_id) == first
    forced = runner.invoke(identity_app, ["generate", str(key), "--force"])
    assert forced.exit_code == 0
    assert forced.stdout.strip() != first
    assert str(Identity.load(key).peer_id) == forced.stdout.strip()


def test_show_refuses_insecure_or_missing_file(tmp_path: Path) -> None:
    key = tmp_path / "me.pem"
    runner.invoke(identity_app, ["generate", str(key)])
    key.chmod(0o644)
    res = runner.invoke(identity_app, ["show", str(key)])
    assert res.exit_code == 1 and "chmod 600" in res.stderr and res.stdout == ""
    res = runner.invoke(identity_app, ["show", str(tmp_path / "missing.pem")])
    assert res.exit_code == 1 and "cannot open" in res.stderr


def test_malformed_key_file_is_reported_plainly_by_every_command(tmp_path: Path) -> None:
    """show, listen and connect name the file, what is wrong and the expected format."""
    from punchthrough.cli.peer_cmd import standalone_app

    key = tmp_path / "me.pem"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    want = "PRIVATE KEY block is damaged"
    show = runner.invoke(identity_app, ["show", str(key)])
    assert show.exit_code == 1 and show.stdout == ""
    assert f"error: key file {key}: not a PEM private key: its {want}" in show.stderr
    assert "expected an unencrypted PKCS#8 PEM Ed25519 private key" in show.stderr
    assert "deserialize" not in show.stderr
    peer = str(Identity.generate().peer_id)
    for argv in (["listen"], ["connect", peer]):
        res = runner.invoke(
            standalone_app(),
            [*argv, "--identity", str(key), "--relay", "127.0.0.1:9"],
            env={"COLUMNS": "1000"},  # one line in the usage-error box, however long the path
        )
        assert res.exit_code == 2, res.output
        assert f"Invalid value for --identity: key file {key}: " in res.stderr
        assert want in res.stderr
