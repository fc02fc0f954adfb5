"""The hard-NAT stages' executor: sockets and sends for the race's port prediction and birthday
attempts (:mod:`.runner` the attempts' sockets and clocks, :mod:`.executor` the dispatch, the
roles in :mod:`.birthday` and :mod:`.prediction`)."""

from punchthrough.traversal.hard.executor import HardStages
from punchthrough.traversal.hard.runner import Attempt, Runner, StageHost

__all__ = ["Attempt", "HardStages", "Runner", "StageHost"]
