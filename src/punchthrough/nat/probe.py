"""Fresh port-allocation samples from one socket (used by netcheck and, later, by port
prediction right before an attempt, since a sequential NAT's next port drifts with every flow),
and the retransmission timeout every NAT probe starts from."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from punchthrough.nat.allocation import (
    DEFAULT_PORT_RANGE,
    AllocationResult,
    classify_port_allocation,
)
from punchthrough.nat.behavior import Sample
from punchthrough.netio import Address
from punchthrough.stun import StunClient, StunError

#: Initial retransmission timeout of NAT probes (netcheck's and an endpoint's candidate
#: gathering). RFC 8489 section 6.2.1 suggests 500 ms for the open Internet; these probes are
#: few and latency-sensitive, so they start lower.
PROBE_RTO: Final = 0.25
#: RFC-free rule of thumb: five points distinguish delta, churn gaps and randomness with a
#: majority vote (see allocation.MAJORITY); fewer leave one outlier deciding the verdict.
DEFAULT_SAMPLE_COUNT = 5


async def sample_mappings(
    client: StunClient, endpoints: Sequence[Address], timeout: float
) -> list[Sample]:
    """Binding to each distinct endpoint, all sent at once in the given order.

    Requests leave the socket in list order, so the NAT allocates in that order; answers that
    never come are left out (a lost first packet can reorder one sample: the classifier's
    majority rule absorbs that).
    """
    dests = list(dict.fromkeys(endpoints))

    async def one(dest: Address) -> Sample | None:
        try:
            res = await client.binding(dest, timeout=timeout)
        except StunError:
            return None
        return Sample(dest, res.mapped)

    results = await asyncio.gather(*(one(d) for d in dests))
    return [s for s in results if s is not None]


async def detect_port_allocation(
    client: StunClient,
    endpoints: Sequence[Address],
    *,
    timeout: float = 2.0,
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
) -> tuple[AllocationResult, list[Sample]]:
    """Sample the NAT from the client's one socket and classify its port allocation."""
    samples = await sample_mappings(client, endpoints, timeout)
    return classify_port_allocation([s.mapped[1] for s in samples], port_range), samples
