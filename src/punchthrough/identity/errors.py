"""Exceptions raised by the identity package.

Everything derives from :class:`IdentityError`. A caller that dials a peer catches
:class:`PeerIdMismatch`; one that reads a key file catches :class:`KeyFileError`.
"""

from __future__ import annotations

import os
from typing import Final


class IdentityError(Exception):
    """Base class for every identity failure."""


class InvalidPeerId(IdentityError, ValueError):
    """A peer id text (or raw key) is malformed; the message says which rule it broke.

    Subclasses :class:`ValueError` so that msgspec turns it into a validation error when a
    peer id arrives inside a signal message.
    """


class BadSignature(IdentityError):
    """A signature does not verify under the claimed peer id (wrong key, data or context)."""


class KeyFileError(IdentityError):
    """A key file cannot be read, parsed or written."""


#: What a key file must hold, for error messages.
KEY_FILE_FORMAT: Final = (
    "an unencrypted PKCS#8 PEM Ed25519 private key (-----BEGIN PRIVATE KEY-----), as written by "
    "`punchthrough identity generate` or `openssl genpkey -algorithm ed25519`"
)


class MalformedKeyFile(KeyFileError):
    """A key file was read but does not hold a usable key.

    The message names the file, what is wrong with it and the expected format, in our words:
    the parser's own error text says nothing useful to someone holding the wrong file.
    """

    def __init__(self, problem: str, path: str | os.PathLike[str] | None = None) -> None:
        #: What is wrong, e.g. "not a PEM private key: no -----BEGIN line".
        self.problem = problem
        #: The file (``None`` when the key came as bytes).
        self.path = path
        where = f"key file {os.fspath(path)}" if path is not None else "key"
        super().__init__(f"{where}: {problem}; expected {KEY_FILE_FORMAT}")


class InsecureKeyFile(KeyFileError):
    """A key file is readable or writable by group or others (like OpenSSH, we refuse it)."""


class UnsupportedCertificate(IdentityError):
    """A certificate does not carry an Ed25519 key, so it names no peer id."""


class PeerIdMismatch(IdentityError):
    """The peer proved a different identity from the one we expected (or none at all)."""

    def __init__(self, expected: object, actual: object | None, detail: str = "") -> None:
        #: The :class:`~punchthrough.identity.PeerId` we dialled or were told to expect.
        self.expected = expected
        #: The peer id the peer actually proved, or ``None`` if it proved none.
        self.actual = actual
        if actual is None:
            msg = f"peer did not prove peer id {expected}"
        else:
            msg = f"expected peer id {expected}, but the peer is {actual}"
        super().__init__(f"{msg}: {detail}" if detail else msg)
