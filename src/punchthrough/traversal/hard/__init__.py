"""The hard-NAT stages' executor: sockets and sends for the race's port prediction and birthday
attempts (:mod:`.runner`; the roles in :mod:`.birthday` and :mod:`.prediction`)."""

from punchthrough.traversal.hard.runner import Attempt, HardStages, StageHost

__all__ = ["Attempt", "HardStages", "StageHost"]
