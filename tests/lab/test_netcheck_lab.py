"""netcheck on real kernel NATs: every profile classified right, and agreeing with coturn.

The reports are gathered once per module (all hosts in parallel: each host has its own router,
so runs cannot disturb each other) and each test checks one claim of the foundation issue.
"""

from __future__ import annotations

import json
import os
import random
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from punchthrough.lab import PROFILE_NAMES, PROFILES, Lab, netcheck_all, netcheck_argv
from punchthrough.lab import addresses as A

pytestmark = pytest.mark.lab

NETCHECK_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def ours(nat_lab: Lab) -> dict[str, dict[str, Any]]:
    return netcheck_all(nat_lab, nat_lab.stun_servers(), timeout=NETCHECK_TIMEOUT_S)


@pytest.fixture(scope="module")
def coturn(nat_lab: Lab) -> dict[str, dict[str, Any]]:
    return netcheck_all(nat_lab, nat_lab.coturn_servers(), timeout=NETCHECK_TIMEOUT_S)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_netcheck_classifies_profile(ours: dict[str, dict[str, Any]], profile: str) -> None:
    expected = PROFILES[profile]
    got = ours[profile]
    assert got["udp"] is expected.udp
    assert got["mapping"] == expected.mapping
    assert got["filtering"] == expected.filtering
    assert got["port_allocation"]["kind"] == expected.allocation, got["port_allocation"]
    if expected.allocation == "sequential":
        assert got["port_allocation"]["delta"] == 1
    assert got["preserves_port"] == expected.preserves_port
    if expected.udp:
        assert got["rfc5780_server"] == f"{A.OUR_STUN_PRIMARY}:{A.STUN_PORT}"
        assert len(got["mapped_endpoints"]) >= 5


def test_public_ip_is_the_routers_wan_address(
    nat_lab: Lab, ours: dict[str, dict[str, Any]]
) -> None:
    for name in PROFILE_NAMES:
        if PROFILES[name].udp:
            assert ours[name]["public_ip"] == nat_lab.host(name).public_ip, name


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_netcheck_against_coturn_gives_the_same_report(
    ours: dict[str, dict[str, Any]], coturn: dict[str, dict[str, Any]], profile: str
) -> None:
    a, b = ours[profile], coturn[profile]
    for key in ("udp", "public_ip", "mapping", "filtering", "preserves_port"):
        assert a[key] == b[key], key
    assert a["port_allocation"]["kind"] == b["port_allocation"]["kind"]
    assert a["port_allocation"]["delta"] == b["port_allocation"]["delta"]


def test_netcheck_agrees_with_turnutils_natdiscovery(
    nat_lab: Lab, ours: dict[str, dict[str, Any]]
) -> None:
    independent = nat_lab.natdiscovery_all()
    for name in PROFILE_NAMES:
        if not PROFILES[name].udp:
            continue
        theirs = independent[nat_lab.host(name).name]
        assert (ours[name]["mapping"], ours[name]["filtering"]) == (
            theirs.mapping,
            theirs.filtering,
        ), name


def test_turnutils_stunclient_reads_our_rfc5780_answers(nat_lab: Lab) -> None:
    # from the open host: a NAT would (rightly) filter the change-request answers and
    # turnutils_stunclient has no timeout of its own
    host = nat_lab.host("open")
    out = host.run(["turnutils_stunclient", A.OUR_STUN_PRIMARY], timeout=15, check=True).stdout
    assert f"UDP reflexive addr: {host.ip}:" in out
    assert f"Other addr: : {A.OUR_STUN_ALT}:{A.STUN_ALT_PORT}" in out
    assert out.count("RFC 5780 response") == 3


GARBAGE_SENDER = textwrap.dedent(
    """
    import os, random, socket, struct, sys
    rng = random.Random(int(sys.argv[3]))
    dest = (sys.argv[1], int(sys.argv[2]))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    cookie = struct.pack("!I", 0x2112A442)
    valid = struct.pack("!HH", 0x0001, 0) + cookie + os.urandom(12)
    for i in range(3000):  # bounded burst
        kind = i % 4
        if kind == 0:
            pkt = rng.randbytes(rng.randint(0, 1500))
        elif kind == 1:
            pkt = valid[: rng.randint(0, 19)]
        elif kind == 2:  # valid header, lying length, random body
            head = struct.pack("!HH", 0x0001, rng.randint(0, 65535)) + cookie
            pkt = head + rng.randbytes(12 + rng.randint(0, 64))
        else:  # attribute TLVs with absurd lengths
            body = b"".join(
                struct.pack("!HH", rng.randint(0, 65535), rng.randint(0, 65535)) + rng.randbytes(4)
                for _ in range(4)
            )
            pkt = struct.pack("!HH", 0x0001, len(body)) + cookie + rng.randbytes(12) + body
        s.sendto(pkt, dest)
    s.close()
    """
)


@pytest.fixture
def garbage_seed() -> Iterator[int]:
    yield int(os.environ.get("PUNCHTHROUGH_FUZZ_SEED", random.randrange(1 << 30)))


def test_stun_server_survives_garbage_burst_and_still_answers(
    nat_lab: Lab, garbage_seed: int
) -> None:
    host = nat_lab.host("open")
    for port in (A.STUN_PORT, A.STUN_ALT_PORT):
        res = host.run(
            [
                sys.executable,
                "-c",
                GARBAGE_SENDER,
                A.OUR_STUN_PRIMARY,
                str(port),
                str(garbage_seed),
            ],
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
    # every server process is still alive, and still answers a full netcheck correctly
    servers = [p for p in nat_lab.processes if p.ns == nat_lab.pub_ns]
    assert servers
    for proc in servers:
        assert proc.alive(), f"{proc.name} died (seed {garbage_seed})"
    res = host.run(netcheck_argv(nat_lab.stun_servers()), timeout=30, check=True)
    report = json.loads(res.stdout)
    assert report["udp"] is True, f"seed {garbage_seed}"
    assert report["mapping"] == "endpoint-independent"
    assert report["filtering"] == "endpoint-independent"
