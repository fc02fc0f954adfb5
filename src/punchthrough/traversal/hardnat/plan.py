"""Stage choice for ``race()``: which waterfall stages can work for this pair of NATs, and how.

Pure: both sides' :class:`~punchthrough.nat.summary.NatSummary` in, one :class:`StagePlan` per
stage out (in the design's order), each ``run`` or ``skip`` with a reason a human can read in the
traversal report, the local side's role in an asymmetric stage and the success probability where
one can be computed. This encodes DESIGN's pair matrix (the tests check every cell):

- A port mapping on either side makes that side endpoint-independent with endpoint-independent
  filtering (the gateway admits anyone to a mapped port): most cells go direct by hole punch.
- Hole punch: always run while both have UDP (a few packets; it also learns peer-reflexive
  addresses). It is *expected* to work when both map endpoint-independently, or when one does
  and its filtering admits the other's unannounced ports (EIF, or ADF since it sent to that IP).
- Port prediction: one side endpoint-dependent and sequential, the other endpoint-independent
  (behind APDF, or unknown filtering); both sequential is attempted and called flaky.
- Birthday: one side endpoint-dependent and random (or of unknown allocation: a birthday attack
  does not care how ports are chosen), the other endpoint-independent. Skipped with the number
  when both are random: P ~ n*m/(N1*N2).
- Relay: always; it carries the call from the start.

A stage whose need is uncertain (a side's mapping or filtering unknown) runs ``after`` the hole
punch failed instead of alongside it, so an expensive birthday attack is not started for a pair
the punch may connect anyway. One exception: port prediction when only the easy side's filtering
is unknown (a peer's first summary, sent before its filtering test ends). It costs a few samples
and checks, so it runs alongside the punch: waiting would cost the filtering test's 0.3-0.5 s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from punchthrough.nat.summary import AD, APD, EI, NatSummary
from punchthrough.traversal.hardnat.stats import poisson_cdf, success_probability
from punchthrough.traversal.reasons import Why

Stage = Literal["port-mapping", "hole-punch", "port-prediction", "birthday", "relay"]
STAGE_ORDER: Final[tuple[Stage, ...]] = (
    "port-mapping",
    "hole-punch",
    "port-prediction",
    "birthday",
    "relay",
)
Action = Literal["run", "skip"]
Side = Literal["local", "remote"]
SIDES: Final[tuple[Side, Side]] = ("local", "remote")
HARD_STAGES: Final[tuple[Stage, Stage]] = ("port-prediction", "birthday")
#: The local side's part in an asymmetric stage. Birthday: ``hard`` opens many sockets, ``easy``
#: probes. Prediction: ``predicted`` (sequential side: opens the target flow), ``predicting``
#: (probes the predicted window), ``mutual`` (both sequential: both do both).
Role = Literal["hard", "easy", "predicted", "predicting", "mutual"]

#: DESIGN / PRD phase C defaults; the caps bound sockets (file descriptors) and probes.
BIRTHDAY_SOCKETS: Final = 256
BIRTHDAY_SOCKETS_CAP: Final = 1024  # = signal.MAX_ACCEPTOR_PORTS
BIRTHDAY_PROBES: Final = 1024
BIRTHDAY_PROBES_CAP: Final = 4096
#: DESIGN: "paced (100-200/s)".
BIRTHDAY_RATE: Final = 150.0
BIRTHDAY_RATE_RANGE: Final = (100.0, 200.0)


@dataclass(frozen=True, slots=True)
class Budget:
    """What the hard stages may spend (and what the planner assumes about the unknown)."""

    birthday_sockets: int = BIRTHDAY_SOCKETS
    birthday_probes: int = BIRTHDAY_PROBES
    birthday_rate: float = BIRTHDAY_RATE
    #: Hard stop for one attack (seconds); 1024 probes at 150/s take ~6.8 s.
    birthday_max_duration: float = 15.0
    #: Below this estimated probability the birthday attack is not worth its sockets.
    min_birthday_probability: float = 0.05
    allow_birthday: bool = True
    allow_prediction: bool = True
    #: Background flows per second assumed on a sequential NAT when nothing was measured.
    assumed_churn: float = 1.0
    #: Seconds between the predicted side's last sample and its target flow (a burst: ~ms).
    prediction_gap: float = 0.01
    #: Ports (in steps of delta) the predicting side checks beyond the centre.
    prediction_steps: int = 8

    def __post_init__(self) -> None:
        if not 1 <= self.birthday_sockets <= BIRTHDAY_SOCKETS_CAP:
            raise ValueError(f"birthday_sockets must be 1..{BIRTHDAY_SOCKETS_CAP}")
        if not 1 <= self.birthday_probes <= BIRTHDAY_PROBES_CAP:
            raise ValueError(f"birthday_probes must be 1..{BIRTHDAY_PROBES_CAP}")
        lo, hi = BIRTHDAY_RATE_RANGE
        if not lo <= self.birthday_rate <= hi:
            raise ValueError(f"birthday_rate must be {lo:g}..{hi:g} per second")
        if self.birthday_max_duration <= 0 or self.prediction_gap < 0:
            raise ValueError("durations must be positive")
        if self.assumed_churn < 0 or self.prediction_steps < 0:
            raise ValueError("assumed_churn and prediction_steps must be >= 0")


@dataclass(frozen=True, slots=True)
class StagePlan:
    """The decision for one stage."""

    stage: Stage
    action: Action
    reason: str
    #: What ``reason`` says, for code (the prose is for the report).
    code: Why = Why.NONE
    role: Role | None = None
    #: Estimated chance the stage connects on its own (None: cannot be estimated).
    probability: float | None = None
    #: Stages that must have failed before this one starts (run in parallel when empty).
    after: tuple[Stage, ...] = ()
    #: The pair needs this stage (the hole punch is not expected to work).
    needed: bool = False
    params: Mapping[str, object] = field(default_factory=dict)

    @property
    def runs(self) -> bool:
        return self.action == "run"


def _other(side: Side) -> Side:
    return "remote" if side == "local" else "local"


def _short(s: NatSummary) -> str:
    if not s.udp:
        return "UDP blocked"
    ab = {EI: "EI", AD: "AD", APD: "APD", "unknown": "?"}
    alloc = s.allocation
    if alloc == "sequential" and s.delta:
        alloc = f"sequential:{s.delta:+d}"  # type: ignore[assignment]
    pm = f", port mapping {'/'.join(s.port_mapping)}" if s.port_mapping else ""
    return f"{ab[s.mapping]}M+{ab[s.filtering]}F {alloc}{pm}"


def _punch_verdict(sides: dict[Side, NatSummary]) -> tuple[bool | None, str]:
    """Is the plain hole punch expected to connect? (verdict, why)."""
    loc, rem = sides["local"], sides["remote"]
    if loc.endpoint_independent and rem.endpoint_independent:
        return True, "both sides map endpoint-independently: each srflx candidate is reachable"
    eim = [s for s in SIDES if sides[s].endpoint_independent]
    dep = [s for s in SIDES if sides[s].dependent]
    if len(eim) == 1:
        e: Side = eim[0]
        h = _other(e)
        if not sides[h].dependent:
            return None, f"{h} mapping unknown"
        filt = sides[e].effective_filtering
        if filt in (EI, AD):
            kind = "EIF" if filt == EI else "ADF (it sent to that IP)"
            return True, (
                f"{h} checks arrive from unannounced ports, {e} filtering {kind} admits them and "
                f"answers the peer-reflexive address"
            )
        if filt == APD:
            return False, (
                f"{e} filtering is address-and-port-dependent: it drops the {h} side's checks, "
                f"which come from ports nobody announced ({h} maps endpoint-dependently)"
            )
        return None, f"{e} filtering unknown"
    if len(dep) == 2:
        return False, "both sides map endpoint-dependently: no check comes from an announced port"
    return None, "mapping unknown on a side"


def plan_stages(
    local: NatSummary, remote: NatSummary, *, budget: Budget | None = None
) -> list[StagePlan]:
    """Choose the waterfall's stages for this pair (module docstring). Order: STAGE_ORDER."""
    b = budget if budget is not None else Budget()
    sides: dict[Side, NatSummary] = {"local": local, "remote": remote}
    pair = f"local {_short(local)} vs remote {_short(remote)}"
    out: dict[Stage, StagePlan] = {}

    blocked = [s for s in SIDES if not sides[s].udp]
    if blocked:
        why = f"UDP is blocked on the {' and '.join(blocked)} side: no direct path can exist"
        for st in STAGE_ORDER[:-1]:
            out[st] = StagePlan(st, "skip", why, Why.UDP_BLOCKED)
        out["relay"] = StagePlan("relay", "run", f"the only path ({pair}): {why}", Why.UDP_BLOCKED)
        return [out[s] for s in STAGE_ORDER]

    # 1. port mapping
    mapped = [s for s in SIDES if sides[s].port_mapping]
    if mapped:
        offers = "; ".join(f"{s}: {'/'.join(sides[s].port_mapping)}" for s in mapped)
        out["port-mapping"] = StagePlan(
            "port-mapping",
            "run",
            f"port mapping offered ({offers}): a mapped endpoint admits any peer",
            Why.PORT_MAPPING_OFFERED,
            probability=1.0,
        )
    else:
        out["port-mapping"] = StagePlan(
            "port-mapping",
            "skip",
            "no port-mapping gateway answered on either side",
            Why.NO_PORT_MAPPING,
        )

    # 2. hole punch
    ok, why = _punch_verdict(sides)
    if ok is True:
        punch_reason = f"expected to work: {why}"
    elif ok is False:
        punch_reason = f"not expected to work alone ({why}); run: cheap, learns peer-reflexive"
    else:
        punch_reason = f"may work ({why}); run: cheap, and the only way to find out"
    out["hole-punch"] = StagePlan(
        "hole-punch",
        "run",
        punch_reason,
        Why.PUNCH_EXPECTED
        if ok is True
        else (Why.PUNCH_NOT_EXPECTED if ok is False else Why.PUNCH_MAY_WORK),
        probability=1.0 if ok is True else (0.0 if ok is False else None),
    )

    # 3./4. the hard stages
    if ok is True:
        for st in HARD_STAGES:
            out[st] = StagePlan(st, "skip", f"not needed: {why}", Why.PUNCH_SUFFICES)
    else:
        out.update(_hard_stages(sides, b, punch_failed=ok is False, punch_why=why))

    # 5. relay
    direct = [p for p in out.values() if p.runs and p.stage != "hole-punch"] or (
        [out["hole-punch"]] if ok is not False else []
    )
    if direct:
        relay_reason = "carries the call from the start; direct stages upgrade it"
        relay_code = Why.RELAY_FIRST
    else:
        bd = out["birthday"]
        hard = bd if bd.code is Why.STAYS_ON_RELAY else out["port-prediction"]
        relay_reason = f"the call stays on the relay ({pair}): {hard.reason}"
        relay_code = Why.STAYS_ON_RELAY
    out["relay"] = StagePlan("relay", "run", relay_reason, relay_code, probability=1.0)
    return [out[s] for s in STAGE_ORDER]


def _hard_stages(
    sides: dict[Side, NatSummary], b: Budget, *, punch_failed: bool, punch_why: str
) -> dict[Stage, StagePlan]:
    after: tuple[Stage, ...] = () if punch_failed else ("hole-punch",)
    cond = "" if punch_failed else f"if the hole punch fails ({punch_why}): "
    eim = [s for s in SIDES if sides[s].endpoint_independent]
    if len(eim) == 1:
        e: Side = eim[0]
        h = _other(e)
        hard = sides[h]
        if sides[e].effective_filtering in (EI, AD):
            # Only reachable when h's mapping is unknown: a dependent h would punch.
            why = f"{e} filtering admits the {h} side's new ports: the hole punch suffices"
            return {
                "port-prediction": StagePlan(
                    "port-prediction", "skip", f"not needed: {why}", Why.PUNCH_SUFFICES
                ),
                "birthday": StagePlan("birthday", "skip", f"not needed: {why}", Why.PUNCH_SUFFICES),
            }
        if hard.allocation == "sequential" and hard.delta:
            p_after, p_cond = after, cond
            if hard.dependent and not punch_failed:
                # Only the e side's filtering is unknown (its test may still run): whether the
                # punch suffices is open, but prediction costs a few samples and checks, so it
                # races the punch instead of waiting for the verdict (or the round's failure).
                p_after = ()
                p_cond = (
                    f"alongside the hole punch ({punch_why}: it may suffice; prediction is cheap): "
                )
            return {
                "port-prediction": _prediction_single(h, e, hard, b, p_after, p_cond, punch_failed),
                "birthday": StagePlan(
                    "birthday",
                    "skip",
                    f"the {h} NAT allocates sequentially (delta {hard.delta:+d}): port "
                    f"prediction finds its port with a handful of checks instead of "
                    f"{b.birthday_sockets} sockets",
                    Why.PREDICTION_CHEAPER,
                ),
            }
        maps = (
            "maps endpoint-dependently"
            if hard.mapping in (AD, APD)
            else "has an unknown mapping (no report, or fewer than two servers saw it)"
        )
        why_alloc = (
            "its ports are random"
            if hard.allocation == "random"
            else f"its allocation is {hard.allocation}"
        )
        return {
            "port-prediction": StagePlan(
                "port-prediction",
                "skip",
                f"the {h} NAT {maps} and {why_alloc}: nothing to predict",
                Why.NOTHING_TO_PREDICT,
            ),
            "birthday": _birthday(h, e, hard, b, after, cond, punch_failed),
        }
    # Neither side endpoint-independent.
    loc, rem = sides["local"], sides["remote"]
    if not (loc.dependent and rem.dependent):
        why = "mapping unknown on both sides" if not eim else "mapping unknown on a side"
        return {
            st: StagePlan(
                st,
                "skip",
                f"{why}: no hard-NAT stage can be chosen; hole punch only",
                Why.MAPPING_UNKNOWN,
            )
            for st in HARD_STAGES
        }
    n, m = b.birthday_sockets, b.birthday_probes
    n1, n2 = loc.range_size(), rem.range_size()
    p_both = min(1.0, n * m / (n1 * n2))
    seq = [s for s in SIDES if sides[s].allocation == "sequential"]
    mutual = len(seq) == 2 and b.allow_prediction
    birthday_skip = StagePlan(
        "birthday",
        "skip",
        "both sides map endpoint-dependently: the birthday attack needs one "
        f"endpoint-independent side (both-random P ~ n*m/(N1*N2) = {p_both:.2g} with n={n}, "
        f"m={m}, N1={n1}, N2={n2})" + ("" if mutual else "; staying on the relay"),
        Why.BOTH_DEPENDENT if mutual else Why.STAYS_ON_RELAY,
        probability=p_both,
    )
    if mutual:
        mean = b.assumed_churn * b.prediction_gap
        # Mutual prediction connects only when both churn guesses are right (see prediction.py).
        prob = poisson_cdf(0, mean) ** 2
        return {
            "port-prediction": StagePlan(
                "port-prediction",
                "run",
                "both sides sequential: mutual prediction with matched send order; flaky "
                "(every churned port on either NAT between the probe and the sweep breaks it)",
                Why.STAGE_RUNS,
                role="mutual",
                probability=prob,
                needed=True,
                params={"local_delta": loc.delta, "remote_delta": rem.delta},
            ),
            "birthday": birthday_skip,
        }
    if len(seq) == 1:
        s: Side = seq[0]
        r = _other(s)
        why = (
            f"the {r} NAT's ports are {sides[r].allocation} and the {s} side's probes each take "
            f"a new port on its sequential NAT: neither prediction nor the birthday attack "
            f"applies (P ~ {p_both:.2g}); staying on the relay"
        )
        return {
            "port-prediction": StagePlan("port-prediction", "skip", why, Why.STAYS_ON_RELAY),
            "birthday": birthday_skip,
        }
    why = (
        f"both sides map endpoint-dependently with {loc.allocation}/{rem.allocation} ports: "
        f"P ~ n*m/(N1*N2) = {p_both:.2g} (n={n}, m={m}, N1={n1}, N2={n2}); staying on the relay"
    )
    return {
        "port-prediction": StagePlan("port-prediction", "skip", why, Why.STAYS_ON_RELAY),
        "birthday": StagePlan("birthday", "skip", why, Why.STAYS_ON_RELAY, probability=p_both),
    }


def _prediction_single(
    h: Side,
    e: Side,
    hard: NatSummary,
    b: Budget,
    after: tuple[Stage, ...],
    cond: str,
    needed: bool,
) -> StagePlan:
    if not b.allow_prediction:
        return StagePlan("port-prediction", "skip", "disabled by the budget", Why.DISABLED)
    mean = b.assumed_churn * b.prediction_gap
    prob = poisson_cdf(b.prediction_steps, mean)
    role: Role = "predicted" if h == "local" else "predicting"
    return StagePlan(
        "port-prediction",
        "run",
        f"{cond}the {h} NAT allocates sequentially (delta {hard.delta:+d}) and the {e} side maps "
        f"endpoint-independently: {e} checks the predicted window of the {h} side's next port",
        Why.STAGE_RUNS,
        role=role,
        probability=prob,
        after=after,
        needed=needed,
        params={
            "predicted": h,
            "predicting": e,
            "delta": hard.delta,
            "steps": b.prediction_steps,
            "assumed_churn": b.assumed_churn,
        },
    )


def _birthday(
    h: Side,
    e: Side,
    hard: NatSummary,
    b: Budget,
    after: tuple[Stage, ...],
    cond: str,
    needed: bool,
) -> StagePlan:
    n, m = b.birthday_sockets, b.birthday_probes
    size = hard.range_size()
    m = min(m, size)
    prob = success_probability(n, m, size)
    params: dict[str, object] = {
        "hard": h,
        "easy": e,
        "sockets": n,
        "probes": m,
        "range_size": size,
        "scan_range": hard.port_range,
        "rate": b.birthday_rate,
        "max_duration": b.birthday_max_duration,
    }
    formula = f"P = 1 - exp(-n*m/N) = {prob:.3f} (n={n}, m={m}, N={size})"
    if not b.allow_birthday:
        return StagePlan(
            "birthday",
            "skip",
            f"disabled by the budget ({formula})",
            Why.DISABLED,
            probability=prob,
        )
    if prob < b.min_birthday_probability:
        return StagePlan(
            "birthday",
            "skip",
            f"{formula} is below {b.min_birthday_probability:g}: not worth {n} sockets",
            Why.UNLIKELY,
            probability=prob,
            params=params,
        )
    role: Role = "hard" if h == "local" else "easy"
    return StagePlan(
        "birthday",
        "run",
        f"{cond}the {h} NAT maps endpoint-dependently ({hard.allocation} ports) and the {e} "
        f"side maps endpoint-independently: {h} opens {n} pinholes towards {e}, {e} probes {m} "
        f"ports of the {h} IP; {formula}",
        Why.STAGE_RUNS,
        role=role,
        probability=prob,
        after=after,
        needed=needed,
        params=params,
    )


#: Why every direct stage is skipped when the peers share no address family.
NO_COMMON_FAMILY_REASON: Final = (
    "no address family in common (one side IPv6 only, the other IPv4 only)"
)


def relay_only(plans: Sequence[StagePlan]) -> list[StagePlan]:
    """``plans`` for peers with no address family in common: no direct stage can run."""
    out: list[StagePlan] = []
    for p in plans:
        if p.stage == "relay":
            text = f"the call stays on the relay: {NO_COMMON_FAMILY_REASON}"
            out.append(StagePlan("relay", "run", text, Why.STAYS_ON_RELAY, probability=1.0))
        elif p.stage == "hole-punch":
            out.append(p)  # the round runs and reports that no pair exists
        else:
            out.append(StagePlan(p.stage, "skip", NO_COMMON_FAMILY_REASON, Why.NO_COMMON_FAMILY))
    return out
