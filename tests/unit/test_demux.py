"""The first-byte table and CID routing of the socket multiplexer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from punchthrough.netio import Address
from punchthrough.transport import DatagramMux, PacketKind, classify, quic_destination_cid

SRC: Address = ("192.0.2.1", 1000)


class FakeSocket:
    def __init__(self) -> None:
        self.receiver = None
        self.local_address = ("0.0.0.0", 1)
        self.closed = False
        self.send_errors = 0

    def set_receiver(self, r):  # type: ignore[no-untyped-def]
        self.receiver = r

    def sendto(self, data: bytes, addr: Address) -> None:  # pragma: no cover
        pass

    def close(self) -> None:
        self.closed = True


def test_first_byte_table() -> None:
    assert classify(b"") is PacketKind.UNKNOWN
    assert all(classify(bytes([b, 0])) is PacketKind.STUN for b in range(4))
    assert all(classify(bytes([b])) is PacketKind.RELAY for b in range(16, 20))
    assert all(classify(bytes([b])) is PacketKind.QUIC_SHORT for b in range(64, 128))
    assert all(classify(bytes([b])) is PacketKind.QUIC_LONG for b in range(192, 256))
    others = set(range(256)) - set(range(4)) - set(range(16, 20)) - set(range(64, 128))
    others -= set(range(192, 256))
    assert all(classify(bytes([b])) is PacketKind.UNKNOWN for b in others)


def test_quic_cids() -> None:
    cid = bytes(range(8))
    assert quic_destination_cid(b"\x40" + cid + b"payload") == cid
    assert quic_destination_cid(b"\x40" + cid[:5]) is None
    long = b"\xc0" + b"\x00\x00\x00\x01" + bytes([4]) + b"abcd" + b"rest"
    assert quic_destination_cid(long) == b"abcd"
    assert quic_destination_cid(b"\xc0\x00\x00\x00\x01\x15" + bytes(21)) is None  # > 20
    assert quic_destination_cid(b"\xc0\x00\x00") is None


@given(st.binary(max_size=64))
def test_cid_parser_never_raises(data: bytes) -> None:
    cid = quic_destination_cid(data)
    assert cid is None or len(cid) <= 20


def test_routing_and_counters() -> None:
    sock = FakeSocket()
    mux = DatagramMux(sock)  # type: ignore[arg-type]
    got: list[tuple[str, bytes]] = []
    mux.add_stun_handler(lambda d, a: d[1] == 1 and not got.append(("stun-a", d)))
    mux.add_stun_handler(lambda d, a: not got.append(("stun-b", d)))
    mux.set_relay_handler(lambda d, a: got.append(("relay", d)))
    cid = b"C" * 8
    mux.add_quic_cid(cid, lambda d, a: got.append(("conn", d)))
    mux.set_new_quic_handler(lambda d, a: got.append(("new", d)))
    rx = sock.receiver
    assert rx is not None
    rx(b"\x00\x01", SRC)
    rx(b"\x00\x02", SRC)
    rx(b"\x11abc", SRC)
    rx(b"\x41" + cid, SRC)
    rx(b"\x41" + b"X" * 8, SRC)  # unknown short CID: dropped, never "new"
    rx(b"\xc3\x00\x00\x00\x01\x08" + b"Y" * 8, SRC)  # unknown long CID: new connection
    rx(b"\x80zzz", SRC)
    assert [k for k, _ in got] == ["stun-a", "stun-b", "relay", "conn", "new"]
    assert mux.stats["dropped_quic_unknown_cid"] == 1
    assert mux.stats["dropped_first_byte"] == 1


def test_a_failing_handler_is_contained() -> None:
    sock = FakeSocket()
    mux = DatagramMux(sock)  # type: ignore[arg-type]

    def boom(d: bytes, a: Address) -> None:
        raise RuntimeError("bug")

    mux.set_relay_handler(boom)
    assert sock.receiver is not None
    sock.receiver(b"\x10", SRC)
    assert mux.stats["handler_errors"] == 1
    mux.close()
    assert sock.receiver is None


def test_relay_frames_route_by_source_first() -> None:
    sock = FakeSocket()
    mux = DatagramMux(sock)  # type: ignore[arg-type]
    got: list[str] = []
    relay_a: Address = ("198.51.100.1", 3478)
    mux.add_relay_source(relay_a, lambda d, a: got.append("a"))
    assert sock.receiver is not None
    sock.receiver(b"\x10x", relay_a)
    sock.receiver(b"\x10x", SRC)  # no catch-all yet: dropped
    mux.set_relay_handler(lambda d, a: got.append("any"))
    sock.receiver(b"\x10x", SRC)
    mux.remove_relay_source(relay_a)
    sock.receiver(b"\x10x", relay_a)
    assert got == ["a", "any", "any"]
    assert mux.stats["dropped_relay_no_handler"] == 1
