"""``race``: the waterfall as one sans-IO state machine (see :mod:`.machine`).

:mod:`.records` holds its vocabulary (stages, statuses, reasons) and the stage records the
traversal report shows; :mod:`.actions` what it asks its executors to do.
"""

from punchthrough.traversal.local import LocalView
from punchthrough.traversal.race.actions import (
    Action,
    DeliverProbe,
    HardAction,
    KeepWinner,
    ProbeNow,
    SendControl,
    StartBirthdayEasy,
    StartBirthdayHard,
    StartMutual,
    StartPredicted,
    StartPredicting,
    StartRound,
    StartStage,
    StopAttempt,
    SwitchPath,
)
from punchthrough.traversal.race.machine import Race
from punchthrough.traversal.race.policy import (
    HARD_START_DELAY,
    MAX_ATTEMPTS,
    PACING_GUARD,
    PUNCH_GRACE,
    RETRY_DEAD,
    RETRY_FAILED,
    START_MARGIN,
)
from punchthrough.traversal.race.records import (
    DIRECT,
    HARD,
    Reason,
    Stage,
    StageRecord,
    Status,
    Waterfall,
)
from punchthrough.traversal.reasons import Why

__all__ = [
    "DIRECT",
    "HARD",
    "HARD_START_DELAY",
    "MAX_ATTEMPTS",
    "PACING_GUARD",
    "PUNCH_GRACE",
    "RETRY_DEAD",
    "RETRY_FAILED",
    "START_MARGIN",
    "Action",
    "DeliverProbe",
    "HardAction",
    "KeepWinner",
    "LocalView",
    "ProbeNow",
    "Race",
    "Reason",
    "SendControl",
    "Stage",
    "StageRecord",
    "StartBirthdayEasy",
    "StartBirthdayHard",
    "StartMutual",
    "StartPredicted",
    "StartPredicting",
    "StartRound",
    "StartStage",
    "Status",
    "StopAttempt",
    "SwitchPath",
    "Waterfall",
    "Why",
]
