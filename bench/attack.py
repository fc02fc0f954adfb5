"""The relay under attack on loopback, in real time (issue 12): what a flood costs its users.

A relay process (``punchthrough relay``, asyncio) on 127.0.0.1; a flooder process sends one kind
of hostile datagram at a stated rate for a bounded time; meanwhile this process measures
(1) relay registration time, ``REGISTRATIONS`` fresh clients one after another (median, max), and
(2) a relayed call: 50 frames/s for ``CALL_S`` seconds between two registered clients (frames
lost). Attacks, at the rates the issue names:

- ``none``: the baseline;
- ``junk_initials``: 3,000/s random bytes behind a plausible QUIC v1 Initial header (finding 2);
- ``stun_370_attributes``: 1,000/s 1,500-byte Binding requests with 370 empty attributes
  (finding 4: each cost 63x a normal request before the attribute cap).

Forged DATA frames (finding 3) need a spoofed source address, which loopback cannot give a second
process; ``tests/unit/test_relay_loopback.py`` covers them by sending from the victim's socket.
Both processes share this machine's 2 cores with the measuring process, as an attacker on the
same host would.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any, Final

#: Fresh registrations timed per attack, and the relayed call's length and rate.
REGISTRATIONS: Final = 10
CALL_S: Final = 5.0
CALL_PPS: Final = 50.0
#: The flood outlasts the measurements; the flooder stops itself after this long regardless.
FLOOD_MAX_S: Final = 30.0

ATTACKS: Final[dict[str, int]] = {"none": 0, "junk_initials": 3000, "stun_370_attributes": 1000}

_FLOODER = r"""
import os, random, socket, struct, sys, time
port, kind, rate, limit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
rng = random.Random(1)
def junk_initial():
    return (b"\xc3\x00\x00\x00\x01\x08" + rng.randbytes(8) + b"\x08" + rng.randbytes(8)
            + b"\x00\x44\xb0" + rng.randbytes(1200))
def stun_370():
    attrs = b"".join(struct.pack("!HH", 0x8000 + i, 0) for i in range(370))
    return struct.pack("!HHI", 0x0001, len(attrs), 0x2112A442) + os.urandom(12) + attrs
make = junk_initial if kind == "junk_initials" else stun_370
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t0, sent = time.monotonic(), 0
while time.monotonic() - t0 < limit:
    now = time.monotonic() - t0
    while sent < rate * now:
        try:
            s.sendto(make(), ("127.0.0.1", port))
        except OSError:
            pass
        sent += 1
    time.sleep(0.002)
"""


async def _measure(relay: tuple[str, int]) -> dict[str, Any]:
    from relay_load import offer_load

    from punchthrough.identity import Identity
    from punchthrough.netio import UdpNetwork
    from punchthrough.relay import RelayClient
    from punchthrough.transport import DatagramMux

    loop = asyncio.get_running_loop()
    times: list[float] = []
    failures = 0
    for _ in range(REGISTRATIONS):
        sock = await UdpNetwork().bind("127.0.0.1")
        mux = DatagramMux(sock)
        t0 = loop.time()
        try:
            client = await RelayClient.connect(mux, relay, Identity.generate(), timeout=5.0)
            times.append((loop.time() - t0) * 1000)
            await client.close()
        except Exception:  # a refused or timed-out registration is the figure, not a crash
            failures += 1
        finally:
            mux.close()
            sock.close()
    call = await offer_load(relay, CALL_PPS, int(CALL_PPS * CALL_S))
    return {
        "registrations": REGISTRATIONS,
        "registration_failures": failures,
        "registration_ms_median": round(statistics.median(times), 1) if times else None,
        "registration_ms_max": round(max(times), 1) if times else None,
        "call_frames_sent": call.sent,
        "call_frames_lost": call.sent - call.delivered,
        "call_loss": round(1 - call.delivered / call.sent, 4),
    }


def bench_attack(port: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attack, rate in ATTACKS.items():
        relay = subprocess.Popen(
            [sys.executable, "-m", "punchthrough", "relay", "--listen", f"127.0.0.1:{port}",
             "--stats-interval", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        flooder = None
        try:
            time.sleep(1.0)  # start-up (imports); registration retries cover the rest
            if rate:
                flooder = subprocess.Popen(
                    [sys.executable, "-c", _FLOODER, str(port), attack, str(rate), str(FLOOD_MAX_S)]
                )
                time.sleep(0.5)  # the flood is on before anything is measured
            out[attack] = {"rate_per_s": rate, **asyncio.run(_measure(("127.0.0.1", port)))}
        finally:
            for proc in (flooder, relay):
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    out["how"] = __doc__.split("\n\n")[0] if __doc__ else ""
    return out
