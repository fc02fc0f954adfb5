"""Sans-IO transaction tests: retransmission schedule, matching, timeouts. No real time."""

from __future__ import annotations

import pytest

from punchthrough.stun import (
    ClientTransaction,
    Message,
    MessageClass,
    Method,
    RetransmissionPolicy,
    TransactionState,
    TransactionTable,
    XorMappedAddress,
)

SERVER = ("192.0.2.1", 3478)
TXID = bytes(range(12))
REQUEST = b"request-bytes"


def _drive(tx: ClientTransaction, start: float = 100.0) -> tuple[list[float], float]:
    """Run the transaction to its end, jumping virtual time to each timer; return send times
    and the time it timed out."""
    sends = [start]
    assert tx.start(start).data == REQUEST
    now = start
    while (t := tx.next_timer()) is not None:
        assert t > now
        now = t
        if tx.handle_timer(now) is not None:
            sends.append(now)
    assert tx.state is TransactionState.TIMED_OUT
    return [s - start for s in sends], now - start


def _response(txid: bytes = TXID, method: int = Method.BINDING) -> Message:
    return Message(
        method, MessageClass.SUCCESS_RESPONSE, txid, [XorMappedAddress(("198.51.100.7", 40000))]
    )


def test_default_schedule_is_rfc8489_example() -> None:
    """RFC 8489 §6.2.1: sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; gives up at 39.5 s."""
    tx = ClientTransaction(TXID, REQUEST, SERVER, method=Method.BINDING)
    sends, timeout = _drive(tx)
    assert sends == pytest.approx([0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
    assert timeout == pytest.approx(39.5)
    assert tx.sends == 7
    policy = RetransmissionPolicy()
    assert policy.send_offsets() == pytest.approx(sends)
    assert policy.timeout_offset() == pytest.approx(39.5)


@pytest.mark.parametrize(("rto", "retransmits", "rm"), [(0.1, 2, 4), (0.25, 0, 16), (1.0, 4, 2)])
def test_configurable_schedule(rto: float, retransmits: int, rm: int) -> None:
    policy = RetransmissionPolicy(rto=rto, max_retransmits=retransmits, rm=rm)
    tx = ClientTransaction(TXID, REQUEST, SERVER, method=Method.BINDING, policy=policy)
    sends, timeout = _drive(tx)
    expected = [rto * (2**k - 1) for k in range(retransmits + 1)]
    assert sends == pytest.approx(expected)
    assert timeout == pytest.approx(expected[-1] + rm * rto)


def test_invalid_policy() -> None:
    with pytest.raises(ValueError):
        RetransmissionPolicy(rto=0)
    with pytest.raises(ValueError):
        RetransmissionPolicy(max_retransmits=-1)


def test_early_timer_calls_do_nothing() -> None:
    tx = ClientTransaction(TXID, REQUEST, SERVER, method=Method.BINDING)
    tx.start(0.0)
    assert tx.handle_timer(0.49) is None
    assert tx.sends == 1
    assert tx.handle_timer(0.5) is not None
    assert tx.next_timer() == pytest.approx(1.5)


def test_late_wakeup_does_not_burst() -> None:
    tx = ClientTransaction(TXID, REQUEST, SERVER, method=Method.BINDING)
    tx.start(0.0)
    assert tx.handle_timer(10.0) is not None  # woke up 9.5 s late
    nxt = tx.next_timer()
    assert nxt is not None and nxt > 10.0


def test_response_completes_and_stops_timers() -> None:
    tx = ClientTransaction(TXID, REQUEST, SERVER, method=Method.BINDING)
    tx.start(10.0)
    tx.handle_timer(10.5)
    other_source = ("203.0.113.5", 3479)  # RFC 5780: answers may come from another address
    assert tx.handle_response(_response(), other_source, 10.7)
    assert tx.state is TransactionState.COMPLETED
    assert tx.response_source == other_source
    assert tx.rtt == pytest.approx(0.7)
    assert tx.next_timer() is None
    assert tx.handle_timer(100.0) is None
    assert not tx.handle_response(_response(), SERVER, 10.8)  # duplicate


def test_response_with_wrong_id_method_or_class_is_refused() -> None:
    tx = ClientTransaction(TXID, REQUEST, SERVER, method=Method.BINDING)
    tx.start(0.0)
    assert not tx.handle_response(_response(txid=bytes(12)), SERVER, 0.1)
    assert not tx.handle_response(_response(method=0x003), SERVER, 0.1)
    req = Message(Method.BINDING, MessageClass.REQUEST, TXID)
    assert not tx.handle_response(req, SERVER, 0.1)
    assert tx.state is TransactionState.PENDING


def test_error_response_completes_the_transaction() -> None:
    tx = ClientTransaction(TXID, REQUEST, SERVER, method=Method.BINDING)
    tx.start(0.0)
    err = Message(Method.BINDING, MessageClass.ERROR_RESPONSE, TXID)
    assert tx.handle_response(err, SERVER, 0.2)
    assert tx.response is err


def test_deadline_cuts_the_schedule_short() -> None:
    tx = ClientTransaction(TXID, REQUEST, SERVER, method=Method.BINDING, deadline=2.0)
    sends, timeout = _drive(tx, start=0.0)
    assert sends == pytest.approx([0, 0.5, 1.5])
    assert timeout == pytest.approx(2.0)


def test_table_matches_by_id_and_counts_strays() -> None:
    table = TransactionTable()
    a = ClientTransaction(b"a" * 12, REQUEST, SERVER, method=Method.BINDING)
    b = ClientTransaction(b"b" * 12, REQUEST, SERVER, method=Method.BINDING)
    for tx in (a, b):
        table.add(tx)
        tx.start(0.0)
    with pytest.raises(ValueError):
        table.add(ClientTransaction(b"a" * 12, REQUEST, SERVER, method=Method.BINDING))
    assert table.handle_response(_response(txid=b"z" * 12), SERVER, 0.1) is None
    assert table.unknown_responses == 1
    assert table.handle_response(_response(txid=b"b" * 12, method=5), SERVER, 0.1) is None
    assert table.mismatched_responses == 1
    assert table.handle_response(_response(txid=b"b" * 12), SERVER, 0.1) is b
    assert b.state is TransactionState.COMPLETED and a.state is TransactionState.PENDING
    # Only `a` still has timers; a due timer retransmits only `a`.
    assert table.next_timer() == pytest.approx(0.5)
    assert [t.data for t in table.handle_timer(0.5)] == [REQUEST]
    assert table.remove(b"b" * 12) is b
    assert len(table) == 1 and b"a" * 12 in table
