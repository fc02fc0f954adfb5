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
        else:
            self._to_running(action)

    def _to_running(self, action: DeliverProbe | KeepWinner | StopAttempt) -> None:
        """An action for a running attempt: it wakes at once to act on it."""
        a = self._attempts.get(action.attempt)
        if a is None:  # its role never ran (the call was closing): nothing to stop
            return
        if isinstance(action, DeliverProbe):
            a.peer_probe = action.probe
        elif isinstance(action, KeepWinner):
            a.winner = a.by_local.get(action.local)
            self.release(a)
        else:
            a.beaten = True
            self.release(a, keep_winner=False)
        a.wake.set()
