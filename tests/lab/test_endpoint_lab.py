"""`listen --echo` / `connect --json` through our relay on real kernel NATs, and the upgrade
to a direct path behind the relayed call.

One relay process in the lab's pub namespace; one `listen --echo` per host (each behind its own
router with one NAT profile); then rounds of `connect --json --duration 10` run in parallel, in
round k host i calling host i+k, so every profile is on both sides of a call in every round.
udp-blocked is left out: its host can reach neither the relay nor anything else (see README).

Every call starts on the relay; pairs that standard hole punching can open (see
``tests/sim/test_direct_sim.py``'s ``punchable``: the same rule the simulator checks) must end
on ``path: direct`` with no frame lost; the others stay on the relay and their traversal report
names the hard-NAT stage they would need. Both sides learn their NAT's mapping from our lab STUN
server (``--stun``), as the simulator's endpoints do from the relay's RFC 5780 addresses.
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
from punchthrough.lab import PROFILES, Host, Lab
from punchthrough.lab import addresses as A
from punchthrough.lab.proc import udp_listening, wait_until

pytestmark = pytest.mark.lab

#: Our relay, on the lab's relay address. A port of its own (not 3478) so this module never
#: collides with the relay package's own lab tests if both leave a relay running.
RELAY: tuple[str, int] = (A.RELAY_PRIMARY, 3490)
RELAY_TEXT = f"{RELAY[0]}:{RELAY[1]}"
DURATION_S = 10
PPS = 50
#: Rounds: offsets k (host i calls host i+k mod n); with the 7 UDP profiles, offsets 1-6 make
#: every ordered pair of distinct profiles call once (the whole pair matrix). Each round runs
#: all its calls at once (each host has its own router): ~15 s per round.
ROUNDS = (1, 2, 3, 4, 5, 6)
#: Our lab STUN server's RFC 5780 addresses: with the relay, 4 mapping samples per endpoint.
STUN_ARGS = [arg for addr in A.PEER_STUN_SERVERS for arg in ("--stun", addr)]
#: Same rule as the simulator test (kept in one place there).
EDM = {"adm", "apdm-sequential", "apdm-random"}
APDF = {"eim-apdf", "adm", "apdm-sequential", "apdm-random"}


def punchable(a: str, b: str) -> bool:
    if "open" in (a, b):
        return True
    return not any(
        hard in EDM and (other in EDM or other in APDF) for hard, other in ((a, b), (b, a))
    )


def _cli() -> list[str]:
    """`python -m punchthrough` once the lead mounts the commands; the module until then."""
    from punchthrough.cli.app import app

    names = {c.name for c in app.registered_commands}
    if {"listen", "connect"} <= names:
        return [sys.executable, "-m", "punchthrough"]
    return [sys.executable, "-m", "punchthrough.cli.peer_cmd"]


def _relay_argv() -> list[str]:
    from punchthrough.cli.app import app

    if "relay" in {c.name for c in app.registered_commands}:
        return [sys.executable, "-m", "punchthrough", "relay", "--listen", RELAY_TEXT]
    code = "import typer; from punchthrough.cli.relay_cmd import relay; typer.run(relay)"
    return [sys.executable, "-c", code, "--listen", RELAY_TEXT]


def _hosts(lab: Lab) -> list[Host]:
    return [h for h in lab.hosts if PROFILES[h.spec.profile].udp]


@pytest.fixture(scope="module")
def endpoint_lab(
    nat_lab: Lab, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Lab, dict[str, tuple[Path, Identity]]]]:
    """The relay plus one `listen --echo` per profile.

    Yields {profile: (caller key file, listener identity)}: callers and listeners on one host
    have identities of their own (two live registrations of one identity replace each other).
    """
    keydir = tmp_path_factory.mktemp("endpoint-lab-keys")
    relay = nat_lab.spawn(nat_lab.pub_ns, _relay_argv(), name="endpoint-relay")
    listeners: list[subprocess.Popen[bytes]] = []
    try:
        wait_until(
            lambda: udp_listening(nat_lab.pub_ns, *RELAY), timeout=15, what="relay to listen"
        )
        keys: dict[str, tuple[Path, Identity]] = {}
        for h in _hosts(nat_lab):
            ident, caller = Identity.generate(), Identity.generate()
            path = keydir / f"{h.spec.profile}-listen.key"
            ident.save(path)
            caller_path = keydir / f"{h.spec.profile}-call.key"
            caller.save(caller_path)
            keys[h.spec.profile] = (caller_path, ident)
            proc = h.popen(
                [
                    *_cli(),
                    "listen",
                    "--identity",
                    str(path),
                    "--relay",
                    RELAY_TEXT,
                    *STUN_ARGS,
                    "--echo",
                    "--json",
                ],
                name=f"listen-{h.spec.profile}",
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            listeners.append(proc)
        for proc, h in zip(listeners, _hosts(nat_lab), strict=True):
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            assert line, f"listen on {h.spec.profile} exited: rc={proc.poll()}"
            ready = json.loads(line)
            assert ready["event"] == "listening", ready
            observed = ready["observed"][RELAY_TEXT]
            assert observed.rsplit(":", 1)[0] == h.public_ip, (h.spec.profile, observed)
        yield nat_lab, keys
    finally:
        for proc in listeners:
            if proc.poll() is None:
                proc.terminate()
        for proc in listeners:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        nat_lab.stop(relay)


def _calls(lab: Lab, keys: dict[str, tuple[Path, Identity]], k: int) -> dict[str, Any]:
    hosts = _hosts(lab)
    procs: dict[tuple[str, str], subprocess.Popen[bytes]] = {}
    for i, caller in enumerate(hosts):
        callee = hosts[(i + k) % len(hosts)]
        key, _ = keys[caller.spec.profile]
        _, callee_id = keys[callee.spec.profile]
        procs[(caller.spec.profile, callee.spec.profile)] = caller.popen(
            [
                *_cli(),
                "connect",
                str(callee_id.peer_id),
                "--identity",
                str(key),
                "--relay",
                RELAY_TEXT,
                *STUN_ARGS,
                "--duration",
                str(DURATION_S),
                "--pps",
                str(PPS),
                "--json",
            ],
            name=f"connect-{caller.spec.profile}-{callee.spec.profile}",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    results: dict[str, Any] = {}
    for (a, b), proc in procs.items():
        out, err = proc.communicate(timeout=DURATION_S + 30)
        text = out.decode().strip()
        results[f"{a} -> {b}"] = (
            json.loads(text.splitlines()[-1]) if text else {"error": err.decode()[-500:]}
        )
        results[f"{a} -> {b}"]["returncode"] = proc.returncode
    return results


@pytest.mark.parametrize("k", ROUNDS)
def test_every_profile_calls_and_answers_through_the_relay(
    endpoint_lab: tuple[Lab, dict[str, tuple[Path, Identity]]], k: int
) -> None:
    lab, keys = endpoint_lab
    start = time.monotonic()
    results = _calls(lab, keys, k)
    elapsed = time.monotonic() - start
    summary = {
        pair: {
            key: r.get(key)
            for key in (
                "returncode",
                "connected_ms",
                "direct_ms",
                "strategy",
                "frames_lost",
                "max_gap_ms",
                "path",
                "error",
            )
        }
        | {"needed": r.get("traversal", {}).get("needed")}
        for pair, r in results.items()
    }
    print(json.dumps({"round": k, "elapsed_s": round(elapsed, 1), "calls": summary}, indent=1))
    for pair, r in results.items():
        assert r["returncode"] == 0, (pair, r)
        assert r["frames_sent"] == DURATION_S * PPS, (pair, r)
        assert r["frames_lost"] == 0, (pair, r)
        assert r["frames_corrupt"] == 0, (pair, r)
        assert r["connected_ms"] < 2000, (pair, r)
        a, b = pair.split(" -> ")
        report = r["traversal"]
        if punchable(a, b):
            assert r["path"] == "direct", (pair, json.dumps(report))
            assert r["strategy"] == "hole-punch", (pair, report)
            assert [c["to"] for c in r["path_changes"]] == ["direct"], (pair, r["path_changes"])
            assert r["connected_ms"] < r["direct_ms"] < r["connected_ms"] + 1000, (pair, r)
        else:
            # hole punching alone cannot open these pairs; a hard-NAT stage (port prediction,
            # the birthday attack) may, and whatever wins is said; otherwise the call stays on
            # the relay and the report names the stage that would be needed
            stages = {s["stage"]: s for s in report["stages"]}
            if a == b == "apdm-sequential":
                # two sequential NATs: mutual prediction (matched send order) either connects,
                # or fails and says why while the call stays on the relay
                assert stages["birthday"]["status"] == "skipped", (pair, report)
                pp = stages["port-prediction"]
                if r["path"] == "direct":
                    assert r["strategy"] == "port-prediction", (pair, report)
                    assert pp["status"] == "succeeded" and pp["role"] == "mutual", (pair, pp)
                else:
                    assert r["strategy"] is None and r["direct_ms"] is None, (pair, r)
                    # failed and why, or a retry (back-off) still running when the call ended
                    assert (pp["status"] == "failed" and pp.get("reason")) or (
                        pp["status"] == "started"
                    ), (pair, pp)
                    assert report["needed"] == ["port-prediction"], report
                continue
            if a in EDM and b in EDM:
                # both sides map endpoint-dependently: no hard stage has a peer whose public
                # endpoint stays put (both-random birthday odds are n*m/(N1*N2)), so the design
                # stays on the relay and the birthday stage's skip says so
                assert r["path"] == "relay" and r["strategy"] is None, (pair, r)
                assert r["direct_ms"] is None, (pair, r)
                assert stages["birthday"]["status"] == "skipped", (pair, report)
                assert "relay" in stages["birthday"]["reason"], (pair, report)
                assert report["needed"] == [], report
                continue
            if r["path"] == "direct":
                assert r["strategy"] in ("birthday", "port-prediction"), (pair, report)
                assert r["direct_ms"] is not None and r["direct_ms"] > r["connected_ms"], r
            else:
                assert r["strategy"] is None and r["direct_ms"] is None, (pair, r)
                assert report["needed"] or any(
                    s["stage"] in ("birthday", "port-prediction") and s["status"] == "failed"
                    for s in report["stages"]
                ), (pair, report)
