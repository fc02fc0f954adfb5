"""Liveness of the active direct path, sans-IO: keepalives, suspicion, death.

The monitor watches one thing: did anything come back from the peer on the direct path since
we started sending into it? Media flows at 50 packets/s in a call, so a silence of a few frame
intervals after a send is already news. The clock starts at the first send *after* the last
packet heard (``unanswered_since``), so an idle call (nothing sent) is never declared dead, and
a dead path is noticed within a bounded time of the first packet it swallowed:

- ``probe``   silent for :attr:`probe_after`: send a consent check (it wants an answer now);
- ``suspect`` silent for :attr:`suspect_after`: duplicate every packet onto the relay too, so
  frames sent while we are unsure still arrive (QUIC discards the duplicates);
- ``dead``    silent for :attr:`dead_after`: move the call back to the relay.

Thresholds grow with the path's round-trip time (a check needs one RTT to be answered). Besides,
a keepalive check goes out every :attr:`keepalive` seconds whatever the traffic, below any NAT's
binding lifetime (RFC 4787 REQ-5: at least 2 minutes; Linux keeps an unreplied flow 30 s).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

#: Consent check when the path has been silent this long after a send (seconds).
PROBE_AFTER: Final = 0.08
#: Mirror onto the relay after this long.
SUSPECT_AFTER: Final = 0.15
#: Back to the relay after this long: "within a few hundred milliseconds".
DEAD_AFTER: Final = 0.4
#: Keepalive check interval on an otherwise quiet path: below Linux conntrack's 30 s unreplied
#: UDP timeout and well below RFC 4787's 2-minute minimum binding lifetime.
KEEPALIVE: Final = 5.0


class Verdict(enum.Enum):
    OK = "ok"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass
class DirectMonitor:
    """Tracks one direct path. Feed it ``sent``/``heard``; ask ``poll`` what to do."""

    probe_after: float = PROBE_AFTER
    suspect_after: float = SUSPECT_AFTER
    dead_after: float = DEAD_AFTER
    keepalive: float = KEEPALIVE
    rtt: float = 0.0
    last_heard: float = 0.0
    last_probe: float = 0.0
    unanswered_since: float | None = None
    verdict: Verdict = Verdict.OK

    def reset(self, now: float, rtt: float | None = None) -> None:
        """The path just became active (a verified response: we heard it now)."""
        self.rtt = rtt if rtt is not None else self.rtt
        self.last_heard = now
        self.last_probe = now
        self.unanswered_since = None
        self.verdict = Verdict.OK

    def _scaled(self, base: float, k: float) -> float:
        return max(base, k * self.rtt + base / 2)

    @property
    def probe_threshold(self) -> float:
        return self._scaled(self.probe_after, 1.0)

    @property
    def suspect_threshold(self) -> float:
        return self._scaled(self.suspect_after, 1.5)

    @property
    def dead_threshold(self) -> float:
        return self._scaled(self.dead_after, 3.0)

    def sent(self, now: float) -> None:
        if self.unanswered_since is None:
            self.unanswered_since = now

    def heard(self, now: float) -> bool:
        """Something verified came back; True if this ends a suspicion."""
        self.last_heard = now
        self.unanswered_since = None
        was = self.verdict
        self.verdict = Verdict.OK
        return was is Verdict.SUSPECT

    def probed(self, now: float) -> None:
        self.last_probe = now
        self.sent(now)

    def want_probe(self, now: float) -> bool:
        if now - self.last_probe >= self.keepalive:
            return True
        since = self.unanswered_since
        return (
            since is not None
            and now - since >= self.probe_threshold
            and now - self.last_probe >= self.probe_threshold
        )

    def poll(self, now: float) -> Verdict:
        """The verdict now (moves OK -> SUSPECT -> DEAD; ``heard`` moves it back to OK)."""
        since = self.unanswered_since
        if since is not None and self.verdict is not Verdict.DEAD:
            silent = now - since
            if silent >= self.dead_threshold:
                self.verdict = Verdict.DEAD
            elif silent >= self.suspect_threshold:
                self.verdict = Verdict.SUSPECT
        return self.verdict

    def next_deadline(self, now: float) -> float:
        """When ``poll``/``want_probe`` may next change their answer (always after ``now``)."""
        times = [self.last_probe + self.keepalive]
        since = self.unanswered_since
        if since is not None and self.verdict is not Verdict.DEAD:
            times.append(max(since, self.last_probe) + self.probe_threshold)
            if self.verdict is Verdict.OK:
                times.append(since + self.suspect_threshold)
            times.append(since + self.dead_threshold)
        future = [t for t in times if t > now]
        return min(future) if future else now + self.probe_threshold
