"""Stage choice over every pair of the lab/sim profiles: DESIGN's pair matrix, cell by cell."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Any

import pytest

from punchthrough.nat.summary import NatSummary, SummaryError
from punchthrough.signal import decode, encode
from punchthrough.signal.messages import NatReportSummary
from punchthrough.traversal.hardnat.plan import Budget, StagePlan, plan_stages

EI, AD, APD = "endpoint-independent", "address-dependent", "address-and-port-dependent"


def _nc(mapping: str, filtering: str, kind: str, delta: Any, ports: list[int]) -> dict[str, Any]:
    """A netcheck ``to_json()`` as the simulator's netcheck produces for each profile."""
    return {
        "udp": True,
        "public_ip": "203.0.113.1",
        "mapping": mapping,
        "filtering": filtering,
        "port_allocation": {
            "kind": kind,
            "delta": delta,
            "ports": ports,
            "confidence": 1.0,
            "port_range": [min(ports), max(ports)],
        },
        "preserves_port": kind == "port-preserving",
        "port_mapping": {"nat_pmp": False, "pcp": False, "upnp": False},
        "double_nat": None,
    }


PRESERVED = [34964] * 6
#: Expected netcheck summaries of the profiles (tests/sim/test_stun_netcheck.py EXPECTED).
PROFILES: dict[str, dict[str, Any]] = {
    "open": _nc(EI, EI, "port-preserving", 0, PRESERVED),
    "eim-eif": _nc(EI, EI, "port-preserving", 0, PRESERVED),
    "eim-adf": _nc(EI, AD, "port-preserving", 0, PRESERVED),
    "eim-apdf": _nc(EI, APD, "port-preserving", 0, PRESERVED),
    "adm": _nc(AD, APD, "random", None, [23480, 22709, 24021, 21475, 21475, 23480]),
    "apdm-sequential": _nc(APD, APD, "sequential", 1, list(range(40277, 40283))),
    "apdm-random": _nc(APD, APD, "random", None, [35063, 54293, 18597, 38373, 62438, 59732]),
    "udp-blocked": {
        "udp": False,
        "public_ip": None,
        "mapping": "unknown",
        "filtering": "unknown",
        "port_allocation": {"kind": "unknown", "delta": None, "ports": [], "port_range": None},
        "port_mapping": {"nat_pmp": False, "pcp": False, "upnp": False},
    },
}
NAMES = list(PROFILES)
EASY = {"open", "eim-eif", "eim-adf"}
HARD_RANDOM = {"adm", "apdm-random"}


def expected(a: str, b: str) -> str:
    """DESIGN's matrix (plus adm, which netcheck reports as dependent + random)."""
    if "udp-blocked" in (a, b):
        return "relay"
    if a in EASY or b in EASY:
        return "punch"
    pair = {a, b}
    if pair == {"eim-apdf"}:
        return "punch"
    if "eim-apdf" in pair:
        other = (pair - {"eim-apdf"}).pop()
        return "prediction" if other == "apdm-sequential" else "birthday"
    if pair == {"apdm-sequential"}:
        return "prediction-mutual"
    return "relay"


def summary(name: str) -> NatSummary:
    return NatSummary.from_netcheck_json(PROFILES[name])


def by_stage(plans: list[StagePlan]) -> dict[str, StagePlan]:
    return {p.stage: p for p in plans}


@pytest.mark.parametrize(("a", "b"), list(itertools.product(NAMES, NAMES)))
def test_matrix_cell(a: str, b: str) -> None:
    plans = plan_stages(summary(a), summary(b))
    assert [p.stage for p in plans] == [
        "port-mapping",
        "hole-punch",
        "port-prediction",
        "birthday",
        "relay",
    ]
    st = by_stage(plans)
    want = expected(a, b)
    assert st["relay"].runs
    assert not st["port-mapping"].runs  # no profile offers port mapping
    assert st["hole-punch"].runs == (want != "relay" or "udp-blocked" not in (a, b))
    assert st["port-prediction"].runs == want.startswith("prediction")
    assert st["birthday"].runs == (want == "birthday")
    for p in plans:
        assert p.reason  # every decision says why
    if want == "punch":
        assert st["hole-punch"].probability == 1.0
        assert "not needed" in st["birthday"].reason
    if want == "prediction":
        pp = st["port-prediction"]
        assert pp.role == ("predicted" if a == "apdm-sequential" else "predicting")
        assert pp.needed and pp.after == ()
        assert "port prediction" in st["birthday"].reason
    if want == "prediction-mutual":
        assert st["port-prediction"].role == "mutual" and "flaky" in st["port-prediction"].reason
    if want == "birthday":
        bd = st["birthday"]
        hard = a if a in HARD_RANDOM else b
        assert bd.role == ("hard" if a == hard else "easy")
        assert bd.params["hard"] == ("local" if a == hard else "remote")
        size = summary(hard).range_size()
        assert bd.params["range_size"] == size
        assert bd.probability == pytest.approx(1 - math.exp(-256 * 1024 / size))
        assert "1 - exp(-n*m/N)" in bd.reason
    if want == "relay" and "udp-blocked" not in (a, b):
        assert "staying on the relay" in st["birthday"].reason
        assert "stays on the relay" in st["relay"].reason
        assert st["hole-punch"].probability == 0.0
    if "udp-blocked" in (a, b):
        assert not st["hole-punch"].runs and "UDP is blocked" in st["relay"].reason


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(NAMES, 2)))
def test_matrix_is_symmetric(a: str, b: str) -> None:
    """Swapping sides swaps roles and nothing else."""
    mirror = {"hard": "easy", "easy": "hard", "predicted": "predicting", "predicting": "predicted"}
    ab, ba = (
        by_stage(plan_stages(summary(a), summary(b))),
        by_stage(plan_stages(summary(b), summary(a))),
    )
    for stage in ab:
        assert ab[stage].action == ba[stage].action
        assert ab[stage].probability == ba[stage].probability
        if ab[stage].role is not None:
            assert ba[stage].role == mirror.get(ab[stage].role, ab[stage].role)


def test_both_random_states_probability() -> None:
    st = by_stage(plan_stages(summary("apdm-random"), summary("apdm-random")))
    bd = st["birthday"]
    assert not bd.runs and bd.probability is not None and bd.probability < 1e-3
    assert "P ~ n*m/(N1*N2)" in bd.reason and "staying on the relay" in bd.reason


def test_port_mapping_on_the_hard_side_makes_birthday_unneeded() -> None:
    hard = replace(summary("apdm-random"), port_mapping=("pcp",))
    st = by_stage(plan_stages(hard, summary("eim-apdf")))
    assert st["port-mapping"].runs and "pcp" in st["port-mapping"].reason
    assert st["hole-punch"].probability == 1.0
    assert not st["birthday"].runs and "not needed" in st["birthday"].reason
    # ... and when the mapping fails, re-planning without it brings the birthday attack back.
    st2 = by_stage(plan_stages(hard.without_port_mapping(), summary("eim-apdf")))
    assert st2["birthday"].runs and not st2["port-mapping"].runs


def test_port_mapping_rescues_both_random() -> None:
    st = by_stage(
        plan_stages(
            replace(summary("apdm-random"), port_mapping=("nat-pmp",)), summary("apdm-random")
        )
    )
    assert st["port-mapping"].runs and st["hole-punch"].probability == 1.0


def test_unknown_filtering_runs_birthday_after_the_punch() -> None:
    easy = replace(summary("eim-apdf"), filtering="unknown")
    st = by_stage(plan_stages(easy, summary("apdm-random")))
    assert st["hole-punch"].probability is None
    assert st["birthday"].runs and st["birthday"].after == ("hole-punch",)
    assert not st["birthday"].needed


def test_unknown_filtering_runs_the_cheap_prediction_alongside_the_punch() -> None:
    """A first summary says EIM with filtering still unknown: the punch may suffice, but
    prediction (a few samples and checks) does not wait for the verdict; both roles agree."""
    easy = replace(summary("eim-apdf"), filtering="unknown")
    seq = summary("apdm-sequential")
    for local, remote, role in ((seq, easy, "predicted"), (easy, seq, "predicting")):
        st = by_stage(plan_stages(local, remote))
        pp = st["port-prediction"]
        assert pp.runs and pp.role == role and pp.after == ()
        assert not pp.needed  # the punch may still connect the pair: not known to be needed
        assert "alongside the hole punch" in pp.reason
        assert not st["birthday"].runs  # and the expensive one is not chosen instead
    # with the filtering known the plan is the full one: needed (APDF) or not run (EIF)
    full = by_stage(plan_stages(seq, summary("eim-apdf")))["port-prediction"]
    assert full.runs and full.needed and full.after == ()
    assert not by_stage(plan_stages(seq, summary("eim-eif")))["port-prediction"].runs
    # an unknown mapping on the sequential side is not this case: it waits for the punch
    unsure = replace(seq, mapping="unknown")
    assert by_stage(plan_stages(unsure, easy))["port-prediction"].after == ("hole-punch",)


def test_unknown_mapping_both_sides() -> None:
    u = replace(summary("eim-apdf"), mapping="unknown", allocation="unknown")
    st = by_stage(plan_stages(u, u))
    assert st["hole-punch"].runs and st["hole-punch"].probability is None
    assert not st["birthday"].runs and "unknown" in st["birthday"].reason


def test_budget_threshold_and_switches() -> None:
    hard, easy = summary("apdm-random"), summary("eim-apdf")
    small = Budget(birthday_sockets=1, birthday_probes=1, min_birthday_probability=0.5)
    bd = by_stage(plan_stages(hard, easy, budget=small))["birthday"]
    assert not bd.runs and "below" in bd.reason and bd.probability is not None
    off = by_stage(plan_stages(hard, easy, budget=Budget(allow_birthday=False)))["birthday"]
    assert not off.runs and "disabled" in off.reason
    with pytest.raises(ValueError):
        Budget(birthday_rate=500)
    with pytest.raises(ValueError):
        Budget(birthday_sockets=5000)


def test_small_range_caps_probes() -> None:
    """The adm profile's 4096-port range: the plan never asks for more probes than ports."""
    hard = replace(summary("adm"), port_range=(20000, 20100), ports=(20000, 20050, 20100))
    bd = by_stage(plan_stages(hard, summary("eim-apdf")))["birthday"]
    assert bd.runs and isinstance(bd.params["probes"], int)
    assert bd.params["probes"] <= bd.params["range_size"]  # type: ignore[operator]


# -- converters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_signal_round_trip(name: str) -> None:
    s = summary(name)
    msg = decode(encode(s.to_signal()))
    assert isinstance(msg, NatReportSummary)
    back = NatSummary.from_signal(msg)
    assert replace(back, ports=s.ports) == s
    # The peer's copy (no samples) plans the same stages.
    for other in NAMES:
        assert [p.action for p in plan_stages(summary(other), back)] == [
            p.action for p in plan_stages(summary(other), s)
        ]


def test_netcheck_port_mapping_and_double_nat() -> None:
    d = dict(PROFILES["apdm-random"])
    d["port_mapping"] = {"nat_pmp": True, "pcp": True, "upnp": False}
    assert NatSummary.from_netcheck_json(d).port_mapping == ("nat-pmp", "pcp")
    d["double_nat"] = True
    assert NatSummary.from_netcheck_json(d).port_mapping == ()


def test_real_netcheck_report_converts() -> None:
    from punchthrough.scenario.netcheck import netcheck_world

    s = NatSummary.from_netcheck_json(netcheck_world("apdm-sequential", seed=2).to_json())
    assert (s.mapping, s.allocation, s.delta) == (APD, "sequential", 1)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(udp="yes"),
        lambda d: d.update(mapping="symmetric"),
        lambda d: d.update(port_allocation="random"),
        lambda d: d["port_allocation"].update(kind="chaotic"),
        lambda d: d["port_allocation"].update(kind="sequential", delta=0),
        lambda d: d["port_allocation"].update(kind="sequential", delta="1"),
        lambda d: d["port_allocation"].update(ports=[1, 70000]),
        lambda d: d["port_allocation"].update(ports="1,2"),
        lambda d: d["port_allocation"].update(port_range=[5, 2]),
        lambda d: d["port_allocation"].update(port_range=[5]),
        lambda d: d.update(public_ip=5),
        lambda d: d.update(public_ip="not an ip"),
        lambda d: d.update(port_mapping=[]),
    ],
)
def test_malformed_netcheck_json_is_one_typed_error(mutate: Any) -> None:
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PROFILES["apdm-random"].items()}
    mutate(d)
    with pytest.raises(SummaryError):
        NatSummary.from_netcheck_json(d)


def test_range_size_estimate() -> None:
    s = summary("apdm-random")
    # 6 samples spanning 43841 ports: (max-min) * 7/5.
    assert s.range_size() == round(43841 * 7 / 5)
    assert summary("eim-apdf").range_size() == 64512  # one port seen: the default range
