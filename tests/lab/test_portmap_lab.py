"""PortMapper against miniupnpd on a real kernel NAT: NAT-PMP, PCP and UPnP, each on its own.

miniupnpd serves all three at once (one config); "each on its own" means each test enables only
that client in the mapper. A third party on the public segment (the lab's pub namespace) must
reach the host through the mapped port, and the mapping must be gone after close.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from punchthrough.lab import Host, HostSpec, Lab, RouterOptions
from punchthrough.lab.proc import run

pytestmark = pytest.mark.lab

#: Runs inside the host namespace: map, report, wait for a knock, close (delete), report.
HOST_SCRIPT = r"""
import asyncio, json, sys
from punchthrough.netio import UdpNetwork
from punchthrough.portmap import PortMapper

proto, gateway, local_ip = sys.argv[1:4]

def emit(**kw):
    print(json.dumps(kw), flush=True)

async def main():
    net = UdpNetwork()
    sock = await net.bind("0.0.0.0", 0)
    knocks = asyncio.Queue()
    sock.set_receiver(lambda d, a: knocks.put_nowait((d, a)))
    loop = asyncio.get_running_loop()
    try:
        mapper = PortMapper(net, gateway, sock.local_address[1], local_ip=local_ip,
                            lifetime=600, nat_pmp=proto == "nat-pmp", pcp=proto == "pcp",
                            upnp=proto == "upnp")
        t0 = loop.time()
        await mapper.probe()
        probe_ms = (loop.time() - t0) * 1000
        async with mapper:  # start() again is cheap: already probed, maps now
            m = mapper.mapping
            emit(port=sock.local_address[1], probe_ms=probe_ms,
                 total_ms=(loop.time() - t0) * 1000,
                 answered=mapper.report.answered(), errors=mapper.report.errors,
                 external=list(m.external) if m else None,
                 protocol=m.protocol if m else None, double_nat=mapper.double_nat)
            if m is not None:
                try:
                    data, addr = await asyncio.wait_for(knocks.get(), 10)
                    emit(knocked=data.decode(), source=list(addr))
                except asyncio.TimeoutError:
                    emit(knocked=None)
        emit(closed=True, mapping=mapper.mapping)
    finally:
        sock.close()

asyncio.run(main())
"""

KNOCK_SCRIPT = r"""
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for _ in range(3):  # bounded: three datagrams
        s.sendto(b"knock", (ip, port))
        time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def upnp_lab() -> Iterator[Lab]:
    """One host behind a random-port symmetric NAT with miniupnpd: only a mapping lets a
    stranger in. Module-scoped (miniupnpd's STUN self-test makes building it ~1 s)."""
    with Lab([HostSpec("apdm-random", RouterOptions(miniupnpd=True))], stun_server=False) as lab:
        yield lab


def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr is not None else ""
        raise AssertionError(f"host script ended early: {err[-3000:]}")
    out = json.loads(line)
    assert isinstance(out, dict)
    return out


def _ruleset(h: Host) -> str:
    return h.router_run(["nft", "list", "ruleset"]).stdout


def _run_mapping(lab: Lab, proto: str) -> dict[str, Any]:
    h = lab.host(0)
    argv = [sys.executable, "-c", HOST_SCRIPT, proto, h.gateway, h.ip]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", h.ns, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_env(),
    )
    try:
        first = _read(proc)
        assert first["external"] is not None, first
        ext_ip, ext_port = first["external"]
        assert first["protocol"] == proto and first["answered"] == [proto], first
        assert ext_ip == h.router_wan_ip and first["double_nat"] is False
        assert f"dport {ext_port}" in _ruleset(h)  # miniupnpd's DNAT rule is in place
        run(
            [sys.executable, "-c", KNOCK_SCRIPT, ext_ip, str(ext_port)],
            ns=lab.pub_ns,
            what="knock from the public segment",
        )
        second = _read(proc)
        assert second["knocked"] == "knock", second
        assert second["source"][0] == "203.0.113.254"  # the pub namespace's address
        third = _read(proc)
        assert third == {"closed": True, "mapping": None}
        assert proc.wait(timeout=10) == 0
        assert f"dport {ext_port}" not in _ruleset(h)  # deleted on close
        return first
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _env() -> dict[str, str]:
    from punchthrough.lab.proc import child_env

    return child_env()


@pytest.mark.parametrize("proto", ["nat-pmp", "pcp", "upnp"])
def test_mapping_through_miniupnpd(upnp_lab: Lab, proto: str) -> None:
    first = _run_mapping(upnp_lab, proto)
    print(f"{proto}: probe {first['probe_ms']:.1f} ms, probe+map {first['total_ms']:.1f} ms")
    # the gateway is one hop away: probe (and map) take milliseconds, not the probe cap
    assert first["probe_ms"] < 400, first


def test_probe_against_router_without_miniupnpd(lab_factory: Callable[..., Lab]) -> None:
    lab = lab_factory(["eim-apdf"], stun_server=False, coturn=False)
    h = lab.host(0)
    script = HOST_SCRIPT.replace('upnp=proto == "upnp"', "upnp=True").replace(
        'nat_pmp=proto == "nat-pmp", pcp=proto == "pcp"', "nat_pmp=True, pcp=True"
    )
    out = run(
        ["ip", "netns", "exec", h.ns, sys.executable, "-c", script, "all", h.gateway, h.ip],
        what="probe without miniupnpd",
        timeout=30,
    )
    first = json.loads(out.stdout.splitlines()[0])
    assert first["external"] is None and first["answered"] == []
    assert 450 <= first["total_ms"] < 1500, first  # bounded by the probe cap


def test_netcheck_cli_reports_port_mapping(upnp_lab: Lab) -> None:
    h = upnp_lab.host(0)
    servers = [f"{ip}:{port}" for ip, port in upnp_lab.coturn_servers()]
    argv = [sys.executable, "-m", "punchthrough", "netcheck", "--json", "--gateway", "auto"]
    for s in servers:
        argv += ["--stun", s]
    report = json.loads(h.run(argv, check=True, timeout=60).stdout)
    assert report["port_mapping_gateway"] == h.gateway
    assert report["port_mapping"] == {"nat_pmp": True, "pcp": True, "upnp": True}, report
    ext_ip, ext_port = report["port_mapping_external"].split(":")
    assert ext_ip == h.router_wan_ip and report["double_nat"] is False
    assert f"dport {ext_port}" not in _ruleset(h)  # netcheck deleted its mapping
    assert report["mapping"] == "address-and-port-dependent"  # the STUN half is unaffected
    print(f"netcheck with port mapping: {report['duration_ms']} ms")
