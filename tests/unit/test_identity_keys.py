"""Identity keys: domain-separated signatures and key files with safe permissions."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from punchthrough.identity import (
    BadSignature,
    Identity,
    InsecureKeyFile,
    KeyFileError,
    MalformedKeyFile,
    signed_message,
)


def test_sign_verify_and_domain_separation() -> None:
    ident = Identity.generate()
    sig = ident.sign(b"data", context="ctx-a")
    ident.peer_id.verify(sig, b"data", context="ctx-a")
    with pytest.raises(BadSignature):
        ident.peer_id.verify(sig, b"data", context="ctx-b")
    with pytest.raises(BadSignature):
        ident.peer_id.verify(sig, b"datb", context="ctx-a")
    with pytest.raises(BadSignature):
        Identity.generate().peer_id.verify(sig, b"data", context="ctx-a")
    with pytest.raises(BadSignature):
        ident.peer_id.verify(sig[:-1], b"data", context="ctx-a")
    # A raw (context-free) Ed25519 signature over the same data does not verify.
    raw_sig = ident.private_key.sign(b"data")
    with pytest.raises(BadSignature):
        ident.peer_id.verify(raw_sig, b"data", context="ctx-a")


def test_context_encoding_is_unambiguous() -> None:
    assert signed_message("ab", b"c") != signed_message("a", b"bc")
    with pytest.raises(ValueError):
        signed_message("", b"x")
    with pytest.raises(ValueError):
        signed_message("x" * 256, b"x")


def test_repr_hides_private_key() -> None:
    ident = Identity.from_private_bytes(b"\x07" * 32)
    assert b"\x07".hex() * 4 not in repr(ident)
    assert str(ident.peer_id) in repr(ident)


def test_save_load_round_trip_with_0600(tmp_path: Path) -> None:
    path = tmp_path / "id.pem"
    old = os.umask(0)  # even a permissive umask must not loosen the file
    try:
        ident = Identity.generate()
        ident.save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert Identity.load(path).peer_id == ident.peer_id
    assert [p.name for p in tmp_path.iterdir()] == ["id.pem"]  # no temporary file left


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "id.pem"
    first = Identity.generate()
    first.save(path)
    with pytest.raises(KeyFileError, match="already exists"):
        Identity.generate().save(path)
    assert Identity.load(path).peer_id == first.peer_id
    second = Identity.generate()
    second.save(path, overwrite=True)
    assert Identity.load(path).peer_id == second.peer_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id.pem"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o660, 0o601])
def test_load_refuses_group_or_world_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "id.pem"
    Identity.generate().save(path)
    path.chmod(mode)
    with pytest.raises(InsecureKeyFile, match=f"{mode:04o}.*chmod 600"):
        Identity.load(path)


def test_load_accepts_0400(tmp_path: Path) -> None:
    path = tmp_path / "id.pem"
    ident = Identity.generate()
    ident.save(path)
    path.chmod(0o400)
    assert Identity.load(path).peer_id == ident.peer_id


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a PEM"),
        (b"garbage\n", "not a PEM"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "Ed25519",
        ),
        (
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "encrypted",
        ),
    ],
)
def test_load_rejects_bad_contents(tmp_path: Path, data: bytes, match: str) -> None:
    with pytest.raises(KeyFileError, match=match):
        Identity.load(_write(tmp_path / "k", data))


_ED25519 = ed25519.Ed25519PrivateKey.generate()
_PKCS8_PEM = _ED25519.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "the file is empty"),
        (b"garbage\n", "there is no -----BEGIN line"),
        (  # the right key, as DER instead of PEM
            _ED25519.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "there is no -----BEGIN line",
        ),
        (_PKCS8_PEM.replace(b"\nM", b"\n!"), "PRIVATE KEY block is damaged"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "damaged"),
        (  # a public key where the private one should be
            _ED25519.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "the file holds PUBLIC KEY",
        ),
        (
            _ED25519.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.OpenSSH,
                serialization.NoEncryption(),
            ),
            "the file holds OPENSSH PRIVATE KEY",
        ),
        (
            _ED25519.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"pw"),
            ),
            "encrypted with a passphrase",
        ),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "the key is an EC key (secp256r1), but identities are Ed25519",
        ),
    ],
)
def test_malformed_key_file_says_what_is_wrong_in_our_words(
    tmp_path: Path, data: bytes, problem: str
) -> None:
    """A typed error naming the file, the problem and the expected format; never the PEM
    parser's own text (cryptography's "Could not deserialize key data ... ASN.1 ...")."""
    path = _write(tmp_path / "id.key", data)
    with pytest.raises(MalformedKeyFile) as info:
        Identity.load(path)
    err = info.value
    assert err.path == path and problem in err.problem
    text = str(err)
    assert text.startswith(f"key file {path}: ")
    assert "unencrypted PKCS#8 PEM Ed25519 private key (-----BEGIN PRIVATE KEY-----)" in text
    assert "punchthrough identity generate" in text
    for leak in ("deserialize", "ASN.1", "cryptography.io", "MalformedFraming", "Tag {"):
        assert leak not in text
    with pytest.raises(MalformedKeyFile, match=f"^key: .*{re.escape(problem)}"):
        Identity.from_pem(data)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot open"):
        Identity.load(tmp_path / "missing")
    with pytest.raises(KeyFileError, match="not a regular file"):
        d = tmp_path / "dir"
        d.mkdir(mode=0o700)
        Identity.load(d)
    with pytest.raises(KeyFileError, match="not a key file"):
        Identity.load(_write(tmp_path / "big", b"x" * 20000))


def test_save_into_missing_directory_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        Identity.generate().save(tmp_path / "nope" / "id.pem")


def test_from_private_bytes_is_deterministic() -> None:
    a = Identity.from_private_bytes(b"\x01" * 32)
    assert a.peer_id == Identity.from_private_bytes(b"\x01" * 32).peer_id
    assert a.private_bytes() == b"\x01" * 32
    with pytest.raises(ValueError):
        Identity.from_private_bytes(b"\x01" * 31)
