"""The relay over TCP in the kernel lab (root): time to a usable call behind ``udp-blocked``
against a UDP caller, over RTT 0/50/100 ms, and a call whose UDP to the relay is blocked
mid-call (``relay_stream_lab.json``).

Lab: hosts udp-blocked, eim-apdf and two apdm-random, each router delaying every forwarded
packet RTT/4 each way (NFQUEUE delayer), so each host is RTT/2 from the relay. Our relay in
the pub namespace with UDP and TCP 443 (TLS + WebSocket); ``listen --echo`` on an apdm-random
host. Every caller uses the same relay entry (UDP, ``tls://``, ``wss://``, ``id=``).

- **connect**: per RTT, 3 trials each of ``connect --json --duration 1.5`` from udp-blocked and
  from eim-apdf; ``from_process_start_ms.connected`` (bind, registration, the end-to-end QUIC
  handshake through the relay, peer auth) and first echo. Target (issue 13): udp-blocked costs
  at most the happy-eyeballs wait (250 ms at these RTTs: 2 x RTT/2 <= 100 ms) plus the TCP and
  TLS handshakes (1 + 1 RTT to the relay, TLS 1.3) over the UDP case.
- **loss**: at RTT 50 ms with 1% random loss on the caller's router (both directions,
  nft ``numgen``), a 10 s 50 pps call from udp-blocked (relay over TLS) and from apdm-random
  (UDP) to an apdm-random listener without loss, 2 trials each: the echoed frames' RTT
  p50/p95/max and frames lost. TCP turns loss into delay (retransmission after at least
  Linux's 200 ms minimum RTO, and the frames behind it wait: head-of-line blocking).
- **midcall**: an apdm-random caller to the apdm-random listener (the call stays on the relay),
  ``connect --duration 6``; 2 s in, an nft rule on the caller's router drops all forwarded UDP;
  from ``connect --json``: frames lost, the longest gap, the transport change and when.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RTTS = (0.0, 50.0, 100.0)
TRIALS = 3
MIDCALL_RUNS = 10
MIDCALL_RTT = 50.0
CLI = [sys.executable, "-m", "punchthrough"]
RELAY_PORT = 3493
#: The firewall change: every forwarded UDP packet dropped (its own table, deleted after).
BLOCK_TABLE = """table ip midcall {
  chain f {
    type filter hook forward priority -5; policy accept;
    meta l4proto udp drop
  }
}
"""


def _json(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    text = out.decode().strip()
    if not text:
        return {"error": err.decode()[-500:], "returncode": proc.returncode}
    r: dict[str, Any] = json.loads(text.splitlines()[-1])
    r["returncode"] = proc.returncode
    return r


def _relay_and_listener(lab: Any, tmp: Path, listen_host: int) -> tuple[Any, Any, str, Any]:
    """A relay (UDP + TLS/WebSocket) in the lab's public namespace and an echoing listener on
    ``listen_host``: (relay process, listener process, the relay entry callers use, the
    listener's identity)."""
    from punchthrough.identity import Identity
    from punchthrough.lab import addresses as A
    from punchthrough.lab.proc import udp_listening, wait_until

    relay_udp = f"{A.RELAY_PRIMARY}:{RELAY_PORT}"
    tls = f"{A.RELAY_PRIMARY}:{A.HTTPS_PORT}"
    rkey, lkey = tmp / "relay.key", tmp / "listen.key"
    rid, lid = Identity.generate(), Identity.generate()
    rid.save(rkey, overwrite=True)
    lid.save(lkey, overwrite=True)
    relay = lab.spawn(
        lab.pub_ns,
        [*CLI, "relay", "--listen", relay_udp, "--tcp-listen", tls, "--identity", str(rkey),
         "--no-uvloop"],
        name="relay",
    )  # fmt: skip
    wait_until(
        lambda: udp_listening(lab.pub_ns, A.RELAY_PRIMARY, RELAY_PORT), timeout=15, what="relay"
    )
    time.sleep(0.5)  # the TCP listener starts right after the UDP one
    listener = lab.host(listen_host).popen(
        [*CLI, "listen", "--identity", str(lkey), "--relay", relay_udp, "--echo", "--json"],
        name="listen", stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert listener.stdout is not None
    assert json.loads(listener.stdout.readline())["event"] == "listening"
    return relay, listener, f"{relay_udp},tls://{tls},wss://{tls}/relay,id={rid.peer_id}", lid


def _lab_run(rtt: float, tmp: Path, midcall: int) -> dict[str, Any]:
    from punchthrough.identity import Identity
    from punchthrough.lab import HostSpec, Lab, RouterOptions, router_delay_for_rtt

    opts = RouterOptions(delay_ms=router_delay_for_rtt(rtt)) if rtt else RouterOptions()
    hosts = [HostSpec(p, opts) for p in ("udp-blocked", "eim-apdf", "apdm-random", "apdm-random")]
    out: dict[str, Any] = {"rtt_ms": rtt, "connect": {}, "midcall": []}
    with Lab(hosts, coturn=False, stun_server=False) as lab:
        relay, listener, entry, lid = _relay_and_listener(lab, tmp, listen_host=3)
        block = tmp / "block.nft"
        block.write_text(BLOCK_TABLE)

        def call(host: int, duration: float, name: str) -> subprocess.Popen[bytes]:
            key = tmp / f"{name}.key"
            Identity.generate().save(key, overwrite=True)
            return lab.host(host).popen(
                [*CLI, "connect", str(lid.peer_id), "--identity", str(key), "--relay", entry,
                 "--duration", str(duration), "--json"],
                name=name, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip

        for host, label in ((0, "udp-blocked"), (1, "eim-apdf")):
            rows = []
            for t in range(TRIALS):
                r = _json(call(host, 1.5, f"{label}-{t}"), 60)
                rows.append(
                    {
                        "returncode": r.get("returncode"),
                        "relay_transport": r.get("relay_transport"),
                        "connected_from_start_ms": (r.get("from_process_start_ms") or {}).get(
                            "connected"
                        ),
                        "first_echo_ms": r.get("first_echo_ms"),
                        "frames_lost": r.get("frames_lost"),
                        "error": r.get("error"),
                    }
                )
            ok = [x["connected_from_start_ms"] for x in rows if x["connected_from_start_ms"]]
            out["connect"][label] = {
                "trials": rows,
                "connected_from_start_ms_median": statistics.median(ok) if ok else None,
            }
        for i in range(midcall):
            proc = call(2, 6.0, f"midcall-{i}")
            time.sleep(2.0 + 1.0)  # process start + bind + connect ~ 1 s, then 2 s of call
            lab.host(2).router_run(["nft", "-f", str(block)])
            r = _json(proc, 60)
            lab.host(2).router_run(["nft", "delete", "table", "ip", "midcall"])
            changes = r.get("relay_transport_changes") or []
            out["midcall"].append(
                {
                    "returncode": r.get("returncode"),
                    "frames_sent": r.get("frames_sent"),
                    "frames_lost": r.get("frames_lost"),
                    "max_gap_ms": r.get("max_gap_ms"),
                    "relay_transport": r.get("relay_transport"),
                    "changes": [(c["transport"], c["at_ms"], c["reason"]) for c in changes],
                    "path": r.get("path"),
                    "error": r.get("error"),
                }
            )
        listener.terminate()
        lab.stop(relay)
    return out


LOSS_PERCENT = 1.0
LOSS_RTT = 50.0
LOSS_TRIALS = 2
LOSS_DURATION_S = 10.0


def _loss_run(tmp: Path) -> dict[str, Any]:
    from punchthrough.identity import Identity
    from punchthrough.lab import HostSpec, Lab, RouterOptions, router_delay_for_rtt

    delay = router_delay_for_rtt(LOSS_RTT)
    lossy = RouterOptions(delay_ms=delay, loss_percent=LOSS_PERCENT)
    hosts = [
        HostSpec("udp-blocked", lossy),
        HostSpec("apdm-random", lossy),
        HostSpec("apdm-random", RouterOptions(delay_ms=delay)),
    ]
    out: dict[str, Any] = {}
    with Lab(hosts, coturn=False, stun_server=False) as lab:
        relay, listener, entry, lid = _relay_and_listener(lab, tmp, listen_host=2)
        for host, label in ((0, "udp-blocked (tls)"), (1, "apdm-random (udp)")):
            rows = []
            for t in range(LOSS_TRIALS):
                key = tmp / f"loss-{host}-{t}.key"
                Identity.generate().save(key, overwrite=True)
                proc = lab.host(host).popen(
                    [*CLI, "connect", str(lid.peer_id), "--identity", str(key), "--relay",
                     entry, "--duration", str(LOSS_DURATION_S), "--max-loss", "100", "--json"],
                    name=f"loss-{host}-{t}", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
                r = _json(proc, 90)
                rows.append(
                    {
                        "returncode": r.get("returncode"),
                        "relay_transport": r.get("relay_transport"),
                        "frames_sent": r.get("frames_sent"),
                        "frames_lost": r.get("frames_lost"),
                        "rtt_ms": r.get("rtt_ms"),
                        "max_gap_ms": r.get("max_gap_ms"),
                        "error": r.get("error"),
                    }
                )
            out[label] = rows
        listener.terminate()
        lab.stop(relay)
    return out


def bench_relay_stream_lab() -> dict[str, Any]:
    import tempfile

    runs = []
    with tempfile.TemporaryDirectory(prefix="relay-stream-lab-") as tmp:
        for rtt in RTTS:
            runs.append(_lab_run(rtt, Path(tmp), MIDCALL_RUNS if rtt == MIDCALL_RTT else 0))
        loss = _loss_run(Path(tmp))
    summary = {
        str(r["rtt_ms"]): {
            label: r["connect"][label]["connected_from_start_ms_median"]
            for label in ("udp-blocked", "eim-apdf")
        }
        for r in runs
    }
    mid = [m for r in runs for m in r["midcall"]]
    lost = [m["frames_lost"] for m in mid if m["frames_lost"] is not None]
    gaps = [m["max_gap_ms"] for m in mid if m["max_gap_ms"] is not None]
    return {
        "how": __doc__,
        "connected_from_start_ms_median": summary,
        "midcall": {
            "runs": len(mid),
            "survived": sum(1 for m in mid if m["returncode"] in (0, 3) and m["frames_sent"]),
            "on_stream": sum(1 for m in mid if m["relay_transport"] in ("tls", "websocket")),
            "frames_lost_median": statistics.median(lost) if lost else None,
            "frames_lost_max": max(lost) if lost else None,
            "max_gap_ms_median": statistics.median(gaps) if gaps else None,
            "max_gap_ms_max": max(gaps) if gaps else None,
        },
        "loss": {"rtt_ms": LOSS_RTT, "loss_percent": LOSS_PERCENT, "calls": loss},
        "runs": runs,
    }


if __name__ == "__main__":
    print(json.dumps(bench_relay_stream_lab(), indent=2))
