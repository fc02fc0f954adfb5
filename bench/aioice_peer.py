"""One aioice peer, run INSIDE a lab host namespace by bench/aioice_lab.py.

Gathers (host, srflx from our STUN server, relay from coturn TURN), writes its ICE parameters to
OUT, waits for the other peer's file IN (bounded), runs aioice's checks (bounded), and for the
controlling side sends one datagram and waits for its echo. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import aioice

EXCHANGE_TIMEOUT = 20.0  # s: the other peer's gathering and start-up
CONNECT_TIMEOUT = 15.0  # s: aioice's own check list gives up well before on dead pairs
ECHO_TIMEOUT = 3.0


def _hp(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


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
    out: dict[str, object] = {"role": a.role}
    try:
        await conn.gather_candidates()
        out["gather_ms"] = round((loop.time() - t0) * 1000, 1)
        out["local_types"] = sorted({c.type for c in conn.local_candidates})
        mine = {
            "ufrag": conn.local_username,
            "pwd": conn.local_password,
            "candidates": [c.to_sdp() for c in conn.local_candidates],
        }
        tmp = Path(a.out + ".tmp")
        tmp.write_text(json.dumps(mine))
        os.replace(tmp, a.out)
        deadline = time.monotonic() + EXCHANGE_TIMEOUT
        while not Path(a.inp).exists():
            if time.monotonic() > deadline:
                out["error"] = "no candidates from the other peer"
                return out
            await asyncio.sleep(0.01)
        theirs = json.loads(Path(a.inp).read_text())
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
    print(json.dumps(asyncio.run(main(ap.parse_args()))), flush=True)
