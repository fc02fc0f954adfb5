"""Which succeeded pair carries the call when both families answered (the rule is explained
in :mod:`punchthrough.traversal.family`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from punchthrough.traversal.family import IPV4, IPV6, Family
from punchthrough.traversal.pairs import CandidatePair

#: IPv6 wins while its RTT is at most this much (relative) above IPv4's (Tailscale magicsock's
#: ``betterAddr`` prefers IPv6 when latencies are within about 10%).
IPV6_RTT_BONUS: Final = 0.10


def pair_family(pair: CandidatePair) -> Family:
    return IPV6 if ":" in pair.remote[0] else IPV4


def first_check_order(pair: CandidatePair) -> tuple[int, int]:
    """Sort key of a round's first checks: priority, then IPv6 first (happy eyeballs)."""
    return (-pair.priority, 0 if pair_family(pair) == IPV6 else 1)


def preferred_pair(succeeded: Sequence[CandidatePair]) -> CandidatePair:
    """The pair to nominate among ``succeeded`` (best priority first, non-empty): see the
    module docstring. With one family only, the first (best priority) pair, as before IPv6."""
    best4 = next((p for p in succeeded if pair_family(p) == IPV4), None)
    best6 = next((p for p in succeeded if pair_family(p) == IPV6), None)
    if best4 is None or best6 is None:
        return succeeded[0]
    if (
        best4.rtt is not None
        and best6.rtt is not None
        and best4.rtt * (1.0 + IPV6_RTT_BONUS) < best6.rtt
    ):
        return best4
    return best6
