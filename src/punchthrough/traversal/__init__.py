"""Direct paths between peers: candidates, authenticated connectivity checks, the hole punch,
path liveness, and the waterfall's stage bookkeeping.

Sans-IO cores: :mod:`.candidates` (priorities, pairing), :mod:`.keys` (check credentials from
the QUIC session), :mod:`.checks` (the check engine), :mod:`.monitor` (direct-path liveness),
:mod:`.stages` (stage records), :mod:`.hardnat` (stage choice, port prediction, the birthday
attack; pure). :mod:`.agent` runs them for one connection on the
event loop.
"""

from punchthrough.traversal.agent import LocalCandidates, TraversalAgent
from punchthrough.traversal.candidates import (
    RemoteCandidate,
    candidate_priority,
    make_candidates,
    pair_priority,
    remote_candidates,
)
from punchthrough.traversal.checks import (
    CandidatePair,
    CheckEngine,
    ConsentResponse,
    PairNominated,
    PairState,
    PairSucceeded,
    PeerSeen,
    RoundFailed,
    Transmit,
)
from punchthrough.traversal.keys import CheckCredentials, derive_credentials, recipient_ufrag
from punchthrough.traversal.monitor import DirectMonitor, Verdict
from punchthrough.traversal.stages import STAGES, StageRecord, Waterfall

__all__ = [
    "STAGES",
    "CandidatePair",
    "CheckCredentials",
    "CheckEngine",
    "ConsentResponse",
    "DirectMonitor",
    "LocalCandidates",
    "PairNominated",
    "PairState",
    "PairSucceeded",
    "PeerSeen",
    "RemoteCandidate",
    "RoundFailed",
    "StageRecord",
    "Transmit",
    "TraversalAgent",
    "Verdict",
    "Waterfall",
    "candidate_priority",
    "derive_credentials",
    "make_candidates",
    "pair_priority",
    "recipient_ufrag",
    "remote_candidates",
]
