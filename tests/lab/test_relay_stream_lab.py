"""The relay over TLS and WebSocket on real kernel NATs and firewalls.

One relay in the pub namespace with UDP and TCP 443 (TLS and WebSocket on one port), a real
HTTP proxy (tinyproxy, started here in the pub namespace on the lab's proxy address), one
``listen --echo`` behind each UDP profile, and one caller behind each firewall profile:
``udp-blocked`` (no UDP at all), ``tcp443-only`` (only TCP to port 443 leaves) and
``proxy-only`` (only TCP to the proxy leaves; the caller uses ``--proxy``). In round k the
firewalled caller j calls UDP listener j+k, all at once, so every firewall profile calls every
UDP profile once. Each call must come up over TLS or WebSocket, say why, and lose no frame at
50 pps. The same run of ``connect`` as users type it; 10 s calls are in ``bench/``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from punchthrough.identity import Identity
from punchthrough.lab import PROFILES, Lab
from punchthrough.lab import addresses as A
from punchthrough.lab.proc import udp_listening, wait_until

pytestmark = pytest.mark.lab

UDP_PROFILES = [name for name, p in PROFILES.items() if p.udp]
FIREWALLS = ["udp-blocked", "tcp443-only", "proxy-only"]
RELAY = (A.RELAY_PRIMARY, 3492)  # a port of its own (other lab modules run relays too)
RELAY_TEXT = f"{RELAY[0]}:{RELAY[1]}"
TLS = (A.RELAY_PRIMARY, A.HTTPS_PORT)
PROXY_URL = f"http://{A.HTTP_PROXY_IP}:{A.HTTP_PROXY_PORT}"
DURATION_S = 3
PPS = 50
CLI = [sys.executable, "-m", "punchthrough"]


def _tcp_listening(ns: str, ip: str, port: int) -> bool:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Htln", f"src {ip}:{port}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return bool(out.stdout.strip())


@pytest.fixture(scope="module")
def stream_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("stream-lab")
    with Lab([*UDP_PROFILES, *FIREWALLS], coturn=False, stun_server=False) as lab:
        relay_key = tmp / "relay.key"
        relay_id = Identity.generate()
        relay_id.save(relay_key)
        relay = lab.spawn(
            lab.pub_ns,
            [*CLI, "relay", "--listen", RELAY_TEXT, "--tcp-listen", f"{TLS[0]}:{TLS[1]}",
             "--identity", str(relay_key), "--no-uvloop"],
            name="stream-relay",
        )  # fmt: skip
        conf = tmp / "tinyproxy.conf"
        conf.write_text(
            "\n".join(
                [
                    f"Port {A.HTTP_PROXY_PORT}",
                    f"Listen {A.HTTP_PROXY_IP}",
                    "Timeout 60",
                    "MaxClients 50",
                    "Allow 203.0.113.0/24",  # the routers' WAN addresses (masqueraded hosts)
                    "User nobody",
                    "Group nogroup",
                    f"ConnectPort {A.HTTPS_PORT}",
                ]
            )
            + "\n"
        )
        proxy = lab.spawn(lab.pub_ns, ["tinyproxy", "-d", "-c", str(conf)], name="tinyproxy")
        wait_until(lambda: udp_listening(lab.pub_ns, *RELAY), timeout=15, what="relay UDP")
        wait_until(lambda: _tcp_listening(lab.pub_ns, *TLS), timeout=15, what="relay TCP")
        wait_until(
            lambda: _tcp_listening(lab.pub_ns, A.HTTP_PROXY_IP, A.HTTP_PROXY_PORT),
            timeout=15,
            what="tinyproxy",
        )
        listeners: dict[str, Identity] = {}
        procs = []
        for name in UDP_PROFILES:
            ident = Identity.generate()
            key = tmp / f"{name}.key"
            ident.save(key)
            listeners[name] = ident
            procs.append(
                lab.host(name).popen(
                    [
                        *CLI,
                        "listen",
                        "--identity",
                        str(key),
                        "--relay",
                        RELAY_TEXT,
                        "--echo",
                        "--json",
                    ],
                    name=f"listen-{name}",
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline())["event"] == "listening"
        callers: dict[str, Path] = {}
        for name in FIREWALLS:
            key = tmp / f"caller-{name}.key"
            Identity.generate().save(key)
            callers[name] = key
        entry = (
            f"{RELAY_TEXT},tls://{TLS[0]}:{TLS[1]},wss://{TLS[0]}:{TLS[1]}/relay,"
            f"id={relay_id.peer_id}"
        )
        yield {"lab": lab, "listeners": listeners, "callers": callers, "entry": entry}
        for proc in procs:
            proc.terminate()
        lab.stop(proxy)
        lab.stop(relay)


def _call(env: dict[str, Any], caller: str, callee: str) -> subprocess.Popen[bytes]:
    extra = ["--proxy", PROXY_URL] if caller == "proxy-only" else []
    return env["lab"].host(caller).popen(
        [*CLI, "connect", str(env["listeners"][callee].peer_id), "--identity",
         str(env["callers"][caller]), "--relay", env["entry"], *extra, "--duration",
         str(DURATION_S), "--pps", str(PPS), "--json"],
        name=f"call-{caller}-{callee}", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_every_firewall_profile_calls_every_udp_profile_over_tcp(
    stream_lab: dict[str, Any],
) -> None:
    results: dict[str, dict[str, Any]] = {}
    start = time.monotonic()
    for k in range(len(UDP_PROFILES)):
        procs = {
            (fw, UDP_PROFILES[(j + k) % len(UDP_PROFILES)]): _call(
                stream_lab, fw, UDP_PROFILES[(j + k) % len(UDP_PROFILES)]
            )
            for j, fw in enumerate(FIREWALLS)
        }
        for (fw, udp), proc in procs.items():
            out, err = proc.communicate(timeout=DURATION_S + 40)
            text = out.decode().strip()
            r = json.loads(text.splitlines()[-1]) if text else {"error": err.decode()[-800:]}
            r["returncode"] = proc.returncode
            results[f"{fw} -> {udp}"] = r
    summary = {
        pair: {
            key: r.get(key)
            for key in (
                "returncode",
                "relay_transport",
                "connected_ms",
                "frames_lost",
                "max_gap_ms",
                "relay_transport_reason",
                "error",
            )
        }
        for pair, r in results.items()
    }
    print(json.dumps({"elapsed_s": round(time.monotonic() - start, 1), "calls": summary}, indent=1))
    assert len(results) == len(FIREWALLS) * len(UDP_PROFILES)
    for pair, r in results.items():
        assert r["returncode"] == 0, (pair, r)
        assert r["relay_transport"] in ("tls", "websocket"), (pair, r)
        assert r["frames_sent"] == DURATION_S * PPS and r["frames_lost"] == 0, (pair, r)
        assert r["path"] == "relay", (pair, r)
        assert "UDP" in r["relay_transport_reason"], (pair, r)
        # nothing answered UDP: the direct stages are skipped, and the report says why
        stages = {st["stage"]: st for st in r["traversal"]["stages"]}
        assert stages["hole-punch"]["status"] == "skipped", (pair, stages["hole-punch"])
        assert stages["hole-punch"]["reason_code"] == "udp-blocked", (pair, stages["hole-punch"])
