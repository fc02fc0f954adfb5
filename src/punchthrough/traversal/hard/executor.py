"""Dispatches the race's hard-stage actions to the roles (:mod:`.birthday`, :mod:`.prediction`)
and to the attempts they concern (a delivered probe, a winner to keep, a beaten attempt)."""

from __future__ import annotations

from punchthrough.traversal.hard import birthday, prediction
from punchthrough.traversal.hard.runner import Runner
from punchthrough.traversal.race import (
    DeliverProbe,
    HardAction,
    KeepWinner,
    Stage,
    StartBirthdayEasy,
    StartBirthdayHard,
    StartMutual,
    StartPredicted,
    StartPredicting,
    StopAttempt,
)


class HardStages(Runner):
    """The hard stages of one connection: the race decides, this carries it out."""

    # -- the race's actions ----------------------------------------------------------------
    def execute(self, action: HardAction) -> None:
        if self._closed:
            return
        if isinstance(action, StartBirthdayHard):
            a = self.new_attempt(action.attempt, Stage.BIRTHDAY)
            self.spawn(birthday.hard_side(self, a, action))
        elif isinstance(action, StartBirthdayEasy):
            a = self.new_attempt(action.attempt, Stage.BIRTHDAY)
            self.spawn(birthday.easy_side(self, a, action))
        elif isinstance(action, StartPredicted):
            a = self.new_attempt(action.attempt, Stage.PORT_PREDICTION)
            self.spawn(prediction.predicted(self, a, action))
        elif isinstance(action, StartPredicting):
            a = self.new_attempt(action.attempt, Stage.PORT_PREDICTION)
            self.spawn(prediction.predicting(self, a, action))
        elif isinstance(action, StartMutual):
            a = self.new_attempt(action.attempt, Stage.PORT_PREDICTION)
            a.peer_probe = action.peer_probe
            self.spawn(prediction.mutual(self, a, action))
        elif isinstance(action, DeliverProbe):
            a = self._attempts[action.attempt]
            a.peer_probe = action.probe
            a.wake.set()
        elif isinstance(action, KeepWinner):
            a = self._attempts[action.attempt]
            a.winner = a.by_local.get(action.local)
            self.release(a)
            a.wake.set()
        elif isinstance(action, StopAttempt):
            a = self._attempts[action.attempt]
            a.beaten = True
            self.release(a, keep_winner=False)
            a.wake.set()
