"""Direct paths between peers: candidates, authenticated connectivity checks, the waterfall.

Sans-IO cores: :mod:`.candidates` (priorities, pairing), :mod:`.keys` (check credentials from
the QUIC session), :mod:`.checks` (the check engine), :mod:`.monitor` (direct-path liveness),
:mod:`.race` (the waterfall: every stage decision), :mod:`.hardnat` (stage choice, port
prediction, the birthday attack; pure). Executors on the event loop: :mod:`.agent` (one
connection's checks and paths) and :mod:`.hard` (the hard stages' sockets).
"""

from punchthrough.traversal.agent import TraversalAgent
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
from punchthrough.traversal.host import TraversalSettings
from punchthrough.traversal.keys import CheckCredentials, derive_credentials, recipient_ufrag
from punchthrough.traversal.local import LocalCandidates, MappingHint
from punchthrough.traversal.monitor import DirectMonitor, Verdict
from punchthrough.traversal.race import Race, Stage, StageRecord, Status, Waterfall

__all__ = [
    "CandidatePair",
    "CheckCredentials",
    "CheckEngine",
    "ConsentResponse",
    "DirectMonitor",
    "LocalCandidates",
    "MappingHint",
    "PairNominated",
    "PairState",
    "PairSucceeded",
    "PeerSeen",
    "Race",
    "RemoteCandidate",
    "RoundFailed",
    "Stage",
    "StageRecord",
    "Status",
    "Transmit",
    "TraversalAgent",
    "TraversalSettings",
    "Verdict",
    "Waterfall",
    "candidate_priority",
    "derive_credentials",
    "make_candidates",
    "pair_priority",
    "recipient_ufrag",
    "remote_candidates",
]
