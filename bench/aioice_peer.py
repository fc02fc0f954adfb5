"""One aioice peer, run INSIDE a lab host namespace by bench/aioice_lab.py.

Gathers (host, srflx from our STUN server, relay from coturn TURN), then an offer/answer
exchange through files, as WebRTC signals it: the controlling peer (offerer) writes its offer to
OUT; the controlled peer (answerer) waits for the offer (IN), writes its answer to OUT and starts
its checks at once; the offerer waits for the answer, then SIGNAL_MS more (the answer's one-way
trip through a signalling server) before starting its own checks. Both waits are bounded, and so
are aioice's checks. Then the controlling side sends one datagram and waits for its echo. Prints
one JSON line.

Why the offset matters in the lab (not only for realism): with both peers starting their checks
within a few ms of each other, the first checks cross inside the routers. The lab's delay holds
each packet in the router between conntrack's creation of its entry (prerouting) and the entry's
confirmation (postrouting), for delay_ms; an eim-eif router that admits (DNATs) the other peer's
early check to a mapped port while its own host's first check to that peer is held gets that
check a *new* mapped port at SNAT (a clash with the just-confirmed inbound entry). The other peer
then sees the checks, with USE-CANDIDATE, arrive from a peer-reflexive port whose responses come
back from the original port ("source address mismatch"), so the controlled side never completes
while the controlling side does. That happens when one side starts 1 to 2 router delays before the
other (12.5-25 ms at RTT 50 ms): SIGNAL_MS must stay above 2 * router delay. On a real router the
window is microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aioice

EXCHANGE_TIMEOUT = 20.0  # s: the other peer's gathering and start-up
POLL_S = 0.005  # s: file poll period while waiting for the offer / answer
SIGNAL_MS = 50.0  # default one-way signalling delay of the answer (see the module docstring)
CONNECT_TIMEOUT = 15.0  # s: aioice's own check list gives up well before on dead pairs
ECHO_TIMEOUT = 3.0


def _hp(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def _write(path: str, obj: dict[str, object]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


async def _wait_for(path: str) -> dict[str, Any] | None:
    deadline = time.monotonic() + EXCHANGE_TIMEOUT
    while not Path(path).exists():
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(POLL_S)
    return json.loads(Path(path).read_text())


async def main(a: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    conn = aioice.Connection(
        ice_controlling=a.role == "controlling",
        stun_server=_hp(a.stun),
        turn_server=_hp(a.turn) if a.turn else None,
        turn_username="u" if a.turn else None,
        turn_password="p" if a.turn else None,
        use_ipv6=False,
    )
    # loop.time() is time.monotonic(), one clock for every process on the machine: the lab
    # takes "both peers up" as the later of the two t0 (process start-up skew is not ICE's).
    out: dict[str, object] = {"role": a.role, "t0": t0}
    try:
        await conn.gather_candidates()
        out["gather_ms"] = round((loop.time() - t0) * 1000, 1)
        out["local_types"] = sorted({c.type for c in conn.local_candidates})
        mine = {
            "ufrag": conn.local_username,
            "pwd": conn.local_password,
            "candidates": [c.to_sdp() for c in conn.local_candidates],
        }
        if a.role == "controlling":
            _write(a.out, mine)  # the offer
        theirs = await _wait_for(a.inp)
        if theirs is None:
            out["error"] = "no candidates from the other peer"
            return out
        if a.role == "controlled":
            _write(a.out, mine)  # the answer, once the offer is in
        else:
            await asyncio.sleep(a.signal_ms / 1000)  # the answer's trip to the offerer
        conn.remote_username, conn.remote_password = theirs["ufrag"], theirs["pwd"]
        for sdp in theirs["candidates"]:
            await conn.add_remote_candidate(aioice.Candidate.from_sdp(sdp))
        await conn.add_remote_candidate(None)
        t1 = loop.time()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await conn.connect()
        except (ConnectionError, TimeoutError) as e:
            out["error"] = f"connect failed: {e!r}"
            out["fail_ms"] = round((loop.time() - t1) * 1000, 1)
            return out
        out["connect_ms"] = round((loop.time() - t1) * 1000, 1)
        out["total_ms"] = round((loop.time() - t0) * 1000, 1)
        out["t_connected"] = loop.time()
        pair = conn._nominated.get(1)
        if pair is not None:
            out["local_type"] = pair.local_candidate.type
            out["remote_type"] = pair.remote_candidate.type
            out["path"] = (
                "relay" if "relay" in (out["local_type"], out["remote_type"]) else "direct"
            )
        try:
            async with asyncio.timeout(ECHO_TIMEOUT):
                if a.role == "controlling":
                    t2 = loop.time()
                    await conn.send(b"ping")
                    await conn.recv()
                    out["echo_rtt_ms"] = round((loop.time() - t2) * 1000, 1)
                else:
                    data = await conn.recv()
                    await conn.send(data)
        except (ConnectionError, TimeoutError) as e:
            out["echo_error"] = repr(e)
        return out
    finally:
        await conn.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["controlling", "controlled"])
    ap.add_argument("--stun", required=True)
    ap.add_argument("--turn")
    ap.add_argument("--out", required=True)
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--signal-ms", type=float, default=SIGNAL_MS)
    print(json.dumps(asyncio.run(main(ap.parse_args()))), flush=True)
