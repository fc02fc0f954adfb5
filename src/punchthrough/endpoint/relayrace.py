"""The decisions of relay transport selection, sans-IO: which transport to try when, and
which one wins (``TransportRace``), with the timing constants of ``.relaylink``.

One registration attempt: UDP first; after :func:`fallback_wait` (two RTTs, at least
:data:`MIN_FALLBACK_WAIT`) or when UDP fails sooner, the stream transports in parallel; the
first to answer is kept and the rest cancelled; everything failed is a :class:`GiveUp` naming
every reason. Inputs are method calls with ``now``; outputs are actions the executor
(:class:`.relaylink.RelayLinks`) carries out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

#: Least wait for UDP before the streams start: RFC 8305 section 5's recommended Connection
#: Attempt Delay (250 ms); a relay whose UDP answers at all answers well within it.
MIN_FALLBACK_WAIT: Final = 0.25
#: While on a stream, a STUN probe of the relay's UDP address this often (one ~28-byte
#: request; a firewall that opens again is noticed within this).
UDP_PROBE_INTERVAL: Final = 2.0
#: While on UDP with stream fallbacks, the registration's counters are looked at this often
#: (no packet is sent unless they look wrong).
WATCH_INTERVAL: Final = 0.05
#: Frames sent and nothing received for this long: suspect UDP (a call hears its peer every
#: 20 ms at 50 pps; 0.25 s is 12 frames). A false suspicion (jitter, a peer that stopped
#: sending) costs one STUN probe that is answered, so this errs short: every 0.1 s here is
#: 5 frames lost when UDP really stops.
SILENCE: Final = 0.25
#: The STUN probe that confirms a suspicion: three RTTs to the relay (as measured by the UDP
#: registration), between these bounds (no RTT known yet: the upper one).
PROBE_TIMEOUT_MIN: Final = 0.15
PROBE_TIMEOUT: Final = 0.5


def probe_timeout(rtt: float | None) -> float:
    """How long a STUN probe of the relay's UDP address waits: 3 RTTs, within bounds."""
    return PROBE_TIMEOUT if rtt is None else min(PROBE_TIMEOUT, max(PROBE_TIMEOUT_MIN, 3 * rtt))


class Transport(enum.StrEnum):
    UDP = "udp"
    TLS = "tls"
    WEBSOCKET = "websocket"


def fallback_wait(rtt: float | None) -> float:
    """How long UDP gets before the streams start: two RTTs, at least 250 ms."""
    return MIN_FALLBACK_WAIT if rtt is None else max(MIN_FALLBACK_WAIT, 2 * rtt)


# -- the decisions (sans-IO) ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Start:
    transports: tuple[Transport, ...]


@dataclass(frozen=True, slots=True)
class Cancel:
    transports: tuple[Transport, ...]


@dataclass(frozen=True, slots=True)
class Keep:
    transport: Transport
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: str


Action = Start | Cancel | Keep | GiveUp


class TransportRace:
    """One registration attempt over a relay's transports (no I/O: the caller runs actions)."""

    def __init__(self, udp: bool, streams: tuple[Transport, ...], wait: float) -> None:
        if not udp and not streams:
            raise ValueError("a relay needs a transport")
        self.udp = udp
        self.streams = streams
        self.wait = wait
        self.running: set[Transport] = set()
        self.failures: dict[Transport, str] = {}
        self.winner: Transport | None = None
        self._streams_at: float | None = None
        self._started_at = 0.0
        self.done = False

    def start(self, now: float) -> list[Action]:
        self._started_at = now
        if self.udp:
            self.running.add(Transport.UDP)
            self._streams_at = now + self.wait if self.streams else None
            return [Start((Transport.UDP,))]
        return self._start_streams(now)

    def _start_streams(self, now: float) -> list[Action]:
        self._streams_at = None
        todo = tuple(t for t in self.streams if t not in self.running and t not in self.failures)
        self.running.update(todo)
        return [Start(todo)] if todo else []

    def next_deadline(self) -> float | None:
        return None if self.done else self._streams_at

    def poll(self, now: float) -> list[Action]:
        if self.done or self._streams_at is None or now < self._streams_at:
            return []
        return self._start_streams(now)

    def registered(self, transport: Transport, now: float) -> list[Action]:
        """``transport`` answered (UDP: registered; a stream: its link opened)."""
        if self.done:
            return [Cancel((transport,))]  # a late winner: not needed
        self.done = True
        self.winner = transport
        self.running.discard(transport)
        others = tuple(sorted(self.running))
        self.running.clear()
        if transport is Transport.UDP:
            reason = "UDP registered"
        elif Transport.UDP in self.failures:
            reason = f"UDP failed ({self.failures[Transport.UDP]}); {transport} answered"
        elif self.udp:
            waited = round((now - self._started_at) * 1000)
            reason = (
                f"UDP unanswered after {round(self.wait * 1000)} ms; "
                f"{transport} answered first ({waited} ms)"
            )
        else:
            reason = f"the relay lists no UDP address; {transport} answered first"
        out: list[Action] = [Keep(transport, reason)]
        if others:
            out.append(Cancel(others))
        return out

    def failed(self, transport: Transport, why: str, now: float) -> list[Action]:
        if self.done:
            return []
        self.running.discard(transport)
        self.failures[transport] = why
        out: list[Action] = []
        if transport is Transport.UDP and self._streams_at is not None:
            out += self._start_streams(now)  # UDP failed early: no reason to wait
        if not self.running and self._streams_at is None:
            self.done = True
            out.append(GiveUp("; ".join(f"{t}: {w}" for t, w in self.failures.items())))
        return out
