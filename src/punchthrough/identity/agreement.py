"""Static-static key agreement between two identities (X25519 from the Ed25519 identity keys).

Why: the two peers of a call know each other's identity keys before any packet is sent (a peer
id *is* a public key), so both can compute one shared secret without a round trip. Call setup
uses it for what must be ready before the QUIC handshake has authenticated anybody: the keys of
the connectivity checks and of the dialer's early offer (issue 17; design notes: "early check
keys"). This is what WireGuard's static-static term and Tailscale's disco keys do; we derive the
X25519 keys from the Ed25519 identity instead of keeping a second key pair (the birational map
of RFC 7748 section 4.1, as libsodium's ``crypto_sign_ed25519_pk_to_curve25519``).

Only a holder of one of the two private keys can compute the secret: not the relay, not a peer
that merely claims an id. It is the same for every call between the two peers (no forward
secrecy): callers must bind it to a fresh per-call value before use.
"""

from __future__ import annotations

import hashlib
from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from punchthrough.identity.errors import InvalidPeerId
from punchthrough.identity.keys import Identity
from punchthrough.identity.peerid import PeerId

#: The field of Curve25519 / edwards25519 (RFC 7748 section 4.1, RFC 8032 section 5.1).
_P: Final = 2**255 - 19


def x25519_public(peer: PeerId) -> X25519PublicKey:
    """The X25519 public key of ``peer``'s Ed25519 key: ``u = (1 + y) / (1 - y) mod p``."""
    y = int.from_bytes(peer.raw, "little") & ((1 << 255) - 1)  # drop the sign bit of x
    if y >= _P or y == 1:
        raise InvalidPeerId("the peer id is not a usable edwards25519 point")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return X25519PublicKey.from_public_bytes(u.to_bytes(32, "little"))


def x25519_private(identity: Identity) -> X25519PrivateKey:
    """Our X25519 private key: the Ed25519 secret scalar (RFC 8032 section 5.1.5, the first
    half of SHA-512 of the seed; X25519 clamps it the same way)."""
    scalar = hashlib.sha512(identity.private_bytes()).digest()[:32]
    return X25519PrivateKey.from_private_bytes(scalar)


def static_secret(identity: Identity, peer: PeerId) -> bytes:
    """The 32-byte X25519 secret between ``identity`` and ``peer`` (the same on both sides).

    Raises :class:`InvalidPeerId` when ``peer`` is a low-order point (the secret would be all
    zeros, known to everybody: RFC 7748 section 6.1 says to check).
    """
    try:
        secret = x25519_private(identity).exchange(x25519_public(peer))
    except ValueError as exc:  # cryptography refuses an all-zero result
        raise InvalidPeerId(f"no key agreement with this peer id: {exc}") from None
    if not any(secret):
        raise InvalidPeerId("no key agreement with this peer id: low-order point")
    return secret
