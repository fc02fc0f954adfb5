"""``punchthrough identity``: create and inspect identity key files.

``generate`` prints only the peer id on stdout (so ``ID=$(punchthrough identity generate k)``
works); messages go to stderr. Errors exit with status 1 and a one-line reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from punchthrough.identity import KEY_FILE_MODE, Identity, IdentityError

identity_app = typer.Typer(
    help="Create and inspect identity key files (Ed25519; the peer id is the public key).",
    no_args_is_help=True,
)

_FILE = typer.Argument(help="Key file (PEM PKCS#8, mode 0600).", show_default=False)
_JSON = typer.Option("--json", help="Print JSON: {peer_id, file}.")


def _emit(identity: Identity, path: Path, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"peer_id": str(identity.peer_id), "file": str(path)}))
    else:
        typer.echo(str(identity.peer_id))


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(1)


@identity_app.command("generate")
def generate(
    file: Annotated[Path, _FILE],
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key file.")] = False,
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Create a new identity in FILE (mode 0600) and print its peer id."""
    identity = Identity.generate()
    try:
        identity.save(file, overwrite=force)
    except IdentityError as exc:
        hint = " (use --force to replace it)" if file.exists() and not force else ""
        typer.echo(f"error: {exc}{hint}", err=True)
        raise typer.Exit(1) from None
    if not as_json:
        typer.echo(f"wrote {file} (mode {KEY_FILE_MODE:04o})", err=True)
    _emit(identity, file, as_json)


@identity_app.command("show")
def show(
    file: Annotated[Path, _FILE],
    as_json: Annotated[bool, _JSON] = False,
) -> None:
    """Print the peer id of the identity in FILE."""
    try:
        identity = Identity.load(file)
    except IdentityError as exc:
        raise _fail(exc) from None
    _emit(identity, file, as_json)
