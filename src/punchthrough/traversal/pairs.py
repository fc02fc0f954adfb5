"""A candidate pair (RFC 8445 section 6.1.2): one local base and one remote address, and the
state of the checks between them.

Apart from the engine because the engine's actions, the waterfall
(:mod:`punchthrough.traversal.race`) and the agent name pairs without needing how they are checked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from punchthrough.netio import Address
from punchthrough.traversal.candidates import describe


class PairState(enum.Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(eq=False)
class CandidatePair:
    """One (local base, remote address) pair and its check state."""

    local: Address
    remote: Address
    remote_kind: str
    priority: int
    state: PairState = PairState.WAITING
    txid: bytes | None = None
    sends: int = 0
    next_at: float = 0.0
    deadline: float = 0.0
    first_sent_at: float | None = None
    last_sent_at: float | None = None
    succeeded_at: float | None = None
    rtt: float | None = None
    #: Our address as the peer saw this pair's checks (XOR-MAPPED-ADDRESS of the response).
    mapped: Address | None = None
    nominated: bool = False
    #: Controlled side: the peer nominated this pair before it succeeded for us.
    nomination_pending: bool = False

    @property
    def key(self) -> tuple[Address, Address]:
        return (self.local, self.remote)

    def describe(self) -> str:
        return f"{describe(self.local)} -> {describe(self.remote)} ({self.remote_kind})"
