"""Relay forwarding at saturation: ours (asyncio, uvloop, fast path) against coturn, same run.

The server is pinned to CPU 1 (``taskset``); the load runs on CPU 0 as two processes: a sender
that repeats one 64-datagram batch as fast as it can (``netio.mmsg``: one UDP GSO message, so
the kernel builds the 64 datagrams at the cost of about one), and a receiver that counts what
arrives (``recvmmsg`` with UDP_GRO: the kernel hands runs over as one buffer; counted by bytes).
Forwarded = counted at the receiver. The server gets every datagram separately either way.
Payload: 160 bytes (a 20 ms voice frame). One datagram in and one out per forwarded packet for
both servers:

- ours: a sender and a receiver registered with the relay (RelayClient), then their sockets are
  handed to the load processes; the sender's datagrams are SEND frames with its frame token
  (frame authentication and the per-client limits stay on, with the limits raised past the
  offered load so that nothing is dropped by policy).
- coturn (``turnserver --no-auth``, one relay thread): the receiver allocates a TURN relay
  address and binds a channel to the sender (RFC 8656 sections 7 and 12); the sender sends plain
  UDP to the relay address, which coturn forwards to the receiver as ChannelData.

``paced``: the realistic load, 500 calls each sending a 160-byte frame every 20 ms (25,000
frames/s, phases spread over the interval), one socket per client (ours: 1,000 registered
clients over 127.0.K.1 addresses; coturn: 500 allocations): the server's CPU and frames lost.

Per trial: packets forwarded per second, the server's CPU seconds (utime + stime from
/proc/PID/stat over the window), and from them CPU-s per million packets and packets per
CPU-second (= per core). A trial's server is saturated when its CPU use is near 1.0 core; on a
2-core machine the load generator shares one core between sender and receiver, so the rate it
can offer is itself limited: the report says how busy the server was, and the CPU figures
(which do not depend on the offered rate) are the ones to compare.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

from relay_vs_coturn import LOAD_CPU, SERVER_CPU, _free_port, _stop, _wait_udp, cpu_seconds

PAYLOAD: Final = 160
DURATION: Final = 3.0
TRIALS: Final = 3
SETTLE: Final = 0.3
#: recv/send buffers of the load sockets (SO_RCVBUFFORCE needs root; else the kernel's max).
LOAD_BUFFER: Final = 8 * 1024 * 1024

_SENDER = r"""
import socket, sys, time
from punchthrough.netio import mmsg
fd, dest_ip, dest_port, frame, duration = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                           bytes.fromhex(sys.argv[4]), float(sys.argv[5]))
sock = socket.socket(fileno=fd)
gso = mmsg.gso_supported(sock)
rb = mmsg.RecvBatch(sock.family)
sb = mmsg.SendBatch(rb, gso=gso)
dest = mmsg.encode_sockaddr(sock.family, (dest_ip, dest_port))
for i in range(rb.count):
    rb.data[i * rb.slot : i * rb.slot + len(frame)] = frame
    sb.add(i, len(frame), dest)
messages = sb._messages
sent = 0
end = time.monotonic() + duration
while time.monotonic() < end:
    for _ in range(16):
        sb.pending, sb._messages = rb.count, messages  # the same batch again
        ok, _failed = sb.flush(sock)
        sent += ok
print(sent, flush=True)
"""

#: Counts forwarded packets by bytes (all are the same size): with UDP_GRO the kernel hands a
#: run of them over as one buffer, so counting costs the load core almost nothing.
_RECEIVER = r"""
import select, socket, sys, time
from punchthrough.netio import mmsg
fd, size = int(sys.argv[1]), int(sys.argv[2])
duration, settle = float(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(fileno=fd)
try:
    sock.setsockopt(mmsg.SOL_UDP, 104, 1)  # UDP_GRO (linux/udp.h)
except OSError:
    pass
rb = mmsg.RecvBatch(sock.family, count=16, slot=65536)
poll = select.poll()
poll.register(fd, select.POLLIN)
print("ready", flush=True)
start = time.monotonic() + settle
end = start + duration
counted = 0
while True:
    now = time.monotonic()
    if now >= end:
        break
    n = rb.recv(sock)
    if not n:
        poll.poll(5)
        continue
    if now >= start:
        counted += sum(rb.lengths[i] for i in range(n)) // size
print(counted, flush=True)
"""


def _load(
    send_fd: int,
    dest: tuple[str, int],
    frame: bytes,
    recv_fd: int,
    pid: int,
    size: int,
    cpu_list: str = LOAD_CPU,
) -> dict[str, Any]:
    """One trial: receiver and sender on ``cpu_list``; the server's CPU over the window."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    pin = ["taskset", "-c", cpu_list, sys.executable, "-c"]
    receiver = subprocess.Popen(
        [*pin, _RECEIVER, str(recv_fd), str(size), str(DURATION), str(SETTLE)],
        pass_fds=(recv_fd,), stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("load receiver did not start")
        sender = subprocess.Popen(
            [*pin, _SENDER, str(send_fd), dest[0], str(dest[1]), frame.hex(),
             str(DURATION + SETTLE + 0.2)],
            pass_fds=(send_fd,), stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        time.sleep(SETTLE)
        c0 = cpu_seconds(pid)
        time.sleep(DURATION)
        cpu = cpu_seconds(pid) - c0
        sent = int((sender.communicate(timeout=30)[0] or "0").split()[-1])
        counted = int((receiver.communicate(timeout=30)[0] or "0").split()[-1])
    finally:
        for p in (receiver,):
            if p.poll() is None:
                p.kill()
                p.wait()
    return {
        "offered_pps": round(sent / (DURATION + SETTLE + 0.2)),
        "forwarded_pps": round(counted / DURATION),
        "server_cpu_cores": round(cpu / DURATION, 3),
        "cpu_s_per_million": round(cpu / counted * 1e6, 2) if counted else None,
        "pps_per_core": round(counted / cpu) if cpu > 0 else None,
    }


def _big_buffers(sock: socket.socket) -> None:
    for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, LOAD_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, LOAD_BUFFER)


# -- ours ----------------------------------------------------------------------------------------
async def _register(relay: tuple[str, int]) -> tuple[list[Any], list[Any], bytes]:
    """Two clients registered with the relay; their sockets no longer read in this process
    (the load processes get them). Returns (sockets, clients and muxes, the sender's frame)."""
    from punchthrough.identity import Identity
    from punchthrough.netio.batched import BatchedUdpSocket
    from punchthrough.relay import RelayClient
    from punchthrough.relay.frames import encode_send
    from punchthrough.transport import DatagramMux

    socks: list[BatchedUdpSocket] = []
    rest: list[Any] = []
    clients: list[RelayClient] = []
    for _ in range(2):
        sock = await BatchedUdpSocket.bind("127.0.0.1", batched=False)
        _big_buffers(sock._sock)
        socks.append(sock)
        mux = DatagramMux(sock)
        rest.append(mux)
        clients.append(await RelayClient.connect(mux, relay, Identity.generate(), timeout=5))
    a, b = clients
    frame = encode_send(b.peer_id, a.frame_token, bytes(PAYLOAD))
    for sock in socks:
        asyncio.get_running_loop().remove_reader(sock._fd)
    return socks, [*clients, *rest], frame


def ours_trials(flags: list[str], trials: int) -> list[dict[str, Any]]:
    proc, port = _start_relay(SERVER_CPU, flags)
    out = []
    try:
        for _ in range(trials):

            async def one() -> dict[str, Any]:
                socks, others, frame = await _register(("127.0.0.1", port))
                try:
                    a, b = (s._sock.fileno() for s in socks)
                    return await asyncio.to_thread(
                        _load, a, ("127.0.0.1", port), frame, b, proc.pid, len(frame)
                    )
                finally:
                    for obj in others:
                        res = obj.close()
                        if asyncio.iscoroutine(res):
                            await res
                    for s in socks:
                        s.close()

            out.append(asyncio.run(one()))
    finally:
        _stop(proc)
    return out


# -- coturn --------------------------------------------------------------------------------------
_MAGIC: Final = 0x2112A442


def _stun(method: int, attrs: bytes) -> bytes:
    return struct.pack("!HHI", method, len(attrs), _MAGIC) + os.urandom(12) + attrs


def _xor_address(ip: str, port: int) -> bytes:
    return struct.pack("!BBH", 0, 1, port ^ (_MAGIC >> 16)) + struct.pack(
        "!I", struct.unpack("!I", socket.inet_aton(ip))[0] ^ _MAGIC
    )


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def _turn_relay_address(sock: socket.socket, server: tuple[str, int]) -> tuple[str, int]:
    """Allocate (REQUESTED-TRANSPORT UDP) and return XOR-RELAYED-ADDRESS."""
    sock.settimeout(2)
    sock.sendto(_stun(0x0003, _attr(0x0019, bytes([17, 0, 0, 0]))), server)
    data = sock.recv(2048)
    if struct.unpack_from("!H", data)[0] != 0x0103:
        raise RuntimeError(f"TURN Allocate refused: {data[:4].hex()}")
    at = 20
    while at < len(data):
        kind, length = struct.unpack_from("!HH", data, at)
        if kind == 0x0016:
            port = struct.unpack_from("!H", data, at + 6)[0] ^ (_MAGIC >> 16)
            ip = struct.unpack_from("!I", data, at + 8)[0] ^ _MAGIC
            return socket.inet_ntoa(struct.pack("!I", ip)), port
        at += 4 + length + (-length % 4)
    raise RuntimeError("no XOR-RELAYED-ADDRESS in the Allocate answer")


def _turn_channel(sock: socket.socket, server: tuple[str, int], peer: tuple[str, int]) -> None:
    attrs = _attr(0x000C, struct.pack("!HH", 0x4000, 0)) + _attr(0x0012, _xor_address(*peer))
    sock.sendto(_stun(0x0009, attrs), server)
    data = sock.recv(2048)
    if struct.unpack_from("!H", data)[0] != 0x0109:
        raise RuntimeError(f"TURN ChannelBind refused: {data[:4].hex()}")


def _start_coturn(tmp: Path, ports: tuple[int, int]) -> tuple[subprocess.Popen[bytes], int]:
    """coturn without authentication (``--no-auth``), one relay thread, on SERVER_CPU, its relay
    ports in ``ports``; files in ``tmp``."""
    port = _free_port()
    argv = [
        "taskset", "-c", SERVER_CPU,
        "turnserver", "-n", "--no-auth", "-L", "127.0.0.1", "--relay-ip", "127.0.0.1",
        "--listening-port", str(port), "--min-port", str(ports[0]), "--max-port", str(ports[1]),
        "--relay-threads", "1", "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli",
        "--no-stdout-log", "--log-file", str(tmp / "turn.log"), "--pidfile",
        str(tmp / "turn.pid"), "--userdb", str(tmp / "turn.db"),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_udp(port, proc)
    except BaseException:
        _stop(proc)
        raise
    return proc, port


def coturn_trials(trials: int) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-coturn-sat-"))
    proc, port = _start_coturn(tmp, (53000, 53999))
    out = []
    try:
        for _ in range(trials):
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for s in (a, b):
                    s.bind(("127.0.0.1", 0))
                    _big_buffers(s)
                relayed = _turn_relay_address(b, ("127.0.0.1", port))
                _turn_channel(b, ("127.0.0.1", port), a.getsockname())
                # forwarded as ChannelData: a 4-byte header (RFC 8656 section 12.4)
                out.append(
                    _load(a.fileno(), relayed, bytes(PAYLOAD), b.fileno(), proc.pid, PAYLOAD + 4)
                )
            finally:
                a.close()
                b.close()
    finally:
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _start_relay(cpu: str, flags: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    argv = [
        "taskset", "-c", cpu, sys.executable, "-m", "punchthrough", "relay",
        "--listen", f"127.0.0.1:{port}", "--pps", "100000000", "--bps", "100000000000",
        "--stats-interval", "0", *flags,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_udp(port, proc)
    except BaseException:
        _stop(proc)
        raise
    return proc, port


def scaling_trial(processes: int, flags: list[str]) -> dict[str, Any]:
    """``processes`` independent relays (fleet members, one per core), each loaded by its own
    pair of clients at once; every load process may run on any core (they share them)."""
    cpus = os.cpu_count() or 1
    relays = [_start_relay(str((1 + k) % cpus), flags) for k in range(processes)]
    try:

        async def one() -> list[dict[str, Any]]:
            regs = [await _register(("127.0.0.1", port)) for _, port in relays]
            try:
                jobs = []
                for (proc, port), (socks, _others, frame) in zip(relays, regs, strict=True):
                    a, b = (s._sock.fileno() for s in socks)
                    load = (
                        a,
                        ("127.0.0.1", port),
                        frame,
                        b,
                        proc.pid,
                        len(frame),
                        f"0-{cpus - 1}",
                    )
                    jobs.append(asyncio.to_thread(_load, *load))
                return list(await asyncio.gather(*jobs))
            finally:
                for socks, others, _ in regs:
                    for obj in others:
                        res = obj.close()
                        if asyncio.iscoroutine(res):
                            await res
                    for s in socks:
                        s.close()

        runs = asyncio.run(one())
    finally:
        for proc, _ in relays:
            _stop(proc)
    return {
        "processes": processes,
        "forwarded_pps_total": sum(r["forwarded_pps"] for r in runs),
        "server_cpu_cores_total": round(sum(r["server_cpu_cores"] for r in runs), 3),
        "per_process": runs,
    }


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(key: str) -> dict[str, Any]:
        vals = [r[key] for r in runs if r[key] is not None]
        if not vals:
            return {"median": None}
        return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}

    return {
        "trials": len(runs),
        "runs": runs,
        **{k: stat(k) for k in ("forwarded_pps", "pps_per_core", "cpu_s_per_million")},
        "server_cpu_cores": stat("server_cpu_cores"),
    }


VARIANTS: Final = {
    "asyncio": ["--no-uvloop", "--no-fast-path"],
    "uvloop": ["--uvloop", "--no-fast-path"],
    "fast_path_asyncio": ["--no-uvloop", "--fast-path"],
    "fast_path_uvloop": ["--uvloop", "--fast-path"],
}


def bench_relay_saturation(trials: int = TRIALS) -> dict[str, Any]:
    if shutil.which("turnserver") is None:
        return {"skipped": "coturn (turnserver) not installed"}
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        return {"skipped": "needs 2 CPUs and taskset (server and load pinned apart)"}
    results: dict[str, Any] = {"how": __doc__, "payload_bytes": PAYLOAD, "duration_s": DURATION}
    results["coturn"] = _summary(coturn_trials(trials))
    for name, flags in VARIANTS.items():
        results[name] = _summary(ours_trials(flags, trials))
    fast = VARIANTS["fast_path_uvloop"]
    one = [scaling_trial(1, fast) for _ in range(trials)]
    two = [scaling_trial(2, fast) for _ in range(trials)]
    one_pps = statistics.median(r["forwarded_pps_total"] for r in one)
    two_pps = statistics.median(r["forwarded_pps_total"] for r in two)
    results["scaling"] = {
        "how": "fast path, uvloop; one relay process per core, each with its own load; "
        "the load processes share the same 2 cores",
        "one_process": one,
        "two_processes": two,
        "forwarded_pps_median": {"1": one_pps, "2": two_pps},
        "speedup": round(two_pps / one_pps, 2) if one_pps else None,
    }
    results["paced"] = bench_paced()
    base = results["coturn"]["pps_per_core"]["median"]
    results["pps_per_core_over_coturn"] = {
        name: round(results[name]["pps_per_core"]["median"] / base, 2)
        if base and results[name]["pps_per_core"]["median"]
        else None
        for name in VARIANTS
    }
    return results


if __name__ == "__main__":
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    print(
        json.dumps(bench_relay_saturation(int(sys.argv[1]) if len(sys.argv) > 1 else 1), indent=2)
    )


# -- paced load: many calls at a voice frame rate --------------------------------------------
#: The issue's realistic load: 500 calls, each one way at 50 frames/s (25,000 frames/s).
CALLS: Final = 500
CALL_PPS: Final = 50
PACED_S: Final = 5.0
#: Pacing tick: every millisecond, the calls whose 20 ms phase falls in it send one frame.
TICK: Final = 0.001

Pair = tuple[socket.socket, tuple[str, int], bytes, socket.socket]
#: First byte of coturn's ChannelData on channel 0x4000 (RFC 8656 section 12.4).
CHANNEL_DATA_FIRST: Final = 0x40


def _paced(pairs: list[Pair], pid: int, first: int) -> dict[str, Any]:
    """Send every pair's frame at CALL_PPS, phases spread over the frame interval; count at
    the receivers (epoll) what starts with ``first`` (a forwarded frame, not the server's
    keepalives); the server's CPU over the window. Runs on LOAD_CPU."""
    import select
    import threading

    os.sched_setaffinity(0, {int(LOAD_CPU)})
    receivers = {r.fileno(): r for _, _, _, r in pairs}
    for r in receivers.values():
        r.setblocking(False)
    counted = [0]
    stop = threading.Event()

    def receive() -> None:
        ep = select.epoll()
        try:
            for fd in receivers:
                ep.register(fd, select.EPOLLIN)
            while not stop.is_set():
                for fd, _ in ep.poll(0.05):
                    sock = receivers[fd]
                    while True:
                        try:
                            data = sock.recv(2048)
                        except BlockingIOError:
                            break
                        if data and data[0] == first:
                            counted[0] += 1
        finally:
            ep.close()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    interval = 1 / CALL_PPS
    slots = int(interval / TICK)
    by_slot: list[list[Pair]] = [[] for _ in range(slots)]
    for n, pair in enumerate(pairs):
        by_slot[n % slots].append(pair)
    sent = errors = 0
    c0 = cpu_seconds(pid)
    t0 = time.monotonic()
    tick = 0
    while (now := time.monotonic()) - t0 < PACED_S:
        due = int((now - t0) / TICK)
        while tick <= due:
            for s, dest, frame, _ in by_slot[tick % slots]:
                try:
                    s.sendto(frame, dest)
                    sent += 1
                except OSError:
                    errors += 1
            tick += 1
        time.sleep(TICK / 2)
    cpu = cpu_seconds(pid) - c0
    time.sleep(0.3)  # the last frames arrive
    stop.set()
    thread.join(5)
    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return {
        "calls": len(pairs),
        "offered_pps": round(sent / PACED_S),
        "frames_sent": sent,
        "frames_lost": sent - counted[0],
        "send_errors": errors,
        "server_cpu_cores": round(cpu / PACED_S, 3),
        "cpu_s_per_million": round(cpu / max(counted[0], 1) * 1e6, 2),
    }


def paced_ours(flags: list[str], calls: int = CALLS) -> dict[str, Any]:
    from punchthrough.identity import Identity
    from punchthrough.netio.batched import BatchedUdpSocket
    from punchthrough.relay import RelayClient
    from punchthrough.relay.frames import FRAME_DATA, encode_send
    from punchthrough.transport import DatagramMux

    proc, port = _start_relay(SERVER_CPU, flags)
    relay = ("127.0.0.1", port)

    async def one() -> dict[str, Any]:
        socks: list[BatchedUdpSocket] = []
        others: list[Any] = []

        async def client() -> RelayClient:
            # spread over 127.0.K.1: the relay admits 256 connections per IP address
            ip = f"127.0.{len(socks) // 200 + 1}.1"
            sock = await BatchedUdpSocket.bind(ip, batched=False)
            socks.append(sock)
            mux = DatagramMux(sock)
            others.append(mux)
            rc = await RelayClient.connect(mux, relay, Identity.generate(), timeout=20)
            others.append(rc)
            return rc

        try:
            pairs: list[Pair] = []
            for start in range(0, calls, 25):  # 50 registrations at a time
                n = min(25, calls - start)
                clients = await asyncio.gather(*(client() for _ in range(2 * n)))
                for a, b in zip(clients[::2], clients[1::2], strict=True):
                    frame = encode_send(b.peer_id, a.frame_token, bytes(PAYLOAD))
                    pairs.append((a._sock._sock, relay, frame, b._sock._sock))  # type: ignore[attr-defined]
            loop = asyncio.get_running_loop()
            for sock in socks:
                loop.remove_reader(sock._fd)
            return await asyncio.to_thread(_paced, pairs, proc.pid, FRAME_DATA)
        finally:
            for obj in reversed(others):
                res = obj.close()
                if asyncio.iscoroutine(res):
                    await res
            for s in socks:
                s.close()

    try:
        return asyncio.run(one())
    finally:
        _stop(proc)


def paced_coturn(calls: int = CALLS) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-coturn-paced-"))
    proc, port = _start_coturn(tmp, (54000, 55999))
    socks: list[socket.socket] = []
    try:
        pairs: list[Pair] = []
        for _ in range(calls):
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks += [a, b]
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            relayed = _turn_relay_address(b, ("127.0.0.1", port))
            _turn_channel(b, ("127.0.0.1", port), a.getsockname())
            pairs.append((a, relayed, bytes(PAYLOAD), b))
        return _paced(pairs, proc.pid, CHANNEL_DATA_FIRST)
    finally:
        for s in socks:
            s.close()
        _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def bench_paced() -> dict[str, Any]:
    out: dict[str, Any] = {"calls": CALLS, "pps_per_call": CALL_PPS, "seconds": PACED_S}
    out["coturn"] = paced_coturn()
    for name, flags in VARIANTS.items():
        out[name] = paced_ours(flags)
    return out
