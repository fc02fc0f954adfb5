"""Frame tokens (issue 12, finding 3): what authenticating every relay frame costs, and what a
flood of frames with forged source addresses costs a call.

- ``cost``: the relay's forwarding hot path (``Forwarder`` on one SEND frame, 160-byte payload,
  with a no-op socket) per frame, against the token check alone (slice + ``compare_digest``,
  the same check a client makes on a DATA frame); ``timeit``, best of 5.
- ``flood`` (root: a raw socket forges the source addresses): a relay and two clients in this
  process on loopback; a flooder process sends ``FORGED_PER_S`` SEND frames a second from
  Alice's address to the relay and as many DATA frames from the relay's address to Bob, each
  with a guessed token, while Alice sends Bob a 50 pps call. Figures: the call's frames lost,
  the forged frames dropped by the relay and by Bob, and what was charged to Alice.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import timeit
from collections import Counter
from typing import Any, Final

#: Each forged kind per second (5x a client's whole packet budget, RelayLimits: 2,000/s).
FORGED_PER_S: Final = 10_000
CALL_PPS: Final = 50
CALL_S: Final = 5.0
#: The flooder stops itself after this long regardless.
FLOOD_MAX_S: Final = CALL_S + 2.0
PAYLOAD: Final = bytes(160)

_FLOODER = r"""
import json, random, sys, time
from punchthrough.lab.spoof import SpoofingSender
spec = json.loads(sys.argv[1])
rng = random.Random(3)
packets = [(tuple(src), tuple(dst), bytes.fromhex(p)) for src, dst, p in spec["packets"]]
rate, limit = spec["rate"], spec["limit"]
with SpoofingSender() as s:
    t0, n = time.monotonic(), 0
    while time.monotonic() - t0 < limit:
        due = int((time.monotonic() - t0) * rate)
        while n < due:
            s.send(*packets[n % len(packets)])
            n += 1
        time.sleep(0.001)
    print(s.sent)
"""


def _cost() -> dict[str, Any]:
    from hmac import compare_digest

    from punchthrough.identity import Identity
    from punchthrough.relay.forward import Forwarder
    from punchthrough.relay.frames import PEER_ID_END, SEND_HEADER_LENGTH, encode_send
    from punchthrough.relay.limits import ClientLimiter, RelayLimits
    from punchthrough.relay.registry import LocalRegistry, Registration

    class NullSocket:
        closed = False

        def sendto(self, data: bytes, addr: Any) -> None:
            pass

    async def go() -> dict[str, Any]:
        limits = RelayLimits(packets_per_second=1e12, packet_burst=1e12,
                             bytes_per_second=1e15, byte_burst=1e15)  # fmt: skip
        registry = LocalRegistry()
        local = ("127.0.0.1", 3478)
        regs = []
        for i, ident in enumerate((Identity.generate(), Identity.generate())):
            reg = Registration(ident.peer_id, ("127.0.0.1", 40000 + i), local, 0.0,
                               ClientLimiter(limits, 0.0), frame_token=os.urandom(8))  # fmt: skip
            registry.add(reg)
            regs.append(reg)
        sock = NullSocket()
        fwd = Forwarder({local: sock}, registry, Counter())  # type: ignore[dict-item]
        on_frame = fwd.handler(local, sock)  # type: ignore[arg-type]
        frame = encode_send(regs[1].peer_id, regs[0].frame_token, PAYLOAD)
        src = regs[0].address
        n = 200_000
        per_frame = min(timeit.repeat(lambda: on_frame(frame, src), number=n, repeat=5)) / n
        token = regs[0].frame_token
        check = min(
            timeit.repeat(
                lambda: compare_digest(frame[PEER_ID_END:SEND_HEADER_LENGTH], token),
                number=n,
                repeat=5,
            )
        ) / n
        return {
            "relay_on_frame_us": round(per_frame * 1e6, 3),
            "token_check_us": round(check * 1e6, 3),
            "token_check_share": round(check / per_frame, 3),
            "frames_timed": n,
        }

    return asyncio.run(go())


async def _flood() -> dict[str, Any]:
    import random

    from punchthrough.identity import Identity
    from punchthrough.netio import UdpNetwork
    from punchthrough.relay import RelayClient, RelayServer
    from punchthrough.relay.frames import encode_data, encode_send
    from punchthrough.transport import DatagramMux

    rng = random.Random(12)
    net = UdpNetwork()
    server = await RelayServer.start(net, [("127.0.0.1", 0)])
    relay = server.addresses[0]
    socks = [await net.bind("127.0.0.1") for _ in range(2)]
    muxes = [DatagramMux(s) for s in socks]
    clients: list[RelayClient] = []
    flooder = None
    try:
        for mux in muxes:
            clients.append(await RelayClient.connect(mux, relay, Identity.generate(), timeout=5))
        alice, bob = clients
        got: list[bytes] = []
        bob.set_receiver(lambda _peer, payload: got.append(payload))
        packets = []
        for _ in range(64):
            guess = rng.randbytes(8)
            packets.append([relay, socks[1].local_address,
                            encode_data(alice.peer_id, guess, b"forged").hex()])  # fmt: skip
            packets.append([socks[0].local_address, relay,
                            encode_send(bob.peer_id, guess, b"forged").hex()])  # fmt: skip
        spec = {"packets": packets, "rate": 2 * FORGED_PER_S, "limit": FLOOD_MAX_S}
        flooder = subprocess.Popen(
            [sys.executable, "-c", _FLOODER, json.dumps(spec)], stdout=subprocess.PIPE, text=True
        )
        await asyncio.sleep(0.5)  # the flood is on before the call starts
        frames = int(CALL_PPS * CALL_S)
        for n in range(frames):
            alice.send(bob.peer_id, b"real" + n.to_bytes(2, "big"))
            await asyncio.sleep(1 / CALL_PPS)
        await asyncio.sleep(0.3)
        out, _ = await asyncio.to_thread(flooder.communicate, timeout=FLOOD_MAX_S + 5)
        forged = int(out.strip() or 0)
        real = sum(1 for p in got if p.startswith(b"real"))
        alice_stats = next(p.stats for p in server.peers() if p.peer_id == alice.peer_id)
        return {
            "forged_per_s_each_kind": FORGED_PER_S,
            "forged_sent": forged,
            "relay_dropped_bad_token": server.stats.get("dropped_bad_token", 0),
            "client_dropped_bad_token": bob.stats.get("dropped_bad_token", 0),
            "forged_delivered_to_app": sum(1 for p in got if not p.startswith(b"real")),
            "charged_to_victim_dropped_rate": alice_stats.get("dropped_rate", 0),
            "call_frames_sent": frames,
            "call_frames_lost": frames - real,
        }
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait()
        for client in clients:
            await client.close()
        for mux, sock in zip(muxes, socks, strict=True):
            mux.close()
            sock.close()
        await server.close()


def bench_forged_frames() -> dict[str, Any]:
    out: dict[str, Any] = {"how": __doc__, "cost": _cost()}
    if os.geteuid() == 0:
        out["flood"] = asyncio.run(_flood())
    else:
        out["flood"] = "skipped: forging a source address needs root (raw socket)"
    return out


if __name__ == "__main__":
    print(json.dumps(bench_forged_frames(), indent=2))
