"""Which stage a pair belongs to (HardStages.stage_of): the attribution the report and the
matrix's strategy counts rest on, including the two races the lab showed (a pinhole answering a
hole-punch check, the hard side's main socket being hit)."""

from __future__ import annotations

from collections import Counter
from typing import Any, cast

from punchthrough.netio import Address
from punchthrough.traversal.hard import HardStages

BASE: Address = ("10.0.1.2", 5000)
EASY: Address = ("203.0.113.1", 4000)  # the easy side's public endpoint
HARD_IP = "203.0.113.2"


class FakeAgent:
    base = BASE

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()
        self.forgotten: list[Address] = []

    def forget_socket(self, local: Address) -> None:
        self.forgotten.append(local)


def _stages() -> HardStages:
    return HardStages(cast(Any, FakeAgent()))


async def test_nothing_running_means_pairs_are_the_punchs() -> None:
    hs = _stages()
    assert hs.stage_of(BASE, EASY, "srflx") is None
    assert hs.stage_of(BASE, (HARD_IP, 31000), "prflx") is None
    # a probe's own kind always wins
    assert hs.stage_of(BASE, (HARD_IP, 31000), "birthday") == "birthday"
    assert hs.stage_of(BASE, (HARD_IP, 31000), "port-prediction") == "port-prediction"


async def test_hard_side_main_socket_hit_is_the_birthdays_even_after_it_won() -> None:
    hs = _stages()
    a = hs._new_attempt("birthday", "hard")
    a.target = EASY
    assert hs.stage_of(BASE, EASY, "srflx") == "birthday"
    assert hs.stage_of(BASE, ("203.0.113.1", 4001), "prflx") is None  # not the target
    assert hs.stage_of(("10.0.1.2", 6000), EASY, "srflx") is None  # not our main socket
    hs.succeeded("birthday", BASE)
    assert a.done and a.main_won and a.winner is None
    # the switch asks again after the attempt is done: the answer must not change
    assert hs.stage_of(BASE, EASY, "srflx") == "birthday"


async def test_a_lost_attempt_stops_claiming_pairs() -> None:
    hs = _stages()
    a = hs._new_attempt("birthday", "hard")
    a.target = EASY
    hs.ended("hangup")
    assert a.done and not a.main_won
    assert hs.stage_of(BASE, EASY, "srflx") is None


async def test_easy_side_claims_main_socket_pairs_to_the_hard_ip_while_attacking() -> None:
    hs = _stages()
    a = hs._new_attempt("birthday", "easy")
    a.target_ip = HARD_IP
    # a pinhole took the port of a srflx candidate the punch was checking (Linux fully-random)
    assert hs.stage_of(BASE, (HARD_IP, 40000), "srflx") == "birthday"
    assert hs.stage_of(BASE, ("203.0.113.9", 40000), "srflx") is None  # another IP
    hs.ended("hangup")
    assert hs.stage_of(BASE, (HARD_IP, 40000), "srflx") is None
