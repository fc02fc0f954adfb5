"""RFC 5780 verdicts from observations."""

from __future__ import annotations

from punchthrough.nat import Behavior, Sample, filtering_behavior, mapping_behavior

A, B = "198.51.100.1", "198.51.100.2"


def s(dest: tuple[str, int], port: int) -> Sample:
    return Sample(dest, ("203.0.113.1", port))


def test_endpoint_independent_mapping() -> None:
    got = mapping_behavior([s((A, 3478), 5), s((B, 3478), 5), s((B, 3479), 5), s((A, 3479), 5)])
    assert got is Behavior.ENDPOINT_INDEPENDENT


def test_address_dependent_mapping() -> None:
    got = mapping_behavior([s((A, 3478), 5), s((B, 3478), 6), s((B, 3479), 6), s((A, 3479), 5)])
    assert got is Behavior.ADDRESS_DEPENDENT


def test_address_and_port_dependent_mapping() -> None:
    got = mapping_behavior([s((A, 3478), 5), s((B, 3478), 6), s((B, 3479), 7)])
    assert got is Behavior.ADDRESS_AND_PORT_DEPENDENT


def test_mapping_unknown_without_enough_destinations() -> None:
    assert mapping_behavior([s((A, 3478), 5)]) is Behavior.UNKNOWN
    # two IPs differing without any same-IP pair: ADM or APDM cannot be told apart
    assert mapping_behavior([s((A, 3478), 5), s((B, 3478), 6)]) is Behavior.UNKNOWN


def test_mapping_from_plain_servers_on_distinct_ips() -> None:
    got = mapping_behavior([s((A, 3478), 5), s((B, 3478), 5)])
    assert got is Behavior.ENDPOINT_INDEPENDENT


def test_filtering_table() -> None:
    assert filtering_behavior(True, False) is Behavior.ENDPOINT_INDEPENDENT
    assert filtering_behavior(False, True) is Behavior.ADDRESS_DEPENDENT
    assert filtering_behavior(False, False) is Behavior.ADDRESS_AND_PORT_DEPENDENT
    assert filtering_behavior(None, None) is Behavior.UNKNOWN
    assert filtering_behavior(False, None) is Behavior.UNKNOWN
