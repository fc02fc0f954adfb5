"""Address families in candidates, pairs and path choice (pure functions)."""

from __future__ import annotations

import pytest

from punchthrough.endpoint.dualstack import bind_host, nat_samples, socket_families, usable_ips
from punchthrough.nat.behavior import Sample
from punchthrough.netio.udp import ipv6_interface_addresses, unmap_ip
from punchthrough.signal import Candidate
from punchthrough.traversal.candidates import describe, make_candidates, remote_candidates
from punchthrough.traversal.family import BadAddress, check_candidate_ip
from punchthrough.traversal.pairs import CandidatePair
from punchthrough.traversal.pathchoice import first_check_order, preferred_pair


def _cand(ip: str, kind: str = "host", prio: int = 100) -> Candidate:
    return Candidate(kind=kind, address=ip, port=4000, priority=prio, foundation="f")  # type: ignore[arg-type]


def _pair(remote: str, prio: int, rtt: float | None) -> CandidatePair:
    p = CandidatePair(("::", 4000), (remote, 5000), "host", prio)
    p.rtt = rtt
    return p


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("fe80::1%eth0", "zone id"),
        ("fe80::1", "link-local"),
        ("::ffff:192.0.2.1", "IPv4-mapped"),
        ("ff02::1", "unicast"),
        ("::", "unicast"),
        ("2001:db8::zz", "not an IP"),
        ("x" * 500, "not an IP"),
    ],
)
def test_unusable_candidate_addresses_are_typed_errors(ip: str, why: str) -> None:
    with pytest.raises(BadAddress, match=why):
        check_candidate_ip(ip)


def test_usable_addresses_and_their_family() -> None:
    assert check_candidate_ip("2001:db8:1::2") == "ipv6"
    assert check_candidate_ip("fd00::2") == "ipv6"  # ULA: same-site peers, like 10/8
    assert check_candidate_ip("203.0.113.7") == "ipv4"


def test_remote_candidates_keep_shared_families_and_report_rejects() -> None:
    cands = [_cand("203.0.113.2"), _cand("2001:db8:2::2", prio=200), _cand("fe80::9%lo")]
    rejected: list[str] = []
    both = remote_candidates(cands, None, rejected)
    assert [r.address[0] for r in both] == ["2001:db8:2::2", "203.0.113.2"]
    assert len(rejected) == 1 and "zone id" in rejected[0]
    only4 = remote_candidates(cands, {"ipv4"})
    assert [r.address[0] for r in only4] == ["203.0.113.2"]
    assert remote_candidates(cands, {"ipv6"})[0].address[0] == "2001:db8:2::2"


def test_make_candidates_offers_global_ipv6_host_addresses_only() -> None:
    cands = make_candidates(
        4000,
        host_ips=["10.0.1.2", "2001:db8:1::2", "fe80::1", "::1"],
        srflx=[(("2001:db8:1::2", 4000), "2001:db8:100::1"), (("203.0.113.1", 4000), "s")],
    )
    addrs = [(c.kind, c.address) for c in cands]
    assert ("host", "2001:db8:1::2") in addrs and ("host", "10.0.1.2") in addrs
    assert not any(a in ("fe80::1", "::1") for _, a in addrs)
    assert ("srflx", "203.0.113.1") in addrs


def test_socket_families_and_host_ips() -> None:
    assert socket_families("::") == {"ipv4", "ipv6"}
    assert socket_families("0.0.0.0") == {"ipv4"}
    assert socket_families("2001:db8::1") == {"ipv6"}
    ips = ["10.0.1.2", "2001:db8:1::2"]
    assert usable_ips(ips, "0.0.0.0") == ["10.0.1.2"]  # an IPv4 socket offers no IPv6
    assert usable_ips(ips, "::") == ips

    class V4Net:
        default_bind_host = "0.0.0.0"

    assert bind_host(V4Net(), None) == "0.0.0.0"  # type: ignore[arg-type]
    assert bind_host(V4Net(), "::") == "::"  # type: ignore[arg-type]
    assert bind_host(object(), None) == "0.0.0.0"  # type: ignore[arg-type]


def test_nat_samples_describe_the_ipv4_nat() -> None:
    v4 = Sample(("198.51.100.1", 3478), ("203.0.113.1", 5000))
    v6 = Sample(("2001:db8:100::1", 3478), ("2001:db8:1::2", 4000))
    assert nat_samples([v6, v4]) == [v4]
    assert nat_samples([v6]) == [v6]  # IPv6 only: its own samples


def test_path_choice_prefers_ipv6_within_ten_percent() -> None:
    v4 = _pair("203.0.113.2", 300, 0.040)
    assert preferred_pair([v4, _pair("2001:db8:2::2", 200, 0.043)]).remote[0] == "2001:db8:2::2"
    assert preferred_pair([v4, _pair("2001:db8:2::2", 200, 0.050)]) is v4  # 25% slower
    assert preferred_pair([v4, _pair("2001:db8:2::2", 200, None)]).remote[0].startswith("2001")
    only4 = [v4, _pair("192.0.2.9", 100, 0.001)]
    assert preferred_pair(only4) is v4  # one family: best priority, as before IPv6
    a, b = _pair("203.0.113.2", 5, None), _pair("2001:db8:2::2", 5, None)
    assert sorted([a, b], key=first_check_order) == [b, a]  # happy eyeballs: IPv6 first


def test_kernel_helpers(tmp_path: object) -> None:
    assert unmap_ip("::ffff:192.0.2.1") == "192.0.2.1"
    assert unmap_ip("2001:db8::1") == "2001:db8::1"
    assert describe(("2001:db8::1", 5)) == "[2001:db8::1]:5"
    assert describe(("192.0.2.1", 5)) == "192.0.2.1:5"
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "if_inet6"
    p.write_text(
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "20010db8000100000000000000000002 04 40 00 80     eth0\n"
        "20010db8000100000000000000000099 04 40 00 01     eth0\n"  # temporary
        "fe8000000000000000fc00fffe000001 04 40 20 80     eth0\n"
        "garbage\n"
    )
    assert ipv6_interface_addresses(str(p)) == ["2001:db8:1::2"]
    assert ipv6_interface_addresses(str(p) + ".missing") == []
