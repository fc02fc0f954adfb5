"""What the check engine asks its adapter to do or tells it happened: transmissions and events.

The engine is sans-IO: every method returns a list of these for the asyncio adapter
(:mod:`punchthrough.traversal.agent`) to carry out.
"""

from __future__ import annotations

from dataclasses import dataclass

from punchthrough.netio import Address
from punchthrough.traversal.pairs import CandidatePair


@dataclass(frozen=True, slots=True)
class Transmit:
    """Send ``data`` from the socket whose local address is ``local`` to ``remote``."""

    local: Address
    remote: Address
    data: bytes


@dataclass(frozen=True, slots=True)
class PairSucceeded:
    """The first verified response on ``pair``: a usable direct path."""

    pair: CandidatePair


@dataclass(frozen=True, slots=True)
class PairNominated:
    """Both sides will use ``pair``."""

    pair: CandidatePair


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """A verified check from the peer arrived at ``local`` from ``remote`` (it is there)."""

    local: Address
    remote: Address


@dataclass(frozen=True, slots=True)
class ConsentResponse:
    """A later verified response on a succeeded pair (liveness), with its round-trip time."""

    pair: CandidatePair
    rtt: float


@dataclass(frozen=True, slots=True)
class RoundFailed:
    """The round's deadline passed and no pair succeeded."""

    round: int
    pairs: int
    reason: str


Action = Transmit | PairSucceeded | PairNominated | PeerSeen | ConsentResponse | RoundFailed
