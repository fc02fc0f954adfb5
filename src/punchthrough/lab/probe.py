"""A tiny, stdlib-only probe run INSIDE a lab namespace: `python -m punchthrough.lab.probe ...`.

It is deliberately independent of punchthrough.stun (the code under test): a minimal RFC 8489
Binding client and an RFC 6886 NAT-PMP external-address request, printing one JSON object.
Replies that do not parse are ignored and counted, never raised.

    probe stun IP PORT [--count N] [--interval S] [--timeout S] [--bind IP:PORT]
    probe natpmp GATEWAY [--timeout S]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import time
from typing import Any

MAGIC_COOKIE = 0x2112A442  # RFC 8489 section 5
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
HEADER_LEN = 20  # RFC 8489 section 5
ATTR_MAPPED_ADDRESS = 0x0001  # RFC 8489 section 14.1
ATTR_XOR_MAPPED_ADDRESS = 0x0020  # RFC 8489 section 14.2
ATTR_RESPONSE_ORIGIN = 0x802B  # RFC 5780 section 7.3
ATTR_OTHER_ADDRESS = 0x802C  # RFC 5780 section 7.4
FAMILY_IPV4 = 0x01

NATPMP_PORT = 5351  # RFC 6886 section 3
NATPMP_VERSION = 0
NATPMP_OP_EXTERNAL_ADDRESS = 0
NATPMP_RESPONSE_BIT = 128  # RFC 6886 section 3.2: response opcode = request opcode + 128
NATPMP_FIRST_RTO = 0.25  # RFC 6886 section 3.1: 250 ms, doubling

MAX_COUNT = 10000  # bound on requests per invocation


def binding_request(txid: bytes) -> bytes:
    return struct.pack("!HHI", BINDING_REQUEST, 0, MAGIC_COOKIE) + txid


def _address(value: bytes, xor: bool) -> tuple[str, int] | None:
    if len(value) < 8 or value[1] != FAMILY_IPV4:
        return None
    port, raw = struct.unpack("!H4s", value[2:8])
    if xor:
        port ^= MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, struct.pack("!I", MAGIC_COOKIE), strict=True))
    return str(ipaddress.IPv4Address(raw)), port


def parse_binding_response(data: bytes) -> tuple[bytes, dict[str, tuple[str, int]]] | None:
    """(transaction id, {mapped, response_origin, other_address}) or None if not a success."""
    if len(data) < HEADER_LEN:
        return None
    mtype, length, cookie = struct.unpack("!HHI", data[:8])
    if mtype != BINDING_SUCCESS or cookie != MAGIC_COOKIE or HEADER_LEN + length > len(data):
        return None
    attrs: dict[str, tuple[str, int]] = {}
    pos, end = HEADER_LEN, HEADER_LEN + length
    while pos + 4 <= end:
        atype, alen = struct.unpack("!HH", data[pos : pos + 4])
        value = data[pos + 4 : pos + 4 + alen]
        if len(value) < alen:
            return None
        key = {
            ATTR_XOR_MAPPED_ADDRESS: "xor",
            ATTR_MAPPED_ADDRESS: "mapped",
            ATTR_RESPONSE_ORIGIN: "response_origin",
            ATTR_OTHER_ADDRESS: "other_address",
        }.get(atype)
        if key is not None:
            addr = _address(value, xor=key == "xor")
            if addr is not None:
                attrs.setdefault(key, addr)
        pos += 4 + alen + (-alen % 4)
    if "xor" in attrs:
        attrs["mapped"] = attrs.pop("xor")
    return data[8:20], attrs


def stun(
    server: tuple[str, int], count: int, interval: float, timeout: float, bind: tuple[str, int]
) -> dict[str, Any]:
    """Send `count` Binding requests (distinct transactions) and count the answers."""
    count = max(1, min(count, MAX_COUNT))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(bind)
        pending: dict[bytes, float] = {}
        result: dict[str, Any] = {
            "local": list(sock.getsockname()),
            "sent": 0,
            "received": 0,
            "ignored": 0,
            "rtt_ms": [],
            "send_errors": 0,
        }
        next_send = time.monotonic()
        deadline: float | None = None
        while True:
            now = time.monotonic()
            if result["sent"] < count and now >= next_send:
                txid = os.urandom(12)
                try:
                    sock.sendto(binding_request(txid), server)
                    pending[txid] = now
                except OSError:
                    result["send_errors"] += 1
                result["sent"] += 1
                next_send = now + interval
            if result["sent"] >= count:
                if deadline is None:
                    deadline = now + timeout
                if now >= deadline or not pending:
                    break
            wake = deadline if deadline is not None else next_send
            ready, _, _ = select.select([sock], [], [], max(0.0, wake - now))
            if not ready:
                continue
            data, src = sock.recvfrom(2048)
            parsed = parse_binding_response(data)
            if parsed is None or parsed[0] not in pending:
                result["ignored"] += 1
                continue
            sent_at = pending.pop(parsed[0])
            result["received"] += 1
            result["rtt_ms"].append(round((time.monotonic() - sent_at) * 1000, 3))
            result.setdefault("source", list(src))
            for k, v in parsed[1].items():
                result.setdefault(k, list(v))
        return result
    finally:
        sock.close()


def natpmp(gateway: str, timeout: float) -> dict[str, Any]:
    """RFC 6886 section 3.2 external-address request with the 250 ms doubling retry schedule."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        deadline = time.monotonic() + timeout
        rto = NATPMP_FIRST_RTO
        sent = 0
        while time.monotonic() < deadline:
            sock.sendto(
                struct.pack("!BB", NATPMP_VERSION, NATPMP_OP_EXTERNAL_ADDRESS),
                (gateway, NATPMP_PORT),
            )
            sent += 1
            wait_until = min(deadline, time.monotonic() + rto)
            while (left := wait_until - time.monotonic()) > 0:
                ready, _, _ = select.select([sock], [], [], left)
                if not ready:
                    break
                data, src = sock.recvfrom(1100)
                if len(data) < 12 or data[1] != NATPMP_RESPONSE_BIT + NATPMP_OP_EXTERNAL_ADDRESS:
                    continue
                _, _, code, epoch = struct.unpack("!BBHI", data[:8])
                return {
                    "result": code,
                    "epoch": epoch,
                    "source": list(src),
                    "sent": sent,
                    "external_ip": str(ipaddress.IPv4Address(data[8:12])),
                }
            rto *= 2
        return {"result": None, "sent": sent}
    finally:
        sock.close()


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="punchthrough.lab.probe")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stun")
    s.add_argument("ip")
    s.add_argument("port", type=int)
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--interval", type=float, default=0.01)
    s.add_argument("--timeout", type=float, default=1.0)
    s.add_argument("--bind", type=_hostport, default=("0.0.0.0", 0))
    n = sub.add_parser("natpmp")
    n.add_argument("gateway")
    n.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.cmd == "stun":
        out = stun((args.ip, args.port), args.count, args.interval, args.timeout, args.bind)
    else:
        out = natpmp(args.gateway, args.timeout)
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
