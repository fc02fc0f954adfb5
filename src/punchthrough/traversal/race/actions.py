"""What the race asks its executor to do (typed, like aioquic's events going the other way).

The executor (:class:`~punchthrough.traversal.agent.TraversalAgent` for the call's paths,
:class:`~punchthrough.traversal.hard.HardStages` for the hard stages' sockets) carries them out
in list order and reports back through the race's inputs; it takes no decision of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from punchthrough.nat.summary import NatSummary
from punchthrough.netio import Address
from punchthrough.signal import Message
from punchthrough.traversal.checks import CandidatePair
from punchthrough.traversal.hardnat.plan import StagePlan
from punchthrough.traversal.hardnat.prediction import SequentialProbe, Window
from punchthrough.traversal.race.records import Stage


@dataclass(frozen=True, slots=True)
class SendControl:
    """Send ``msg`` to the peer on the control stream."""

    msg: Message


@dataclass(frozen=True, slots=True)
class StartRound:
    """Start check round ``generation`` of the hole punch now (``reset``: forget old successes
    first, the call is on the relay)."""

    generation: int
    reset: bool


@dataclass(frozen=True, slots=True)
class ProbeNow:
    """One consent check on the direct path now (the peer's or our network changed)."""


@dataclass(frozen=True, slots=True)
class SwitchPath:
    """Move the call onto ``pair`` (found by ``strategy``)."""

    pair: CandidatePair
    strategy: Stage
    reason: str


# -- the hard stages: start one role of one attempt -----------------------------------------------
@dataclass(frozen=True, slots=True)
class StartBirthdayHard:
    """Open ``plan``'s sockets, one pinhole each towards ``easy``, then ``HardNatBirthdayStart``."""

    attempt: int
    plan: StagePlan
    easy: Address


@dataclass(frozen=True, slots=True)
class StartBirthdayEasy:
    """Probe random ports of ``hard``'s public IP from the main socket from ``start``."""

    attempt: int
    hard: NatSummary
    start: float
    sockets: int


@dataclass(frozen=True, slots=True)
class StartPredicted:
    """Our NAT is sequential: fresh samples from ``servers``, the target flow to ``peer``."""

    attempt: int
    peer: Address
    servers: tuple[Address, ...]
    delta: int


@dataclass(frozen=True, slots=True)
class StartPredicting:
    """Check the predicted ``window`` of ``peer_ip`` from the main socket."""

    attempt: int
    peer_ip: str
    window: Window


@dataclass(frozen=True, slots=True)
class StartMutual:
    """Both NATs sequential: samples, our probe, then one fresh flow per predicted port
    (``peer_probe``: the peer's samples, when they came first)."""

    attempt: int
    servers: tuple[Address, ...]
    delta: int
    peer_probe: SequentialProbe | None


@dataclass(frozen=True, slots=True)
class DeliverProbe:
    """The peer's samples for a running mutual attempt."""

    attempt: int
    probe: SequentialProbe


@dataclass(frozen=True, slots=True)
class KeepWinner:
    """``attempt`` won on ``local``: close its other sockets now, keep that one (the path)."""

    attempt: int
    local: Address


@dataclass(frozen=True, slots=True)
class StopAttempt:
    """``attempt`` lost to ``by``: stop sending and close every socket of it now."""

    attempt: int
    by: Stage


StartStage = StartBirthdayHard | StartBirthdayEasy | StartPredicted | StartPredicting | StartMutual
HardAction = StartStage | DeliverProbe | KeepWinner | StopAttempt
Action = SendControl | StartRound | ProbeNow | SwitchPath | HardAction
