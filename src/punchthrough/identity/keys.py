"""An identity: an Ed25519 private key, its peer id, and its key file.

Key file format: PEM, unencrypted PKCS#8 (``-----BEGIN PRIVATE KEY-----``), the format
``openssl genpkey -algorithm ed25519`` writes, so standard tools can inspect it
(``openssl pkey -in FILE -pubout``). The file must be mode 0600 or stricter: like OpenSSH we
refuse to load a key that group or others can read or write, because a leaked key lets anyone
impersonate this peer forever (peer ids are keys; there is no revocation). Writes are atomic
(temporary file, fsync, rename/link) so a crash never leaves a half-written key behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from punchthrough.identity.cert import make_certificate
from punchthrough.identity.errors import InsecureKeyFile, KeyFileError, MalformedKeyFile
from punchthrough.identity.peerid import PeerId, signed_message

if TYPE_CHECKING:
    from cryptography import x509

#: Permission bits a key file is written with, and the most it may have when loaded.
KEY_FILE_MODE: Final = 0o600
#: A PEM Ed25519 key is ~120 bytes; anything much larger is not a key file (and is not read).
MAX_KEY_FILE_SIZE: Final = 16 * 1024
#: Ed25519 private key (seed) length (RFC 8032 section 5.1.5).
PRIVATE_KEY_LENGTH: Final = 32
#: PEM encapsulation boundary (RFC 7468 section 2), to say which block a wrong file holds.
_PEM_BEGIN: Final = re.compile(rb"-----BEGIN ([ -~]{1,64}?)-----")


class Identity:
    """This peer's Ed25519 key pair. ``repr`` and ``str`` never show the private key."""

    __slots__ = ("_cert", "_key", "_peer_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError("an identity is an Ed25519 private key")
        self._key = private_key
        self._peer_id = PeerId.from_public_key(private_key.public_key())
        self._cert: x509.Certificate | None = None

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, seed: bytes) -> Identity:
        """From the 32-byte RFC 8032 seed (useful for deterministic tests)."""
        if len(seed) != PRIVATE_KEY_LENGTH:
            raise ValueError(f"an Ed25519 seed is {PRIVATE_KEY_LENGTH} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def peer_id(self) -> PeerId:
        return self._peer_id

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._key

    def private_bytes(self) -> bytes:
        """The 32-byte seed. Handle with care."""
        return self._key.private_bytes_raw()

    def sign(self, data: bytes, *, context: str) -> bytes:
        """Sign ``data`` for one purpose, named by ``context`` (see ``signed_message``).

        There is deliberately no context-free signing: every signature this key makes is bound
        to what it is for, so none can be replayed for another purpose.
        """
        return self._key.sign(signed_message(context, data))

    def certificate(self) -> x509.Certificate:
        """The self-signed X.509 certificate for QUIC whose public key is this identity."""
        if self._cert is None:
            self._cert = make_certificate(self)
        return self._cert

    def to_pem(self) -> bytes:
        return self._key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())

    @classmethod
    def from_pem(cls, data: bytes) -> Identity:
        """Parse an unencrypted PKCS#8 PEM Ed25519 key; :class:`MalformedKeyFile` otherwise."""
        try:
            key = load_pem_private_key(data, password=None)
        except TypeError:
            raise MalformedKeyFile("the key is encrypted with a passphrase") from None
        except UnsupportedAlgorithm:
            raise MalformedKeyFile("the key's algorithm is not supported (not Ed25519)") from None
        except ValueError:
            raise MalformedKeyFile(_pem_problem(data)) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise MalformedKeyFile(f"the key is {_key_kind(key)}, but identities are Ed25519")
        return cls(key)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0600.

        Without ``overwrite`` an existing file is never replaced (checked atomically with
        ``link``, so two concurrent ``generate`` runs cannot both win).
        """
        _atomic_write(Path(path), self.to_pem(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file; :class:`InsecureKeyFile` if group/others have any access."""
        p = Path(path)
        try:
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise KeyFileError(f"cannot open key file {p}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)  # fstat the open file: no race with a chmod or rename
            if not stat.S_ISREG(st.st_mode):
                raise KeyFileError(f"key file {p} is not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if os.name == "posix" and mode & 0o077:
                raise InsecureKeyFile(
                    f"key file {p} has mode {mode:04o}: group or others can access it, so the "
                    f"key may have leaked; fix with `chmod 600 {p}` (or generate a new identity)"
                )
            if st.st_size > MAX_KEY_FILE_SIZE:
                raise KeyFileError(f"key file {p} is {st.st_size} bytes: not a key file")
            data = os.read(fd, MAX_KEY_FILE_SIZE + 1)
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {p}: {exc.strerror}") from None
        finally:
            os.close(fd)
        try:
            return cls.from_pem(data)
        except MalformedKeyFile as exc:
            raise MalformedKeyFile(exc.problem, p) from None

    def __repr__(self) -> str:
        return f"Identity(peer_id={self._peer_id})"


def _key_kind(key: object) -> str:
    """A private key's algorithm as its users name it (cryptography's classes are internal)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC key ({key.curve.name})"
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA key ({key.key_size} bits)"
    kinds: list[tuple[type, str]] = [
        (dsa.DSAPrivateKey, "a DSA key"),
        (ed448.Ed448PrivateKey, "an Ed448 key"),
        (x25519.X25519PrivateKey, "an X25519 key"),
        (x448.X448PrivateKey, "an X448 key"),
    ]
    return next((name for cls, name in kinds if isinstance(key, cls)), "not an Ed25519 key")


def _pem_problem(data: bytes) -> str:
    """Why ``data``, which the PEM parser refused, is not a private key, in the reader's terms."""
    if not data.strip():
        return "not a PEM private key: the file is empty"
    labels = [m.decode() for m in _PEM_BEGIN.findall(data)]
    if not labels:
        return "not a PEM private key: there is no -----BEGIN line"
    if "PRIVATE KEY" in labels:
        return "not a PEM private key: its PRIVATE KEY block is damaged (bad base64 or DER)"
    return f"not a PEM private key: the file holds {', '.join(labels)}"


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem can fsync a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes, *, overwrite: bool) -> None:
    directory = path.parent
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except OSError as exc:
        raise KeyFileError(f"cannot create key file in {directory}: {exc.strerror}") from None
    try:
        try:
            os.fchmod(fd, KEY_FILE_MODE)  # O_CREAT's mode is filtered by umask; be exact
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise KeyFileError(
                    f"{path} already exists; refusing to overwrite an identity"
                ) from None
        _fsync_dir(directory)
    except OSError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
