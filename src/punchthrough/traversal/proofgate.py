"""``ProofGate``: what an acceptor's traversal may do before the dialer has proven its id.

Why: with the dialer's early offer (:mod:`.offer`) the acceptor checks from half a relayed
round trip after ``connect()``, a full relayed round trip before the dialer's ``PeerAuth``
arrives. Checks are safe that early (their key needs the dialer's private key; design notes,
"early check keys"), but the rule of the design stands: nothing an unproven peer did may move
the call or cost more than checks. So until the proof, the race's actions pass only if they
send checks or control messages; a path switch and every hard-stage action wait here, in order,
and run the moment the proof verifies (the race has already decided them: this only delays
their execution). If the proof never comes the connection closes and they never run.

Sans-IO and tiny on purpose: every transition (held, passed, released) is in this class.
"""

from __future__ import annotations

from collections import Counter
from typing import Final

from punchthrough.traversal.race import Action, ProbeNow, SendControl, StartRound, SwitchPath

#: Actions that only send checks or control messages: they may run before the proof.
_PASS: Final = (SendControl, StartRound, ProbeNow)
#: At most this many held actions. Before the proof the race can only emit a few (one round's
#: successes, each hard stage's first attempt); the cap keeps a misbehaving peer bounded.
MAX_HELD: Final = 32


class ProofGate:
    """Holds path switches and hard-stage actions until :meth:`open`."""

    def __init__(self, *, proven: bool) -> None:
        self.proven = proven
        self._held: list[Action] = []
        self.stats: Counter[str] = Counter()

    def admit(self, actions: list[Action]) -> list[Action]:
        """What may run now; the rest is held (a newer path switch replaces a held one)."""
        if self.proven:
            return actions
        out: list[Action] = []
        for action in actions:
            if isinstance(action, _PASS):
                out.append(action)
                continue
            if isinstance(action, SwitchPath):
                self._held = [a for a in self._held if not isinstance(a, SwitchPath)]
            if len(self._held) >= MAX_HELD:
                self.stats["held_dropped"] += 1
                continue
            self._held.append(action)
            self.stats["held"] += 1
        return out

    def open(self) -> list[Action]:
        """The peer is proven: everything held, in order, to run now."""
        self.proven = True
        held, self._held = self._held, []
        return held

    @property
    def held(self) -> int:
        return len(self._held)
