"""The natdiscovery parser on output captured from the lab (no root needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from punchthrough.lab import PROFILES, parse_natdiscovery

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_parse_captured_output(profile: str) -> None:
    res = parse_natdiscovery((DATA / f"natdiscovery-{profile}.txt").read_text())
    expected = PROFILES[profile]
    assert (res.mapping, res.filtering) == (expected.mapping, expected.filtering)
    if not expected.udp:  # udp-blocked, tcp443-only, proxy-only: no STUN answer at all
        assert res.nat is None and res.reflexive == ()
    else:
        assert res.nat is expected.nat
        assert res.reflexive, "reflexive addresses parsed"


def test_parse_reflexive_addresses_of_address_dependent_mapping() -> None:
    res = parse_natdiscovery((DATA / "natdiscovery-adm.txt").read_text())
    mapping_ports = {port for _, port in res.reflexive[:3]}
    assert len(mapping_ports) == 2  # primary IP gets one port, the alternate IP another
    assert {ip for ip, _ in res.reflexive} == {"203.0.113.5"}


def test_parse_garbage_and_partial_output() -> None:
    assert parse_natdiscovery("").mapping == "unknown"
    assert parse_natdiscovery("\x00garbage\nNAT with\n").filtering == "unknown"
    only_mapping = "-= Mapping Behavior Discovery =-\nNAT with Address Dependent Mapping!\n"
    res = parse_natdiscovery(only_mapping)
    assert (res.mapping, res.filtering, res.nat) == ("address-dependent", "unknown", True)
    # a filtering verdict must not leak into the mapping result
    only_filtering = "-= Filtering Behavior Discovery =-\nNAT with Endpoint Independent Filtering!"
    res = parse_natdiscovery(only_filtering)
    assert (res.mapping, res.filtering) == ("unknown", "endpoint-independent")
