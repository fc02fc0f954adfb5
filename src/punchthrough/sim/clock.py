"""Virtual time: an asyncio event loop whose clock jumps to the next scheduled event.

Everything in punchthrough times itself with the running loop (``loop.time()``, ``call_at``,
``asyncio.sleep``, ``asyncio.timeout``), so running it on :class:`VirtualTimeLoop` makes an hour
of protocol behaviour take milliseconds, deterministically. The loop has no I/O at all: its
"selector" never waits, it only moves the clock forward to the earliest timer.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Default guard on virtual time for :func:`run`: a runaway keepalive loop fails instead of hanging.
DEFAULT_TIME_LIMIT = 3600.0
#: Float slack when landing on a timer deadline (far below any delay the simulator models).
_EPSILON = 1e-9


class SimulationError(RuntimeError):
    """Base class for simulator failures that are not the simulated code's own errors."""


class SimulationDeadlock(SimulationError):
    """Nothing is ready and no timer is pending, yet the main coroutine has not finished."""


class SimulationTimeLimit(SimulationError):
    """The virtual clock passed the run's time limit (probably a loop that never ends)."""


class _VirtualSelector:
    """Stands in for a selector: ``select(timeout)`` advances the clock instead of blocking."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        self._loop._advance(timeout)
        return []

    def close(self) -> None:
        pass


class VirtualTimeLoop(asyncio.BaseEventLoop):
    """A single-threaded event loop on virtual time, with no real I/O.

    ``time()`` starts at 0.0. When no callback is ready the clock jumps straight to the next timer.
    Sockets, subprocesses, executors and signal handlers are not supported: simulated programs
    use ``punchthrough.sim`` hosts for networking.
    """

    def __init__(self, *, seed: int = 0, time_limit: float | None = DEFAULT_TIME_LIMIT) -> None:
        super().__init__()
        self._now = 0.0
        self._selector = _VirtualSelector(self)
        self._clock_resolution = 1e-9
        self.seed = seed
        self.time_limit = time_limit

    def time(self) -> float:
        return self._now

    def _advance(self, timeout: float | None) -> None:
        if timeout is None:
            raise SimulationDeadlock(
                f"deadlock at virtual t={self._now:.6f}: no ready callbacks and no timers"
            )
        if timeout <= 0:
            return
        target = self._now + timeout
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        if scheduled:
            # The loop derived ``timeout`` from the head timer as ``when - now``; adding it back
            # can round just short of ``when``, and the loop would spin without progress. Land
            # exactly on the deadline instead.
            head = scheduled[0].when()
            if head <= target + _EPSILON:
                target = head
        if self.time_limit is not None and target > self.time_limit:
            raise SimulationTimeLimit(
                f"virtual time limit {self.time_limit:g}s reached (next event at {target:.3f}s)"
            )
        self._now = max(self._now, target)

    def _process_events(self, event_list: list[Any]) -> None:
        pass

    def _write_to_self(self) -> None:
        # Single-threaded by design: nothing can wake us from another thread.
        pass


def _cancel_all(loop: VirtualTimeLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    for task in pending:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception in simulated task during shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def run(
    coro: Coroutine[Any, Any, T],
    *,
    seed: int = 0,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
) -> T:
    """Run ``coro`` to completion on a fresh :class:`VirtualTimeLoop` and return its result.

    ``seed`` seeds the loop (``World()`` created inside picks it up) and the global ``random``
    module for the duration of the run, so code drawing from ``random`` is reproducible too; the
    previous global state is restored afterwards. Tasks still pending at the end are cancelled.
    """
    loop = VirtualTimeLoop(seed=seed, time_limit=time_limit)
    saved = random.getstate()
    random.seed(seed)
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.time_limit = None  # let cancelled tasks unwind their finally blocks
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            random.setstate(saved)
