"""Peer ids: the text form of an Ed25519 public key.

Format (documented contract, stable across versions)::

    pt1 <52 data characters> <6 checksum characters>          61 characters in all

It is Bech32m (BIP-350) with human-readable part ``pt``: the 32-byte Ed25519 public key
(RFC 8032 encoding) split into 5-bit groups (52 groups, the last 4 padding bits zero) over the
alphabet ``qpzry9x8gf2tvdw0s3jn54khce6mua7l``, followed by a 6-character BCH checksum.

Why Bech32m: it is lowercase alphanumeric (one double-click selects it, no padding, no ``+/=``),
it leaves out the look-alikes ``1 b i o``, and its BCH code *guarantees* detection of any error
touching at most 4 characters of a string this short (BIP-173 "Checksum design"), so every
single-character substitution and every transposition of two adjacent characters is rejected,
not just rejected with high probability. The length is fixed, so insertions and deletions are
rejected too. An all-uppercase peer id (QR-code friendly) is accepted; mixed case is not.
Only ASCII is accepted, checked before any case folding: Unicode folds look-alikes onto the
alphabet (KELVIN SIGN U+212A lowercases to ``k``), and two texts that display differently must
never name the same peer.
Another key type would get another human-readable part, never a reinterpretation of this one.
"""

from __future__ import annotations

import functools
import string
import unicodedata
from typing import Final, final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from punchthrough.identity.errors import BadSignature, InvalidPeerId

#: Human-readable part of a peer id ("punchthrough"); BIP-173 calls it the HRP.
HRP: Final = "pt"
#: Bech32 alphabet (BIP-173 "Bech32"): 32 symbols without 1, b, i, o.
CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
#: Bech32m checksum constant (BIP-350 "Bech32m").
_BECH32M_CONST: Final = 0x2BC830A3
#: BCH generator coefficients (BIP-173 "Checksum").
_GEN: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
#: Ed25519 public key length (RFC 8032 section 5.1.5).
PUBLIC_KEY_LENGTH: Final = 32
#: Checksum length in characters (BIP-173).
_CHECKSUM_CHARS: Final = 6
#: 32 bytes = 256 bits -> ceil(256 / 5) = 52 five-bit groups.
_DATA_CHARS: Final = 52
#: Total text length: "pt" + "1" + data + checksum.
PEER_ID_LENGTH: Final = len(HRP) + 1 + _DATA_CHARS + _CHECKSUM_CHARS
#: Prefix for signed messages; see :func:`signed_message`. The first byte (``p``, 0x70) can
#: collide neither with an X.509 TBSCertificate (DER SEQUENCE, 0x30) nor with TLS 1.3
#: CertificateVerify content (64 spaces, RFC 8446 section 4.4.3), the other two things this
#: key signs.
SIGNATURE_PREFIX: Final = b"punchthrough signature v1\x00"
#: Ed25519 signature length (RFC 8032 section 5.1.6).
SIGNATURE_LENGTH: Final = 64

_CHAR_VALUE: Final = {c: i for i, c in enumerate(CHARSET)}
#: Whitespace a copy-paste may leave around a peer id: ASCII only, like the peer id itself.
_ASCII_WHITESPACE: Final = string.whitespace


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_groups(data: bytes) -> list[int]:
    acc = int.from_bytes(data, "big") << (_DATA_CHARS * 5 - len(data) * 8)
    return [(acc >> (5 * (_DATA_CHARS - 1 - i))) & 31 for i in range(_DATA_CHARS)]


def _encode(raw: bytes) -> str:
    data = _to_groups(raw)
    pm = _polymod([*_hrp_expand(HRP), *data, 0, 0, 0, 0, 0, 0]) ^ _BECH32M_CONST
    checksum = [(pm >> (5 * (5 - i))) & 31 for i in range(_CHECKSUM_CHARS)]
    return HRP + "1" + "".join(CHARSET[d] for d in data + checksum)


def _decode(text: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidPeerId(f"a peer id is text, not {type(text).__name__}")
    text = text.strip(_ASCII_WHITESPACE)
    for pos, ch in enumerate(text):  # before .lower()/.upper(), which fold look-alikes
        if not ch.isascii():
            name = unicodedata.name(ch, "unnamed character")
            raise InvalidPeerId(
                f"character {ch!r} (U+{ord(ch):04X} {name}) at position {pos} is not ASCII: "
                "a peer id is ASCII only (a look-alike of a peer id character?)"
            )
    if len(text) != PEER_ID_LENGTH:
        raise InvalidPeerId(
            f"a peer id has {PEER_ID_LENGTH} characters, got {len(text)} (truncated or extra?)"
        )
    if text != text.lower() and text != text.upper():
        raise InvalidPeerId("a peer id is all lowercase or all uppercase, not mixed case")
    text = text.lower()
    prefix = HRP + "1"
    if not text.startswith(prefix):
        raise InvalidPeerId(f"a peer id starts with {prefix!r}, got {text[: len(prefix)]!r}")
    values: list[int] = []
    for pos, ch in enumerate(text[len(prefix) :], start=len(prefix)):
        v = _CHAR_VALUE.get(ch)
        if v is None:
            raise InvalidPeerId(
                f"character {ch!r} at position {pos} cannot occur in a peer id "
                f"(alphabet {CHARSET!r})"
            )
        values.append(v)
    if _polymod(_hrp_expand(HRP) + values) != _BECH32M_CONST:
        raise InvalidPeerId("peer id checksum does not match: it has a typo")
    acc = 0
    for v in values[:_DATA_CHARS]:
        acc = acc << 5 | v
    pad_bits = _DATA_CHARS * 5 - PUBLIC_KEY_LENGTH * 8
    if acc & ((1 << pad_bits) - 1):
        raise InvalidPeerId("peer id is not canonical (nonzero padding bits)")
    return (acc >> pad_bits).to_bytes(PUBLIC_KEY_LENGTH, "big")


def signed_message(context: str, data: bytes) -> bytes:
    """The exact bytes an identity key signs: prefix, context length, context, data.

    Domain separation: a signature made for one context (say relay registration) never verifies
    for another (say peer authentication), and the length byte keeps (context, data) pairs
    unambiguous.
    """
    ctx = context.encode("utf-8")
    if not 0 < len(ctx) < 256:
        raise ValueError("a signature context is 1-255 bytes of UTF-8")
    return SIGNATURE_PREFIX + bytes([len(ctx)]) + ctx + data


@final
@functools.total_ordering
class PeerId:
    """Who a peer is: its Ed25519 public key. Immutable, hashable, ordered by raw bytes.

    Ordering is by key bytes so two peers can agree on roles (e.g. who starts a check first)
    without another round trip.
    """

    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise InvalidPeerId(f"raw peer id must be bytes, not {type(raw).__name__}")
        raw = bytes(raw)
        if len(raw) != PUBLIC_KEY_LENGTH:
            raise InvalidPeerId(f"raw peer id is {PUBLIC_KEY_LENGTH} bytes, got {len(raw)}")
        self._raw = raw
        self._key: Ed25519PublicKey | None = None

    @classmethod
    def parse(cls, text: str) -> PeerId:
        """Parse the text form; raises :class:`InvalidPeerId` naming what is wrong."""
        return cls(_decode(text))

    @classmethod
    def from_public_key(cls, key: Ed25519PublicKey) -> PeerId:
        return cls(key.public_bytes_raw())

    @property
    def raw(self) -> bytes:
        """The 32-byte Ed25519 public key."""
        return self._raw

    def public_key(self) -> Ed25519PublicKey:
        if self._key is None:
            try:
                self._key = Ed25519PublicKey.from_public_bytes(self._raw)
            except ValueError as exc:  # pragma: no cover - OpenSSL accepts any 32 bytes
                raise InvalidPeerId(f"not an Ed25519 public key: {exc}") from None
        return self._key

    def verify(self, signature: bytes, data: bytes, *, context: str) -> None:
        """Check an Ed25519 signature made by :meth:`Identity.sign` with the same context.

        Raises :class:`BadSignature` (never returns False, so a forgotten check cannot pass).
        """
        if not isinstance(signature, bytes) or len(signature) != SIGNATURE_LENGTH:
            raise BadSignature(f"an Ed25519 signature is {SIGNATURE_LENGTH} bytes")
        try:
            self.public_key().verify(signature, signed_message(context, data))
        except InvalidSignature:
            raise BadSignature(f"signature does not verify for peer {self.short}") from None

    @property
    def short(self) -> str:
        """An abbreviation for logs (``pt1abcdefgh…``); never use it to identify a peer."""
        return str(self)[:11] + "…"

    def __str__(self) -> str:
        return _encode(self._raw)

    def __repr__(self) -> str:
        return f"PeerId({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PeerId):
            return NotImplemented
        return self._raw == other._raw

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, PeerId):
            return NotImplemented
        return self._raw < other._raw

    def __hash__(self) -> int:
        return hash((PeerId, self._raw))

    def __reduce__(self) -> tuple[type[PeerId], tuple[bytes]]:
        return (PeerId, (self._raw,))
