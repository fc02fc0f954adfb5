"""The race's numbers: margins, back-offs, caps (each with where it comes from)."""

from __future__ import annotations

from typing import Final

from punchthrough.traversal.checklist import RETRANSMIT_SCHEDULE

#: Margin added to the one-way delay when agreeing a start moment (scheduling slack).
START_MARGIN: Final = 0.010
#: Retry back-off after the direct path died (seconds): first, cap.
RETRY_DEAD: Final = (1.0, 30.0)
#: Retry back-off after a round in which nothing answered, and after a hard stage failed (the
#: pair may need another stage; networks also change): first, cap.
RETRY_FAILED: Final = (30.0, 300.0)
#: Hard stages start after the hole punch's first checks: one pacing gap (checks.PACING) per
#: pair, plus this margin (a sequential NAT's burst must not interleave with new punch flows).
#: A summary or verdict that arrives later starts them at once: this is no wait after input.
PACING_GUARD: Final = 0.010
HARD_START_DELAY: Final = 0.05
#: A hard stage planned to run "after" the hole punch (the pair may punch: a side's mapping or
#: filtering is unknown) starts when the punch has had its chance, not at the round's 5 s
#: timeout: its first checks out (one pacing gap per pair), its first two retransmissions sent
#: (checklist.RETRANSMIT_SCHEDULE: 0.05 + 0.1 s, so one lost check is covered), and one
#: relayed round trip for the answer (a direct path is rarely longer than the relayed one).
PUNCH_GRACE: Final = sum(RETRANSMIT_SCHEDULE[:2])
#: Attempts of one hard stage per connection (each one costs sockets and probes).
MAX_ATTEMPTS: Final = 3
#: A peer's mutual-prediction probe that arrived before our own attempt began is used this long.
MUTUAL_PROBE_FRESH: Final = 2.0


def backoff(previous: float | None, policy: tuple[float, float]) -> float:
    """The next delay of a doubling back-off: ``first``, then twice the previous, up to ``cap``."""
    first, cap = policy
    return first if previous is None else min(previous * 2, cap)
