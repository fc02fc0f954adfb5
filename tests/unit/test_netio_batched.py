"""Batched UDP (netio.mmsg, netio.batched) on loopback: the batch calls, the portable path and
the socket that drains in batches."""

from __future__ import annotations

import asyncio
import socket

import pytest

from punchthrough.netio import mmsg
from punchthrough.netio.batched import (
    BatchedUdpSocket,
    PortableRecvBatch,
    PortableSendBatch,
    RecvSlots,
    SendSlots,
)

needs_mmsg = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg are Linux-only")


@pytest.mark.parametrize(
    ("family", "addr", "spelled"),
    [
        (socket.AF_INET, ("198.51.100.7", 3478), ("198.51.100.7", 3478)),
        (socket.AF_INET6, ("2001:db8::1", 443), ("2001:db8::1", 443)),
        (socket.AF_INET6, ("192.0.2.1", 9), ("::ffff:192.0.2.1", 9)),  # IPv4-mapped
    ],
)
def test_sockaddr_round_trip(family: int, addr: tuple[str, int], spelled: tuple[str, int]) -> None:
    raw = mmsg.encode_sockaddr(family, addr)
    assert len(raw) == mmsg.sockaddr_length(family)
    assert mmsg.decode_sockaddr(raw) == spelled


def _pair() -> tuple[socket.socket, socket.socket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for s in (a, b):
        s.bind(("127.0.0.1", 0))
    b.setblocking(False)
    a.settimeout(2)
    return a, b


def _batches(kind: str) -> tuple[RecvSlots, SendSlots]:
    if kind == "mmsg":
        rb = mmsg.RecvBatch(socket.AF_INET, count=8)
        return rb, mmsg.SendBatch(rb)
    prb = PortableRecvBatch(socket.AF_INET, count=8)
    return prb, PortableSendBatch(prb)


@pytest.mark.parametrize("kind", [pytest.param("mmsg", marks=needs_mmsg), "portable"])
def test_a_batch_is_received_rewritten_in_place_and_sent_back(kind: str) -> None:
    a, b = _pair()
    try:
        for i in range(10):  # more than one batch of 8
            a.sendto(b"hello %d" % i, b.getsockname())
        rb, sb = _batches(kind)
        got = []
        for _ in range(100):  # bounded: loopback delivery is immediate
            n = rb.recv(b)
            if not n and len(got) == 10:
                break
            for i in range(n):
                at = i * rb.slot
                got.append(bytes(rb.view[at : at + rb.lengths[i]]))
                assert mmsg.decode_sockaddr(rb.source(i)) == a.getsockname()
                rb.data[at] = ord("H")  # rewritten in place, sent from the slot
                sb.add(i, rb.lengths[i], rb.source(i))
            if n:
                sent, failed = sb.flush(b)
                assert (sent, failed) == (n, 0)
        assert got == [b"hello %d" % i for i in range(10)]
        assert [a.recv(100) for _ in range(10)] == [b"Hello %d" % i for i in range(10)]
    finally:
        a.close()
        b.close()


@needs_mmsg
def test_a_refused_datagram_is_skipped_and_the_rest_still_go() -> None:
    a, b = _pair()
    try:
        a.sendto(b"x", b.getsockname())
        a.sendto(b"y", b.getsockname())
        a.sendto(b"z", b.getsockname())
        rb = mmsg.RecvBatch(socket.AF_INET, count=8)
        n = 0
        for _ in range(100):
            n = rb.recv(b)
            if n:
                break
        assert n == 3
        sb = mmsg.SendBatch(rb)
        sb.add(0, 1, rb.source(0))
        sb.add(1, 1, mmsg.encode_sockaddr(socket.AF_INET, ("127.0.0.1", 0)))  # EINVAL: port 0
        sb.add(2, 1, rb.source(2))
        assert sb.flush(b) == (2, 1)
        assert sorted(a.recv(10) for _ in range(2)) == [b"x", b"z"]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("batched", [pytest.param(True, marks=needs_mmsg), False])
async def test_the_socket_drains_to_the_handler_and_the_receiver(batched: bool) -> None:
    """Datagrams the batch handler does not take reach the ordinary receiver as bytes, with
    their source; taken ones are answered in place; sendto works as on any socket."""
    sock = await BatchedUdpSocket.bind("127.0.0.1", batched=batched)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    slow: list[tuple[bytes, tuple[str, int]]] = []

    def handler(batch: RecvSlots, got: int, out: SendSlots, to_slow: object) -> None:
        assert callable(to_slow)
        for i in range(got):
            at = i * batch.slot
            if batch.data[at : at + 4] == b"fast":
                batch.data[at : at + 4] = b"FAST"
                out.add(i, batch.lengths[i], batch.source(i))
            else:
                to_slow(i)

    sock.set_receiver(lambda data, addr: slow.append((data, addr)))
    sock.set_batch_handler(handler)
    loop = asyncio.get_running_loop()
    try:
        assert sock.batched is batched
        for i in range(100):
            peer.sendto(b"fast %d" % i if i % 2 else b"slow %d" % i, sock.local_address)
        answers: list[bytes] = []
        async with asyncio.timeout(2):
            while len(answers) < 50 or len(slow) < 50:
                try:
                    answers.append(await loop.sock_recv(peer, 100))
                except BlockingIOError:
                    await asyncio.sleep(0.001)
        assert answers == [b"FAST %d" % i for i in range(1, 100, 2)]
        assert slow == [(b"slow %d" % i, peer.getsockname()) for i in range(0, 100, 2)]
        assert sock.received == 100
        sock.sendto(b"plain", peer.getsockname())
        async with asyncio.timeout(2):
            assert await loop.sock_recv(peer, 100) == b"plain"
    finally:
        sock.close()
        peer.close()
    assert sock.closed
    sock.close()  # idempotent


@needs_mmsg
def test_gso_sends_runs_of_equal_datagrams_as_one_message_and_they_arrive_apart() -> None:
    a, b = _pair()
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.settimeout(2)
    try:
        if not mmsg.gso_supported(b):
            pytest.skip("no UDP_SEGMENT in this kernel")
        for i in range(12):
            a.sendto(b"frame %02d" % i, b.getsockname())
        rb = mmsg.RecvBatch(socket.AF_INET, count=16)
        n = 0
        for _ in range(100):
            n += rb.recv(b) if n == 0 else 0
            if n:
                break
        assert n == 12
        sb = mmsg.SendBatch(rb, gso=True)
        to_a, to_c = rb.source(0), mmsg.encode_sockaddr(socket.AF_INET, c.getsockname())
        for i in range(10):  # one run: same length, same destination
            sb.add(i, rb.lengths[i], to_a)
        sb.add(10, rb.lengths[10], to_c)  # another destination: a new message
        sb.add(11, 3, to_a)  # another length: a new message
        assert sb._messages == 3
        assert sb.flush(b) == (12, 0)
        assert sb.gso  # the kernel took the segmented message
        assert [a.recv(100) for _ in range(10)] == [b"frame %02d" % i for i in range(10)]
        assert c.recv(100) == b"frame 10"
        assert a.recv(100) == b"fra"
    finally:
        a.close()
        b.close()
        c.close()


@needs_mmsg
def test_a_run_the_kernel_will_not_segment_goes_out_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GSO refusal (here: more segments than the kernel takes, EINVAL) switches GSO off and
    still delivers the run, datagram by datagram: no frame is lost to it."""
    a, b = _pair()
    for s in (a, b):  # 300 datagrams queued at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    try:
        if not mmsg.gso_supported(b):
            pytest.skip("no UDP_SEGMENT in this kernel")
        monkeypatch.setattr(mmsg, "GSO_MAX_SEGMENTS", 1000)
        runs = 300  # the kernel takes 64 (128 since Linux 6.x)
        for i in range(runs):
            a.sendto(b"seg %03d" % i, b.getsockname())
        rb = mmsg.RecvBatch(socket.AF_INET, count=runs)
        n = 0
        for _ in range(100):
            n = rb.recv(b)
            if n:
                break
        assert n == runs
        sb = mmsg.SendBatch(rb, gso=True)
        for i in range(runs):
            sb.add(i, rb.lengths[i], rb.source(i))
        assert sb._messages == 1
        assert sb.flush(b) == (runs, 0)
        assert not sb.gso
        assert [a.recv(100) for _ in range(runs)] == [b"seg %03d" % i for i in range(runs)]
    finally:
        a.close()
        b.close()
