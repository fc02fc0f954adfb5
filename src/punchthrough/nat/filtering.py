"""The RFC 5780 filtering test (section 4.4, tests II and III), shared by netcheck and an
endpoint's candidate gathering.

A server that does RFC 5780 answers a CHANGE-REQUEST from its other IP and port (test II) or
from its other port only (test III); which answers get through our NAT is its filtering. Both
tests succeed by an answer and fail by silence, so their wait is what the test costs: it is sized
from measured round trips (:func:`filter_wait`), never a fixed guess. They run from a fresh
socket: one that already sent to the server's other address has opened its own filter to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Final

from punchthrough.nat.behavior import Behavior, filtering_behavior
from punchthrough.nat.probe import PROBE_RTO
from punchthrough.netio import Address, Network
from punchthrough.stun import StunClient, StunError

log = logging.getLogger(__name__)

#: Floor for how long a filtering test waits for an answer that may legitimately never come.
MIN_FILTER_WAIT: Final = 0.5
#: A filtered-out answer is declared missing after this many measured round trips (the client
#: retransmits inside the window, so one lost packet does not flip the verdict).
FILTER_WAIT_RTTS: Final = 4.0


def filter_wait(rtts: Sequence[float], timeout: float) -> float:
    """How long to wait for a filtering answer: :data:`FILTER_WAIT_RTTS` of the slowest
    measured round trip, at least :data:`MIN_FILTER_WAIT`, at most ``timeout``."""
    if not rtts:
        return timeout
    return min(timeout, max(MIN_FILTER_WAIT, FILTER_WAIT_RTTS * max(rtts)))


#: An endpoint's own filtering test (gather): the retransmission's answer gets this many round
#: trips (one to arrive, one of queueing slack), counted from the retransmission.
RETRY_WAIT_RTTS: Final = 2.0


def gather_filter_wait(rtts: Sequence[float], timeout: float, rto: float = PROBE_RTO) -> float:
    """How long an endpoint's gather waits for a filtering answer: the first try's
    :data:`FILTER_WAIT_RTTS` round trips, and at least until one retransmission (sent at ``rto``)
    had :data:`RETRY_WAIT_RTTS` round trips to be answered; at most ``timeout``.

    Shorter than :func:`filter_wait`'s 0.5 s floor (0.33 s at a 40 ms RTT) because a peer's
    hard stages wait for this verdict, and an error can only go one way: a lost answer reads as
    "filtered", which makes the peer run a hard stage the punch did not need, never skip one
    it did. netcheck, a diagnosis whose verdict is the product, keeps :func:`filter_wait`."""
    if not rtts:
        return timeout
    rtt = max(rtts)
    return min(timeout, max(FILTER_WAIT_RTTS * rtt, rto + RETRY_WAIT_RTTS * rtt))


async def _answered(client: StunClient, server: Address, wait: float, **change: bool) -> bool:
    try:
        await client.binding(server, timeout=wait, **change)
    except (StunError, OSError) as exc:
        log.debug("filtering probe to %s:%d %s: no answer (%s)", *server, change, exc)
        return False
    return True


def filtering_probes(
    client: StunClient, server: Address, wait: float
) -> tuple[Coroutine[Any, Any, bool], Coroutine[Any, Any, bool]]:
    """Tests II and III from ``client``'s socket, as two coroutines to await together (in this
    order, so their requests leave in this order): each says whether its answer came, the
    pair is :func:`filtering_behavior`'s input. Coroutines, not one future, so that a caller can
    run other probes alongside in the same ``gather`` (netcheck's hairpin test)."""
    return (
        _answered(client, server, wait, change_ip=True, change_port=True),
        _answered(client, server, wait, change_port=True),
    )


async def filtering_test(
    network: Network, bind_host: str, server: Address, wait: float, *, rto: float = PROBE_RTO
) -> Behavior:
    """Both tests against the RFC 5780 ``server`` from a fresh socket on ``bind_host``;
    UNKNOWN when no socket can be bound."""
    try:
        sock = await network.bind(bind_host, 0)
    except OSError:
        return Behavior.UNKNOWN
    client = StunClient(sock, rto=rto)
    client.attach()
    try:
        both, port_only = await asyncio.gather(*filtering_probes(client, server, wait))
    finally:
        client.close()
        sock.close()
    return filtering_behavior(both, port_only)
