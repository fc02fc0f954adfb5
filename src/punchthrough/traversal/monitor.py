"""Liveness of the active direct path, sans-IO: keepalives, suspicion, death.

The monitor watches one thing: is the peer still there on the direct path? Media flows at 50
packets/s in a call, so a silence of a few frame intervals is already news. Two clocks start
the escalation below (``unanswered_since``):

- *we sent, nothing came back*: the first send *after* the last packet heard (so an idle call,
  nothing sent, is never declared dead, and a dead path is noticed within a bounded time of the
  first packet it swallowed);
- *the peer was streaming and went quiet*: a receive-only side (it only listens, or only
  echoes and has nothing unanswered left) may have sent nothing since the last packet it heard,
  so the first rule does not fire for it. When packets had been arriving steadily
  (:data:`RX_STREAM_PACKETS` in a row, gaps below :data:`RX_STREAM_GAP`) and nothing arrives
  for :data:`RX_SILENCE_GAPS` typical gaps (at least the probe threshold), the monitor probes.
  That probe also re-opens *our* NAT's binding if the NAT forgot it (a router reboot): nothing
  else would until the next keepalive. A peer that merely paused answers it, and stops counting
  as streaming: one probe per pause.

Escalation, from the moment the path owes us an answer:

- ``probe``   silent for :attr:`probe_after`: send a consent check (it wants an answer now);
- ``suspect`` silent for :attr:`suspect_after`: duplicate every packet onto the relay too, so
  frames sent while we are unsure still arrive (QUIC discards the duplicates);
- ``dead``    silent for :attr:`dead_after`: move the call back to the relay.

Thresholds grow with the path's round-trip time (a check needs one RTT to be answered). Besides,
a keepalive check goes out every :attr:`keepalive` seconds whatever the traffic (consent
freshness, RFC 7675, and the NAT bindings of the path): see :data:`KEEPALIVE` for the number.
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
#: Keepalive interval of a NAT binding we depend on (seconds): the direct path's consent checks,
#: and each relay flow's STUN keepalive (``relay.client``). It must stay below the shortest UDP
#: binding lifetime on the path, leaving a third of it for a lost keepalive's retransmission
#: and scheduling delays (the monitor re-probes an unanswered check after :data:`PROBE_AFTER`,
#: relay keepalives are repeated every 0.5 s until answered): :func:`keepalive_for_lifetime`.
#: Where 2 s comes from: RFC 4787 REQ-5 asks NATs for at least 2 min, but deployed ones go far
#: lower (Linux conntrack forgets an unreplied UDP flow after 30 s; the lab's aggressive
#: ``eim-apdf-short-timeout`` profile after 3 s), and keepalives at RFC 8445's 15 s or WireGuard's
#: 25 s only cover the friendly ones. Tailscale heartbeats its active direct path every 2 s (3 s
#: since 2023) for the same reason. The cost is one ~100-byte check and its answer per 2 s per
#: side: nothing next to a call's 50 packets/s. 2 s is what the rule gives for a 3 s lifetime;
#: ``EndpointConfig.nat_keepalive`` tunes it (from a measured or known binding lifetime).
KEEPALIVE: Final = 2.0
#: Bounds of :func:`keepalive_for_lifetime`.
KEEPALIVE_MIN: Final = 0.5
KEEPALIVE_MAX: Final = 25.0
#: Receive-side silence (see the module text): a peer counts as streaming after this many packets
#: in a row arrived less than :data:`RX_STREAM_GAP` apart ...
RX_STREAM_PACKETS: Final = 8
RX_STREAM_GAP: Final = 0.25
#: ... and its silence is news after this many typical inter-arrival gaps.
RX_SILENCE_GAPS: Final = 4.0
#: A deadline this close counts as reached (a timer fires at its deadline, but ``since + x``
#: minus ``since`` may come out a hair below ``x``: the transition must not wait for the next
#: wake-up).
_EPS: Final = 1e-6


def keepalive_for_lifetime(lifetime: float) -> float:
    """The keepalive interval for a NAT binding lifetime (seconds) known from a measurement or
    an operator: two thirds of it (the last third is room for a lost keepalive's retransmission
    and for scheduling delays), within [:data:`KEEPALIVE_MIN`, :data:`KEEPALIVE_MAX`] (25 s:
    WireGuard's persistent keepalive). A 3 s lifetime gives the default, :data:`KEEPALIVE`."""
    if lifetime <= 0:
        raise ValueError("a binding lifetime must be positive")
    return min(KEEPALIVE_MAX, max(KEEPALIVE_MIN, lifetime * 2 / 3))


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
    #: Receive side: packets in a row heard less than RX_STREAM_GAP apart, and the smoothed
    #: gap between them (``None`` until the run starts).
    rx_run: int = 0
    rx_gap: float | None = None
    #: A probe went out because the streaming peer went quiet (its answer ends the stream).
    rx_probe_out: bool = False
    #: Probes sent because of receive-side silence (statistics).
    rx_probes: int = 0

    def reset(self, now: float, rtt: float | None = None) -> None:
        """The path just became active (a verified response: we heard it now)."""
        self.rtt = rtt if rtt is not None else self.rtt
        self.last_heard = now
        self.last_probe = now
        self.unanswered_since = None
        self.verdict = Verdict.OK
        self.rx_run = 0
        self.rx_gap = None
        self.rx_probe_out = False

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

    @property
    def streaming(self) -> bool:
        """The peer has been sending steadily on this path (see the module text)."""
        return self.rx_run >= RX_STREAM_PACKETS

    @property
    def rx_threshold(self) -> float:
        """How long a streaming peer may stay quiet before we probe."""
        return max(self.probe_threshold, RX_SILENCE_GAPS * (self.rx_gap or 0.0))

    def rx_deadline(self) -> float | None:
        """When a streaming peer's silence becomes news (``None``: not streaming, or the path
        already owes us an answer)."""
        if not self.streaming or self.unanswered_since is not None:
            return None
        thr = self.rx_threshold
        return max(self.last_heard, self.last_probe) + thr

    def sent(self, now: float) -> None:
        if self.unanswered_since is None:
            self.unanswered_since = now

    def heard(self, now: float) -> bool:
        """Something verified came back; True if this ends a suspicion."""
        gap = now - self.last_heard
        if self.rx_probe_out:
            # The answer to a silence probe: the peer is there but no longer streaming.
            self.rx_probe_out = False
            self.rx_run, self.rx_gap = 0, None
        elif gap <= RX_STREAM_GAP:
            self.rx_run += 1
            g = max(gap, 0.0)
            self.rx_gap = g if self.rx_gap is None else self.rx_gap + (g - self.rx_gap) / 8
        else:
            self.rx_run, self.rx_gap = 0, None
        self.last_heard = now
        self.unanswered_since = None
        was = self.verdict
        self.verdict = Verdict.OK
        return was is Verdict.SUSPECT

    def probed(self, now: float) -> None:
        rx = self.rx_deadline()
        if rx is not None and now >= rx - _EPS:
            self.rx_probe_out = True
            self.rx_probes += 1
        self.last_probe = now
        self.sent(now)

    def want_probe(self, now: float) -> bool:
        if now - self.last_probe >= self.keepalive - _EPS:
            return True
        since = self.unanswered_since
        if since is None:
            rx = self.rx_deadline()
            return rx is not None and now >= rx - _EPS
        pt = self.probe_threshold - _EPS
        return now - since >= pt and now - self.last_probe >= pt

    def poll(self, now: float) -> Verdict:
        """The verdict now (moves OK -> SUSPECT -> DEAD; ``heard`` moves it back to OK)."""
        since = self.unanswered_since
        if since is not None and self.verdict is not Verdict.DEAD:
            silent = now - since + _EPS
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
        rx = self.rx_deadline()
        if rx is not None:
            times.append(rx)
        future = [t for t in times if t > now + _EPS]
        return min(future) if future else now + self.probe_threshold
