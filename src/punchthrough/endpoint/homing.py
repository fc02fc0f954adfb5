"""Which relay of a fleet is our home: ranking by measured RTT, re-homing with hysteresis.

Sans-IO (as :mod:`punchthrough.traversal.race`): the owner feeds probe outcomes
(:meth:`HomePolicy.rtt`, :meth:`HomePolicy.loss`) and relay events (:meth:`HomePolicy.down`,
:meth:`HomePolicy.up`), each with ``now``, and asks :meth:`HomePolicy.decide` what to do. The
policy never sleeps, sends or reads a clock, so unit tests drive it through any timeline.

Rules (numbers in :class:`HomingSettings`, each with its reason):

* **Rank** relays that answer by smoothed RTT (RFC 6298's SRTT, gain 1/8); relays never
  measured rank last, down relays are not candidates.
* **Dead home**: ``dead_after`` probes in a row unanswered, or the relay closed our registration
  (crash, drain, shutdown) -> re-home to the best candidate at once (``urgent``).
* **Degraded home**: more than ``loss_threshold`` of the last ``loss_window`` probes lost while a
  candidate lost less -> re-home (a window, not one loss: sustained).
* **Better elsewhere**: a candidate whose SRTT stays below ``better_ratio`` x the home's AND at
  least ``better_margin`` lower for ``sustain`` seconds, and the last move was ``min_dwell``
  ago -> re-home. Both a ratio and an absolute margin: 3 ms vs 5 ms is not worth a move.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

#: RFC 6298 section 2: SRTT <- (1 - alpha) * SRTT + alpha * R', alpha = 1/8.
RTT_GAIN: Final = 1 / 8


@dataclass(frozen=True, slots=True)
class HomingSettings:
    """The policy's tunables (and the prober's cadence, which the I/O side reads)."""

    #: Probe interval for relays in use (home, relays carrying calls): with ``dead_after`` this
    #: sets failure detection, 3 x 0.25 s = 0.75 s, inside the issue's 2 s recovery target with
    #: room for re-registering (one QUIC handshake) and the peer's directory lookup. A probe is
    #: one STUN Binding (~60 bytes each way): 4/s per relay in use.
    probe_interval: float = 0.25
    #: Probe interval for the other relays: only their ranking depends on it.
    idle_probe_interval: float = 5.0
    #: Consecutive unanswered probes that make a relay down (a single loss is not a failure).
    dead_after: int = 3
    #: Degraded home: more than this share of the last ``loss_window`` probes lost...
    loss_threshold: float = 0.3
    #: ... over this many probes (20 x 0.25 s = 5 s of sustained loss), with at least half of
    #: the window measured.
    loss_window: int = 20
    #: Better elsewhere: SRTT below this fraction of the home's...
    better_ratio: float = 0.7
    #: ... and at least this much lower (seconds)...
    better_margin: float = 0.010
    #: ... continuously for this long (seconds): a short spike does not move anyone.
    sustain: float = 10.0
    #: No voluntary move sooner than this after the last one (seconds); a dead home moves now.
    min_dwell: float = 30.0

    def __post_init__(self) -> None:
        if self.probe_interval <= 0 or self.idle_probe_interval <= 0:
            raise ValueError("probe intervals must be positive")
        if self.dead_after < 1 or self.loss_window < 2:
            raise ValueError("dead_after >= 1 and loss_window >= 2")
        if not 0 < self.better_ratio < 1 or not 0 < self.loss_threshold < 1:
            raise ValueError("better_ratio and loss_threshold are fractions in (0, 1)")


@dataclass(slots=True)
class RelayHealth:
    """What the probes say about one relay."""

    srtt: float | None = None
    misses: int = 0  # consecutive unanswered probes
    down: bool = False
    outcomes: deque[bool] = field(default_factory=deque)  # True = answered

    def loss_ratio(self) -> float:
        if not self.outcomes:
            return 0.0
        return 1.0 - sum(self.outcomes) / len(self.outcomes)


@dataclass(frozen=True, slots=True)
class Rehome:
    """Decision: make ``to`` our home (``urgent``: the home is dead, move now)."""

    to: str
    reason: str
    urgent: bool


class HomePolicy:
    """Home relay choice for one endpoint; relays are known by id (``str``)."""

    def __init__(self, relays: Iterable[str], settings: HomingSettings | None = None) -> None:
        self.settings = settings or HomingSettings()
        self.health: dict[str, RelayHealth] = {r: RelayHealth() for r in relays}
        if not self.health:
            raise ValueError("a fleet needs at least one relay")
        self.home: str | None = None
        self._homed_at: float | None = None
        self._better_since: dict[str, float] = {}

    # -- inputs ---------------------------------------------------------------------------
    def rtt(self, relay: str, sample: float, now: float) -> None:
        """A probe of ``relay`` answered after ``sample`` seconds."""
        h = self.health[relay]
        h.srtt = sample if h.srtt is None else (1 - RTT_GAIN) * h.srtt + RTT_GAIN * sample
        h.misses = 0
        h.down = False
        self._outcome(h, True)

    def loss(self, relay: str, now: float) -> None:
        """A probe of ``relay`` went unanswered."""
        h = self.health[relay]
        h.misses += 1
        self._outcome(h, False)
        if h.misses >= self.settings.dead_after:
            h.down = True

    def down(self, relay: str, now: float) -> None:
        """``relay`` closed our registration or could not register us: not a candidate until
        a probe is answered again."""
        h = self.health[relay]
        h.down = True
        h.misses = max(h.misses, self.settings.dead_after)

    def up(self, relay: str) -> None:
        self.health[relay].down = False

    def homed(self, relay: str, now: float) -> None:
        """We are registered with ``relay`` as our home now."""
        self.home = relay
        self._homed_at = now
        self._better_since.clear()

    def _outcome(self, h: RelayHealth, ok: bool) -> None:
        h.outcomes.append(ok)
        while len(h.outcomes) > self.settings.loss_window:
            h.outcomes.popleft()

    # -- outputs --------------------------------------------------------------------------
    def ranked(self, exclude: Iterable[str] = ()) -> list[str]:
        """Candidates, best first: measured relays by SRTT, then unmeasured ones (in the
        order given); down relays left out."""
        skip = set(exclude)
        up = [(r, h) for r, h in self.health.items() if not h.down and r not in skip]
        measured = sorted((h.srtt, i, r) for i, (r, h) in enumerate(up) if h.srtt is not None)
        return [r for _, _, r in measured] + [r for r, h in up if h.srtt is None]

    def decide(self, now: float) -> Rehome | None:
        """What to do now: None (stay), or a :class:`Rehome`."""
        s = self.settings
        home = self.home
        if home is None:
            best = self.ranked()
            return Rehome(best[0], "no home relay", urgent=True) if best else None
        h = self.health[home]
        others = self.ranked(exclude=[home])
        if h.down:
            self._better_since.clear()
            if not others:
                return None
            why = f"home relay {home} is down ({h.misses} probes unanswered or closed)"
            return Rehome(others[0], why, urgent=True)
        if not others:
            return None
        half = max(1, s.loss_window // 2)
        loss = h.loss_ratio()
        if len(h.outcomes) >= half and loss > s.loss_threshold:
            calmer = [r for r in others if self.health[r].loss_ratio() < loss]
            if calmer:
                return Rehome(
                    calmer[0], f"home relay {home} lost {loss:.0%} of recent probes", urgent=False
                )
        return self._better_elsewhere(home, h, others, now)

    def _better_elsewhere(
        self, home: str, h: RelayHealth, others: list[str], now: float
    ) -> Rehome | None:
        s = self.settings
        if h.srtt is None:
            return None
        for r in list(self._better_since):
            if r not in others:
                del self._better_since[r]
        choice: Rehome | None = None
        for r in others:
            srtt = self.health[r].srtt
            if srtt is None:
                continue
            if srtt < h.srtt * s.better_ratio and h.srtt - srtt >= s.better_margin:
                since = self._better_since.setdefault(r, now)
                dwell_ok = self._homed_at is None or now - self._homed_at >= s.min_dwell
                if choice is None and now - since >= s.sustain and dwell_ok:
                    choice = Rehome(
                        r,
                        f"relay {r} RTT {srtt * 1000:.0f} ms beats home {home} "
                        f"{h.srtt * 1000:.0f} ms for {now - since:.0f} s",
                        urgent=False,
                    )
            else:
                self._better_since.pop(r, None)
        return choice

    def probe_due(self, relay: str, in_use: bool) -> float:
        """Seconds between probes of ``relay``."""
        s = self.settings
        return s.probe_interval if in_use or relay == self.home else s.idle_probe_interval
