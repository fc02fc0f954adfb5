"""One-way delay for a lab router: an iptables NFQUEUE rule plus a userspace delayer.

This kernel has no netem (CONFIG_NET_SCH_NETEM unset) and nft's own `queue` statement is missing
(CONFIG_NFT_QUEUE unset), but iptables' `-j NFQUEUE` target works (shared/natlab README). So each
router with `RouterOptions(delay_ms=...)` gets a rule in iptables' *mangle* FORWARD chain (a table
our nft rulesets never name, so `table ip filter` stays ours) that hands every forwarded
packet to queue QUEUE_NUM, and this module, run inside the router namespace, gives each queued
packet its ACCEPT verdict `delay_ms` later. Verdicts are issued in arrival order from asyncio
timers, so the queue is FIFO and nothing is reordered.

Both directions through the router are delayed, so a router with delay d adds 2d to the round
trip of every flow that crosses it: between two hosts each behind such a router the RTT is
2 * (d_a + d_b) on the direct path and on the relayed path alike (the relay sits on the public
segment, which adds nothing).

Run (the lab does this): `ip netns exec R python -m punchthrough.lab.delay --delay-ms 10`.
It prints one JSON line `{"event": "ready", ...}` once the queue is bound, and its counters as a
JSON line on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from netfilterqueue import Packet

#: Queue number inside the router's namespace (nfnetlink_queue is per network namespace, so
#: every router can use the same number).
QUEUE_NUM: Final = 0
#: Packets the kernel holds for us before it drops (at 50 pps x 2 peers x 100 ms that is ~10;
#: the relay benchmark's bursts are the real sizing: a few thousand).
QUEUE_MAX_LEN: Final = 8192
#: Kernel socket receive buffer for the queue's netlink socket: large enough for
#: QUEUE_MAX_LEN packet headers in flight (COPY_META sends no payload).
SOCK_LEN: Final = 8 * 1024 * 1024
#: iptables table and chain holding the rule; mangle runs before filter in FORWARD.
IPT_TABLE: Final = "mangle"
IPT_CHAIN: Final = "FORWARD"
MAX_DELAY_MS: Final = 10_000.0  # 10 s: anything longer is a typo, and holds too many packets


def router_delay_for_rtt(rtt_ms: float) -> float:
    """Per-router one-way delay giving round-trip time `rtt_ms` between two hosts that each sit
    behind their own delayed router (2 routers x 2 directions), on the direct and the relayed
    path alike; a host's RTT to a server on the public segment is then rtt_ms / 2."""
    if rtt_ms < 0:
        raise ValueError(f"rtt_ms must be >= 0, got {rtt_ms}")
    return rtt_ms / 4


def iptables_rule(queue_num: int = QUEUE_NUM) -> list[str]:
    """The rule (after `-A/-D/-C CHAIN`) queueing every forwarded packet to `queue_num`.

    No `--queue-bypass`: if the delayer is missing the packets drop, so a broken delayer shows
    as a broken lab instead of silently undelayed figures.
    """
    return ["-j", "NFQUEUE", "--queue-num", str(queue_num)]


def iptables_argv(action: str, queue_num: int = QUEUE_NUM) -> list[str]:
    """`iptables -w -t mangle <action> FORWARD <rule>` with action one of -A, -D, -C."""
    if action not in ("-A", "-D", "-C"):
        raise ValueError(f"iptables action must be -A, -D or -C, not {action!r}")
    return ["iptables", "-w", "-t", IPT_TABLE, action, IPT_CHAIN, *iptables_rule(queue_num)]


def queue_bound(proc_text: str, queue_num: int = QUEUE_NUM) -> bool:
    """True when /proc/net/netfilter/nfnetlink_queue (read inside the namespace) lists a
    listener on `queue_num` (first column: queue number; second: the listener's port id)."""
    for line in proc_text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == str(queue_num):
            return True
    return False


class Delayer:
    """Holds each queued packet `delay` seconds on the running loop, then accepts it."""

    def __init__(self, delay: float) -> None:
        if not 0.0 <= delay <= MAX_DELAY_MS / 1000:
            raise ValueError(f"delay must be within 0..{MAX_DELAY_MS / 1000} s, got {delay}")
        self.delay = delay
        self.stats = {"queued": 0, "accepted": 0, "errors": 0}
        self._loop = asyncio.get_running_loop()

    def on_packet(self, pkt: Packet) -> None:
        self.stats["queued"] += 1
        self._loop.call_later(self.delay, self._accept, pkt)

    def _accept(self, pkt: Packet) -> None:
        try:
            pkt.accept()
        except (OSError, RuntimeError):  # queue unbound meanwhile, or the verdict was refused
            self.stats["errors"] += 1
        else:
            self.stats["accepted"] += 1


async def serve(delay_ms: float, queue_num: int = QUEUE_NUM) -> dict[str, int]:
    """Bind the queue and delay packets until SIGTERM/SIGINT; returns the counters."""
    from netfilterqueue import COPY_META, NetfilterQueue

    loop = asyncio.get_running_loop()
    delayer = Delayer(delay_ms / 1000)
    nfq = NetfilterQueue()
    stop = asyncio.Event()
    try:
        nfq.bind(queue_num, delayer.on_packet, QUEUE_MAX_LEN, COPY_META, 0xFFFF, SOCK_LEN)
        fd = nfq.get_fd()
        loop.add_reader(fd, nfq.run, False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"event": "ready", "queue": queue_num, "delay_ms": delay_ms}), flush=True)
        await stop.wait()
        loop.remove_reader(fd)
        # let held packets go rather than dropping them with the queue
        await asyncio.sleep(delayer.delay)
    finally:
        nfq.unbind()
    return delayer.stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--queue", type=int, default=QUEUE_NUM)
    args = ap.parse_args(argv)
    if not 0.0 <= args.delay_ms <= MAX_DELAY_MS:
        ap.error(f"--delay-ms must be within 0..{MAX_DELAY_MS:g}")
    stats = asyncio.run(serve(args.delay_ms, args.queue))
    print(json.dumps({"event": "stopped", **stats}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
