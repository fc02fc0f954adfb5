"""When the round's hole punch has had its chance (the race's timer for stages planned after it).

A hard stage whose need is uncertain (a side's mapping or filtering unknown: the punch may
connect the pair) is planned to run ``after`` the hole punch. Waiting for the round to fail
costs its whole timeout (``checklist.ROUND_TIMEOUT``, 5 s) on every pair where the punch cannot
work, for example behind STUN servers without RFC 5780, whose filtering stays unknown. A punch
that works has answered long before: its first checks out, one lost check retransmitted, one
round trip for the answer (:data:`~.policy.PUNCH_GRACE`). After that the stage starts on the
evidence; the round itself keeps checking (a late answer still wins and stops the stage).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from punchthrough.traversal.hardnat.plan import StagePlan
from punchthrough.traversal.race.policy import PACING_GUARD, PUNCH_GRACE


@dataclass
class PunchChance:
    """The current round's punch: when its chance ends, and whether it has."""

    #: When the round's punch has had its chance (set at the round's start).
    ends: float = 0.0
    #: The armed timer: a stage waits for ``ends`` (None: nothing waits).
    due: float | None = None
    #: The chance is over and nothing answered yet: stages planned after the punch may start.
    over: bool = False

    def round_started(
        self, now: float, n_pairs: int, owd: float, plans: Iterable[StagePlan]
    ) -> None:
        """A new round: a new chance. ``owd``: the relayed one-way delay (2 owd bound the
        direct round trip: a direct path is rarely longer than the relayed one)."""
        self.ends = now + n_pairs * PACING_GUARD + PUNCH_GRACE + 2 * owd
        self.over, self.due = False, None
        self.arm(plans)

    def arm(self, plans: Iterable[StagePlan]) -> None:
        """Wake up when the chance ends if a stage of ``plans`` runs after the punch."""
        if not self.over and any(p.runs and p.after for p in plans):
            self.due = self.ends

    def fire(self, now: float) -> bool:
        """The chance ended now (once): start what waited for it."""
        if self.due is None or now < self.due:
            return False
        self.due, self.over = None, True
        return True
