"""The simulator backend: one :func:`run_call_scenario` per trial, in virtual time.

RTT. The scenario gives every WAN access link (each NAT's WAN side, the relay's, the STUN
servers') the same one-way latency ``L`` and the LAN links none. A direct packet crosses two WAN
links (the caller's NAT's and the callee's NAT's), so the direct round trip is ``4 L``; a relayed
packet crosses four each way (peer -> relay -> peer), so the relayed round trip is ``8 L``. The
matrix's ``--rtt R`` sets ``L = R / 4``: the *direct* path has round-trip time exactly ``R``
and the relayed path ``2 R`` (a relay as far away as the peers are from each other).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from punchthrough.matrix.backend import TrialRunner
from punchthrough.matrix.model import TrialResult, trial_error, trial_from_call, trial_seed
from punchthrough.matrix.profiles import stacks_for
from punchthrough.scenario.call import run_call_scenario
from punchthrough.sim.nat import PROFILES as SIM_PROFILES

#: WAN links a direct round trip crosses (two each way); see the module docstring.
WAN_LINKS_PER_DIRECT_RTT: Final = 4
#: The relayed RTT as a multiple of the direct one in the scenario's topology.
RELAYED_RTT_FACTOR: Final = 2

DEFAULT_RTT_MS: Final = 40.0  # = `punchthrough demo`'s 10 ms one-way links
DEFAULT_DURATION_S: Final = 10.0
DEFAULT_TRIALS: Final = 200  # issue 7: "sim with 200 trials per cell"


def one_way_ms(rtt_ms: float) -> float:
    """Per-WAN-link one-way latency that gives a direct path of round-trip time ``rtt_ms``."""
    if rtt_ms < 0:
        raise ValueError("rtt_ms must be >= 0")
    return rtt_ms / WAN_LINKS_PER_DIRECT_RTT


def true_port_ranges(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """Per pair with exactly one endpoint-dependent NAT (the birthday's hard side): the size of
    that NAT's real port range, which the simulator knows and a peer can only estimate."""
    out: dict[tuple[str, str], int] = {}
    for a, b in pairs:
        hard = [
            cfg
            for cfg in (SIM_PROFILES.get(a), SIM_PROFILES.get(b))
            if cfg is not None and cfg.mapping != "eim"
        ]
        if len(hard) == 1:
            lo, hi = hard[0].port_range
            out[(a, b)] = hi - lo + 1
    return out


@dataclass
class SimBackend:
    """Runs each trial as a whole-system call in the simulator (deterministic per seed)."""

    rtt_ms: float = DEFAULT_RTT_MS
    duration: float = DEFAULT_DURATION_S
    pps: float = 50.0
    seed: int = 1
    jitter_ms: float = 0.0
    loss: float = 0.0
    name: str = "sim"
    #: ``--ipv6``: which peers are dual stack (:func:`punchthrough.matrix.profiles.stacks_for`).
    ipv6: str = "none"

    @property
    def notes(self) -> list[str]:
        lat = one_way_ms(self.rtt_ms)
        return [
            f"simulator, virtual time: {lat:g} ms one-way on every WAN link, so a direct path "
            f"has RTT {self.rtt_ms:g} ms and the relayed path {RELAYED_RTT_FACTOR * self.rtt_ms:g}"
            f" ms; {self.duration:g} s calls at {self.pps:g} frames/s; trial k of every cell "
            f"uses seed {self.seed}*{1_000_000}+k; peers' WAN links: jitter {self.jitter_ms:g} ms, "
            f"loss {self.loss:.1%}"
        ] + (
            [
                f"IPv6 ({self.ipv6}): dual-stack peers have a global IPv6 address behind an "
                "RFC 6092 stateful firewall (none behind 'open'); STUN server and relay are "
                "dual stack"
            ]
            if self.ipv6 != "none"
            else []
        )

    def run_trial(self, a: str, b: str, trial: int) -> TrialResult:
        seed = trial_seed(self.seed, trial)
        t0 = time.perf_counter()  # wall time of the run, for the report; the call is virtual
        try:
            result = run_call_scenario(
                a,
                b,
                seed=seed,
                duration=self.duration,
                pps=self.pps,
                one_way_ms=one_way_ms(self.rtt_ms),
                jitter_ms=self.jitter_ms,
                loss=self.loss,
                stacks=stacks_for(self.ipv6),
            )
        except Exception as exc:  # a failed trial is a data point, not the end of the matrix
            return trial_error(
                a,
                b,
                trial,
                f"{type(exc).__name__}: {exc}",
                seed=seed,
                wall_s=time.perf_counter() - t0,
            )
        return trial_from_call(
            a, b, trial, result["call"], seed=seed, wall_s=time.perf_counter() - t0
        )

    @contextlib.contextmanager
    def cell(self, a: str, b: str) -> Iterator[TrialRunner]:
        yield lambda trial: self.run_trial(a, b, trial)
