"""Direct paths on real kernel NATs: port mapping through miniupnpd, a direct path that dies
mid-call (nft drop rule, conntrack flush, a router reboot), and NAT bindings shorter than the call.

Each test builds its own small lab (`lab_factory`) with our relay in the pub namespace, runs
``listen --echo`` on one host and calls it from another, all calls of a test at once. The fault
tests drive the caller with a few lines around :func:`run_echo_session` (exactly what
``connect --json`` runs) that also print each path change as it happens, so the test cuts the
path right after the upgrade and measures the fallback time on the shared monotonic clock
(asyncio's ``loop.time()`` is ``time.monotonic()``, the same clock in every namespace).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from punchthrough.identity import Identity
from punchthrough.lab import Host, HostSpec, Lab, RouterOptions
from punchthrough.lab import addresses as A
from punchthrough.lab.proc import LabProcess, udp_listening, wait_until

pytestmark = pytest.mark.lab

RELAY: tuple[str, int] = (A.RELAY_PRIMARY, A.STUN_PORT)
RELAY_TEXT = f"{RELAY[0]}:{RELAY[1]}"
#: Our lab STUN server's RFC 5780 addresses (as in test_endpoint_lab): mapping behaviour.
STUN_ARGS = [arg for addr in A.PEER_STUN_SERVERS for arg in ("--stun", addr)]
PPS = 50  # connect's default: one 160-byte frame per 20 ms
#: Seconds a process may take beyond its call (start-up, connect, stragglers); a bound, not a
#: figure: a hang fails the test instead of stalling it.
SLACK_S = 30.0
#: The relay, listeners and callers are Python processes: start-up alone takes ~0.5 s here.
READY_TIMEOUT_S = 15.0

#: Caller for the fault tests: ``connect --json`` plus live path-change events.
#: argv: key file, peer id, relay, duration, then --stun servers. Prints JSON lines:
#: {"event": "start", "t0"}, {"event": "path", "to", "at"} per change, {"event": "result", ...}.
CALLER = r"""
import asyncio, json, sys
from pathlib import Path
from punchthrough.apps.echo import run_echo_session
from punchthrough.endpoint import Endpoint, EndpointConfig
from punchthrough.identity import Identity
from punchthrough.netio import UdpNetwork

key, peer, relay, duration, *stun = sys.argv[1:]

def addr(text):
    ip, port = text.rsplit(":", 1)
    return ip, int(port)

def emit(**kw):
    print(json.dumps(kw), flush=True)

async def main():
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    emit(event="start", t0=t0)
    ep = await Endpoint.bind(Identity.load(Path(key)), relays=[addr(relay)],
                             stun=[addr(s) for s in stun], network=UdpNetwork(),
                             config=EndpointConfig(relay_timeout=10.0))
    tasks = []

    def connected(conn):
        async def watch():
            seen = 0
            while True:  # cancelled when the session ends
                for c in conn.paths.changes[seen:]:
                    seen += 1
                    emit(event="path", to=c.to.kind if c.to else None, at=c.at)
                await asyncio.sleep(0.005)
        tasks.append(loop.create_task(watch()))

    try:
        result = await run_echo_session(ep, peer, float(duration), 50, connect_timeout=10.0,
                                        process_started_at=t0, on_connected=connected)
    finally:
        for t in tasks:
            t.cancel()
        await ep.close("caller done")
    emit(event="result", t0=t0, **result)

asyncio.run(main())
"""


@dataclass
class CallLab:
    """A lab with our relay running; starts listeners and callers and stops them all."""

    lab: Lab
    keydir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _n: int = 0

    def key(self) -> tuple[Path, Identity]:
        self._n += 1
        ident = Identity.generate()
        path = self.keydir / f"id{self._n}.key"
        ident.save(path)
        return path, ident

    def listen(
        self, h: Host, *, gateway: str | None = None, bind: str | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """`listen --echo --json` on h; returns (process, peer id)."""
        path, ident = self.key()
        argv = [sys.executable, "-m", "punchthrough", "listen", "--identity", str(path)]
        argv += ["--relay", RELAY_TEXT, *STUN_ARGS, "--echo", "--json"]
        if gateway is not None:
            argv += ["--gateway", gateway]
        if bind is not None:
            argv += ["--bind", bind]
        proc = h.popen(argv, name=f"listen-{self._n}", stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc, str(ident.peer_id)

    def connect(
        self,
        h: Host,
        peer: str,
        duration: float,
        *,
        gateway: str | None = None,
        bind: str | None = None,
        pps: float = PPS,
    ) -> subprocess.Popen[bytes]:
        """`connect --json` from h to `peer` (a `listen --echo`) for `duration` seconds."""
        path, _ = self.key()
        argv = [sys.executable, "-m", "punchthrough", "connect", peer, "--identity", str(path)]
        argv += ["--relay", RELAY_TEXT, *STUN_ARGS, "--duration", str(duration)]
        argv += ["--pps", str(pps), "--json"]
        if gateway is not None:
            argv += ["--gateway", gateway]
        if bind is not None:
            argv += ["--bind", bind]
        proc = h.popen(argv, name=f"connect-{self._n}", stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def caller(self, h: Host, peer: str, duration: float) -> subprocess.Popen[bytes]:
        """The event-printing caller (`CALLER`)."""
        path, _ = self.key()
        argv = [sys.executable, "-c", CALLER, str(path), peer, RELAY_TEXT, str(duration)]
        argv += STUN_ARGS[1::2]
        proc = h.popen(argv, name=f"caller-{self._n}", stdout=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM (a listener closes its endpoint and deletes its port mapping), then KILL."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        for proc in self.procs:
            self.stop(proc)


@pytest.fixture
def call_lab(lab_factory: Callable[..., Lab], tmp_path: Path) -> Iterator[Callable[..., CallLab]]:
    """`call_lab(hosts, **Lab kwargs)`: a lab plus our relay; every process stopped after."""
    made: list[CallLab] = []

    def make(hosts: list[str | HostSpec], **kwargs: Any) -> CallLab:
        lab = lab_factory(hosts, **kwargs)
        relay = lab.spawn(
            lab.pub_ns,
            [sys.executable, "-m", "punchthrough", "relay", "--listen", RELAY_TEXT],
            name="relay",
        )
        wait_until(
            lambda: udp_listening(lab.pub_ns, *RELAY),
            timeout=READY_TIMEOUT_S,
            what="relay to listen",
            diagnose=lambda: _tail(relay),
        )
        keydir = tmp_path / f"keys-{lab.prefix}"
        keydir.mkdir()
        cl = CallLab(lab, keydir)
        made.append(cl)
        return cl

    try:
        yield make
    finally:
        for cl in made:
            cl.close()  # the lab itself (and the relay) goes with lab_factory


def _tail(proc: LabProcess) -> str:
    return proc.log.read_text(errors="replace")[-2000:] if proc.log else ""


class Lines:
    """JSON lines from a process's stdout, read on a thread so every wait is bounded."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        self.thread.start()

    def _pump(self, out: Any) -> None:
        try:
            for raw in out:
                text = raw.decode(errors="replace").strip()
                if text.startswith("{"):
                    self.q.put(json.loads(text))
        except (ValueError, OSError):
            pass
        finally:
            self.q.put(None)

    def next(self, timeout: float, what: str) -> dict[str, Any]:
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line within {timeout}s waiting for {what}") from None
        if line is None:
            self.q.put(None)  # keep reporting the end
            raise AssertionError(f"stream ended (rc={self.proc.poll()}) waiting for {what}")
        return line

    def until(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.0, deadline - time.monotonic()), what)
            if pred(line):
                return line


def _ready(proc: subprocess.Popen[bytes]) -> Lines:
    lines = Lines(proc)
    first = lines.next(READY_TIMEOUT_S, "listen to print 'listening'")
    assert first.get("event") == "listening", first
    return lines


def _result(proc: subprocess.Popen[bytes], duration: float) -> dict[str, Any]:
    """connect --json's last line (or the error it printed)."""
    try:
        out, _ = proc.communicate(timeout=duration + SLACK_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"connect did not finish within {duration + SLACK_S}s") from None
    text = out.decode().strip()
    res: dict[str, Any] = json.loads(text.splitlines()[-1]) if text else {"error": "no output"}
    res["returncode"] = proc.returncode
    return res


SUMMARY_KEYS = (
    "returncode",
    "path",
    "strategy",
    "connected_ms",
    "direct_ms",
    "frames_sent",
    "frames_lost",
    "max_gap_ms",
    "closed_early",
    "error",
)


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: r.get(k) for k in SUMMARY_KEYS}
    out["changes"] = [(c["to"], c["t_ms"], c["reason"]) for c in r.get("path_changes", [])]
    return out


def _stage(r: dict[str, Any], name: str) -> dict[str, Any]:
    stages: list[dict[str, Any]] = r["traversal"]["stages"]
    return next(s for s in stages if s["stage"] == name)


# -- 1. port mapping ----------------------------------------------------------------------------
MAPPING_CALL_S = 6.0


@pytest.mark.parametrize(
    "bind",
    [
        "wildcard",  # was a bug: the mapper bound to 127.0.0.1 (fixed: _address_towards)
        "host-ip",
    ],
)
def test_port_mapping_makes_a_symmetric_nat_direct(
    call_lab: Callable[..., CallLab], bind: str
) -> None:
    """apdm-random (random port per flow) vs eim-apdf can only meet through a port mapping:
    miniupnpd on the apdm-random router maps the endpoint's socket; both call directions go
    direct with strategy port-mapping. The same pair without --gateway stays relayed (control).
    `bind`: the endpoints' socket on 0.0.0.0 (the default) or on the host's own address.
    """
    cl = call_lab(
        [HostSpec("apdm-random", RouterOptions(miniupnpd=True)), "eim-apdf"],
        stun_server=True,
        coturn=True,  # miniupnpd's STUN self-test server
    )
    hard, cone = cl.lab.host(0), cl.lab.host(1)
    on = hard.ip if bind == "host-ip" else None
    mapped_listener, mapped_peer = cl.listen(hard, gateway=hard.gateway, bind=on)
    cone_listener, cone_peer = cl.listen(cone)
    _ready(mapped_listener), _ready(cone_listener)
    calls = {
        "cone -> mapped listener": cl.connect(cone, mapped_peer, MAPPING_CALL_S),
        "mapped caller -> cone": cl.connect(
            hard, cone_peer, MAPPING_CALL_S, gateway=hard.gateway, bind=on
        ),
        "unmapped caller -> cone (control)": cl.connect(hard, cone_peer, MAPPING_CALL_S),
    }
    results = {name: _result(p, MAPPING_CALL_S) for name, p in calls.items()}
    print(json.dumps({k: _summary(r) for k, r in results.items()}, indent=1))
    for name, r in results.items():
        assert r["returncode"] == 0, (name, r)
        assert r["frames_sent"] == MAPPING_CALL_S * PPS, (name, r)
        assert r["frames_lost"] == 0, (name, _summary(r))
        if "control" in name:
            # without a mapping, hole punching alone cannot open an APDM NAT: the call stays on
            # the relay or wins by a hard-NAT stage (birthday), never by port mapping
            assert r["strategy"] in (None, "birthday", "port-prediction"), (name, _summary(r))
            assert _stage(r, "port-mapping")["status"] != "succeeded", (name, r["traversal"])
            continue
        assert r["path"] == "direct", (name, json.dumps(r["traversal"]))
        assert r["strategy"] == "port-mapping", (name, json.dumps(r["traversal"]))
        assert _stage(r, "port-mapping")["status"] == "succeeded", (name, r["traversal"])
        assert [c["to"] for c in r["path_changes"]] == ["direct"], (name, r["path_changes"])
    # the mappings are deleted when the endpoints close
    cl.stop(mapped_listener)
    rules = hard.router_run(["nft", "list", "table", "inet", "filter"]).stdout
    assert "dnat" not in rules, rules


# -- 2. the direct path dies mid-call -------------------------------------------------------------
FAULT_CALL_S = 10.0
#: After the upgrade, let the upgrade's overlap (traversal.paths.OVERLAP_MIN, 0.25 s) finish first.
SETTLE_S = 1.0
#: How long the drop rule stays: long enough for the fallback and a failed background retry.
CUT_S = 3.0
#: "within a few hundred milliseconds" (issue 5); generous so scheduling noise cannot fail it.
MAX_FALLBACK_S = 1.5
CUT_TABLE = "ptdirectcut"


def _cut(h: Host, peer_ip: str) -> None:
    """Drop UDP between h's NAT and the peer's public address in h's router's forward path
    (outbound packets still carry the private source there, inbound ones the peer's address:
    the relay's traffic is untouched)."""
    rules = [
        f"add table ip {CUT_TABLE}",
        f"add chain ip {CUT_TABLE} cut {{ type filter hook forward priority -100; "
        "policy accept; }",
        f"add rule ip {CUT_TABLE} cut meta l4proto udp ip saddr {peer_ip} counter drop",
        f"add rule ip {CUT_TABLE} cut meta l4proto udp ip daddr {peer_ip} counter drop",
    ]
    h.router_run(["nft", "; ".join(rules)])


def _heal(h: Host) -> int:
    """Remove the cut; returns how many packets it dropped."""
    listing = h.router_run(["nft", "list", "table", "ip", CUT_TABLE]).stdout
    h.router_run(["nft", "delete", "table", "ip", CUT_TABLE])
    return sum(int(w) for w in _after(listing.split(), "packets"))


def _reboot(h: Host) -> None:
    """h's router drops all forwarded UDP for REBOOT_S, forgets every binding, then forwards
    again (as a rebooting router: nothing that was in flight gets through)."""
    rules = [
        f"add table ip {CUT_TABLE}",
        f"add chain ip {CUT_TABLE} cut {{ type filter hook forward priority -100; "
        "policy accept; }",
        f"add rule ip {CUT_TABLE} cut meta l4proto udp drop",
    ]
    h.router_run(["nft", "; ".join(rules)])
    try:
        time.sleep(REBOOT_S)
        h.router_run(["conntrack", "-F"])
    finally:
        h.router_run(["nft", "delete", "table", "ip", CUT_TABLE])


def _after(words: list[str], key: str) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == key]


#: A router "reboot" on the callee's side: its forward path drops all UDP for this long, then
#: its conntrack table is flushed and it forwards again (empty NAT, nothing in flight).
REBOOT_S = 0.2
#: The callee only echoes, so once its NAT is empty nothing of its own re-opens it: it must notice
#: the silence (traversal.monitor: probes after a few frame intervals; at its fallback a PING on
#: the relay and a relay keepalive every 0.5 s until answered). Measured: 11 of 500 frames lost,
#: max gap 238-240 ms, the call never left the direct path (5 of 5 runs). Before: 150-159 lost,
#: max gap 4.3-4.5 s (nothing re-opened the NAT until the callee's 5 s keepalive).


@pytest.mark.parametrize(
    "fault",
    [
        "drop-rule",
        "conntrack-flush-caller",
        "reboot-callee",
    ],
)
def test_direct_path_dies_mid_call(call_lab: Callable[..., CallLab], fault: str) -> None:
    """A cone pair (eim-apdf both) goes direct; then either an nft rule drops everything between
    the two NATs for CUT_S (the call must fall back to the relay within a few hundred ms and
    return to direct after the cut heals), or a router forgets every binding: `conntrack -F`
    on the caller's router, or a short reboot of the callee's (drop, flush, forward again).
    The call must survive, lose little, and end direct."""
    cl = call_lab(["eim-apdf", "eim-apdf"], coturn=False)
    a, b = cl.lab.host(0), cl.lab.host(1)
    listener, peer = cl.listen(b)
    _ready(listener)
    spawned = time.monotonic()
    lines = Lines(cl.caller(a, peer, FAULT_CALL_S))
    t0 = lines.until(lambda e: e["event"] == "start", READY_TIMEOUT_S, "caller start")["t0"]
    # one clock: asyncio's loop.time() in the caller is time.monotonic() here
    assert spawned <= t0 < spawned + READY_TIMEOUT_S, (spawned, t0)
    lines.until(lambda e: e.get("to") == "direct", FAULT_CALL_S, "the upgrade to direct")
    time.sleep(SETTLE_S)
    marks: dict[str, float] = {}
    dropped = 0
    before = time.monotonic()
    if fault == "drop-rule":
        _cut(b, a.public_ip)
        marks["cut"] = time.monotonic()
        try:
            back = lines.until(lambda e: e.get("to") == "relay", CUT_S, "the fallback to relay")
            marks["fallback"] = back["at"]
            time.sleep(max(0.0, marks["cut"] + CUT_S - time.monotonic()))
        finally:
            dropped = _heal(b)
        marks["healed"] = time.monotonic()
    elif fault == "conntrack-flush-caller":
        flows = a.router_run(["conntrack", "-L", "-p", "udp", "--orig-dst", b.public_ip])
        assert flows.stdout.strip(), flows  # the direct flow's binding exists
        a.router_run(["conntrack", "-F"])
        marks["cut"] = time.monotonic()
    else:
        _reboot(b)
        marks["cut"] = time.monotonic()
    result = lines.until(lambda e: e["event"] == "result", FAULT_CALL_S + SLACK_S, "result")
    result["returncode"] = lines.proc.wait(SLACK_S)
    changes = result["path_changes"]
    # path_changes count from the connect() call; back to this process's clock
    called = t0 + result["from_process_start_ms"]["connect_called"] / 1000
    figures = {
        "fault": fault,
        "fault_at_ms": round((marks["cut"] - t0) * 1000, 1),
        "fault_cmd_ms": round((marks["cut"] - before) * 1000, 1),
        "fallback_ms": round((marks["fallback"] - marks["cut"]) * 1000, 1)
        if "fallback" in marks
        else None,
        "dropped_by_rule": dropped,
        "back_to_direct_after_heal_ms": None,
        **_summary(result),
        "frames_received": result["frames_received"],
        "rtt_ms": result["rtt_ms"],
    }
    if "healed" in marks:
        again = [
            c for c in changes if c["to"] == "direct" and c["t_ms"] / 1000 + called > marks["cut"]
        ]
        if again:
            figures["back_to_direct_after_heal_ms"] = round(
                (again[0]["t_ms"] / 1000 + called - marks["healed"]) * 1000, 1
            )
    print(json.dumps(figures, indent=1))
    assert result["returncode"] == 0 and result["closed_early"] is None, figures
    assert result["frames_sent"] == FAULT_CALL_S * PPS, figures
    assert result["frames_received"] > 0.9 * result["frames_sent"], figures
    assert result["frames_corrupt"] == 0, figures
    if fault == "drop-rule":
        assert dropped > 0, figures  # the rule really cut the direct path
        kinds = [c["to"] for c in changes]
        assert kinds[:2] == ["direct", "relay"], figures
        assert 0 < marks["fallback"] - marks["cut"] < MAX_FALLBACK_S, figures
        assert result["traversal"]["fallbacks"] >= 1, figures
        # the background retry finds the healed path again before the call ends
        assert result["path"] == "direct" and kinds[-1] == "direct", figures
    else:
        assert result["path"] == "direct", figures


# -- 3. NAT bindings shorter than the call -----------------------------------------------------
SHORT_TIMEOUT_S = 3  # conntrack UDP timeouts on both routers (natlab eim-apdf-short-timeout)
#: Keepalives hold the bindings (traversal.monitor.KEEPALIVE, 2 s: consent checks on the direct
#: path, STUN keepalives on each relay flow). Before (5 s direct keepalive, 10 s relay PING):
#: "sparse" lost frame 1 and fell back to the relay at 4.4 s; "idle-listener" connected only
#: after 6232 ms (the listener's relay binding had expired). Measured now: 0 lost and no path
#: change in every case, idle-listener connected_ms 526-536 (5 runs of each).


@pytest.mark.parametrize(
    ("pps", "duration", "idle_s"),
    [
        pytest.param(PPS, 10.0, 0.0, id="media"),
        # one frame every 4 s: between frames only keepalives can hold the bindings
        pytest.param(0.25, 12.0, 0.0, id="sparse"),
        # the listener sits idle longer than its NAT keeps the relay binding before the call
        pytest.param(PPS, 4.0, SHORT_TIMEOUT_S + 1.5, id="idle-listener"),
    ],
)
def test_short_nat_binding_lifetime_keeps_the_call_direct(
    call_lab: Callable[..., CallLab], pps: float, duration: float, idle_s: float
) -> None:
    """Both routers forget an idle UDP binding after 3 s; a call stays direct and loses
    nothing: media (50 pps) or, between sparse frames, keepalives refresh the bindings, and a
    listener stays reachable through the relay however long it waited for the call."""
    short = HostSpec("eim-apdf", RouterOptions(udp_timeout=SHORT_TIMEOUT_S))
    cl = call_lab([short, short], coturn=False)
    a, b = cl.lab.host(0), cl.lab.host(1)
    got = b.router_run(["sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout_stream"])
    assert got.stdout.strip() == str(SHORT_TIMEOUT_S)
    listener, peer = cl.listen(b)
    _ready(listener)
    time.sleep(idle_s)
    proc = cl.connect(a, peer, duration, pps=pps)
    r = _result(proc, duration)
    print(json.dumps(_summary(r), indent=1))
    assert r["returncode"] == 0, r
    assert r["connected_ms"] < 2000, _summary(r)  # as fresh as test_endpoint_lab's calls
    assert r["frames_sent"] == round(duration * pps), r
    assert r["frames_lost"] == 0, _summary(r)
    assert r["path"] == "direct" and r["strategy"] == "hole-punch", _summary(r)
    assert [c["to"] for c in r["path_changes"]] == ["direct"], _summary(r)
