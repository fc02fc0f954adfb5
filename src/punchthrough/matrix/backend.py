"""What the matrix runner needs from a backend (the simulator or the kernel lab)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Protocol

from punchthrough.matrix.model import TrialResult

#: Runs trial k (0-based) of the open cell and returns its result; never raises for a failed
#: call (that is an error trial), only for a broken backend.
TrialRunner = Callable[[int], TrialResult]


class MatrixBackend(Protocol):
    @property
    def name(self) -> str:
        """``sim`` or ``lab`` (``matrix.json``'s ``backend``)."""
        ...

    @property
    def rtt_ms(self) -> float | None:
        """The direct-path RTT the backend really applies (None: it applies none)."""
        ...

    @property
    def notes(self) -> list[str]:
        """Human notes on how the figures were obtained (shown in the HTML and the summary)."""
        ...

    def cell(self, a: str, b: str) -> AbstractContextManager[TrialRunner]:
        """Set up pair (a, b) (a calls b) and tear it down on exit, on every path."""
        ...
