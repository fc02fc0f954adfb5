"""Microseconds per worst-case STUN request through ``StunServerCore.handle`` (issue 12).

Not a test: run it by hand to compare the decoder before and after a change::

    PYTHONPATH=src python tests/stun_worst_case_bench.py

Each shape fills a 1,500-byte datagram (an Ethernet MTU, the most one UDP packet carries
unfragmented) with as many 4-byte empty attributes as fit: 370 after the 20-byte header.
"""

from __future__ import annotations

import timeit

from punchthrough.stun import Message, MessageClass, Method, StunServerCore, encode
from punchthrough.stun.attributes import RawAttribute, Username
from punchthrough.stun.ice_attributes import IceControlling, Priority, UseCandidate

#: Ethernet MTU: the largest datagram an attacker can send without IP fragmentation.
DATAGRAM = 1500
#: 4-byte attribute header, empty value: (1500 - 20) / 4.
EMPTY_ATTRIBUTES = (DATAGRAM - 20) // 4
#: Calls per timing run and runs per shape (the best run is reported, as timeit advises).
CALLS = 200
RUNS = 5
TXID = bytes(12)
SRC = ("192.0.2.1", 40000)
LOCAL = ("127.0.0.1", 3478)


def _request(attrs: list[RawAttribute], *, key: bytes | None = None) -> bytes:
    message = Message(Method.BINDING, MessageClass.REQUEST, TXID, list(attrs))
    return encode(message, integrity_key=key)


def _append_raw(data: bytes, extra: bytes) -> bytes:
    """``data`` + ``extra`` with the header's length field fixed up (attributes after MI)."""
    out = data + extra
    return out[:2] + (len(out) - 20).to_bytes(2, "big") + out[4:]


def shapes() -> dict[str, bytes]:
    n = EMPTY_ATTRIBUTES
    ice = Message(
        Method.BINDING,
        MessageClass.REQUEST,
        TXID,
        [Username("abcd:efgh"), Priority(1 << 24), IceControlling(7), UseCandidate()],
    )
    return {
        "plain Binding (20 B)": _request([]),
        "ICE check (USERNAME..FINGERPRINT)": encode(ice, integrity_key=b"k" * 22, fingerprint=True),
        "32 distinct unknown comprehension-required": _request(
            [RawAttribute(0x4000 + i, b"") for i in range(32)]
        ),
        f"{n} distinct unknown comprehension-required": _request(
            [RawAttribute(0x4000 + i, b"") for i in range(n)]
        ),
        f"{n} copies of one unknown type": _request([RawAttribute(0x4000, b"")] * n),
        f"{n} unknown optional": _request([RawAttribute(0xC000 + i, b"") for i in range(n)]),
        f"MESSAGE-INTEGRITY then {n - 6} ignored": _append_raw(
            _request([], key=b"k"), b"\x40\x00\x00\x00" * (n - 6)
        ),
    }


def main() -> None:
    try:  # the decoder's cost, not the rate limiter's: every call comes from one source
        core = StunServerCore([LOCAL], rate_limit=None)
    except TypeError:  # before issue 12 there was no limiter to turn off
        core = StunServerCore([LOCAL])
    for name, data in shapes().items():
        best = min(
            timeit.repeat(lambda d=data: core.handle(d, SRC, LOCAL), number=CALLS, repeat=RUNS)
        )
        print(f"{best / CALLS * 1e6:9.1f} us  {len(data):5d} B  {name}")


if __name__ == "__main__":
    main()
