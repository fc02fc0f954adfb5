"""Sans-IO client transactions: retransmission timing and transaction-id matching.

No clocks and no sockets here: callers pass ``now`` in and get back datagrams to send and the
next time to wake up, so the asyncio client and a virtual-time simulator drive the same logic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from punchthrough.netio import Address
from punchthrough.stun.constants import DEFAULT_MAX_RETRANSMITS, DEFAULT_RM, DEFAULT_RTO
from punchthrough.stun.message import Message, MessageClass


@dataclass(frozen=True)
class RetransmissionPolicy:
    """RFC 8489 §6.2.1 over UDP: resend after RTO, 2 RTO, 4 RTO...; Rc sends; wait Rm*RTO.

    ``max_retransmits`` is Rc - 1 (the first send is not a retransmission).
    """

    rto: float = DEFAULT_RTO
    max_retransmits: int = DEFAULT_MAX_RETRANSMITS
    rm: float = DEFAULT_RM

    def __post_init__(self) -> None:
        if self.rto <= 0:
            raise ValueError("rto must be positive")
        if self.max_retransmits < 0:
            raise ValueError("max_retransmits must be >= 0")
        if self.rm <= 0:
            raise ValueError("rm must be positive")

    @property
    def total_sends(self) -> int:
        return self.max_retransmits + 1

    def send_offsets(self) -> list[float]:
        """When each send happens, relative to the first (0, RTO, 3 RTO, 7 RTO, ...)."""
        offsets = [0.0]
        interval = self.rto
        for _ in range(self.max_retransmits):
            offsets.append(offsets[-1] + interval)
            interval *= 2
        return offsets

    def timeout_offset(self) -> float:
        """When the transaction fails: last send + Rm * RTO (39.5 s with the defaults)."""
        return self.send_offsets()[-1] + self.rm * self.rto


class TransactionState(enum.Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class Transmit:
    """A datagram the caller must send."""

    data: bytes
    destination: Address


class ClientTransaction:
    """One request awaiting its response.

    ``deadline`` (absolute, same clock as ``now``) optionally ends the transaction before the
    retransmission schedule does.
    """

    def __init__(
        self,
        transaction_id: bytes,
        request: bytes,
        destination: Address,
        *,
        method: int,
        policy: RetransmissionPolicy | None = None,
        deadline: float | None = None,
    ) -> None:
        self.transaction_id = transaction_id
        self.request = request
        self.destination = destination
        self.method = method
        self.policy = policy or RetransmissionPolicy()
        self.deadline = deadline
        self.state = TransactionState.PENDING
        self.sends = 0
        self.started_at: float | None = None
        self.response: Message | None = None
        self.response_source: Address | None = None
        self.rtt: float | None = None
        self._interval = self.policy.rto
        self._next_send: float | None = None  # None after the last send
        self._give_up_at: float | None = None

    def start(self, now: float) -> Transmit:
        """First transmission. Must be called exactly once."""
        if self.started_at is not None:
            raise RuntimeError("transaction already started")
        self.started_at = now
        return self._send(now)

    def _send(self, when: float) -> Transmit:
        self.sends += 1
        if self.sends < self.policy.total_sends:
            self._next_send = when + self._interval
            self._interval *= 2
        else:
            self._next_send = None
            self._give_up_at = when + self.policy.rm * self.policy.rto
        return Transmit(self.request, self.destination)

    def next_timer(self) -> float | None:
        """Absolute time at which :meth:`handle_timer` must be called, or None when done."""
        if self.state is not TransactionState.PENDING or self.started_at is None:
            return None
        t = self._next_send if self._next_send is not None else self._give_up_at
        if self.deadline is not None and (t is None or self.deadline < t):
            return self.deadline
        return t

    def handle_timer(self, now: float) -> Transmit | None:
        """Retransmit or time out, as due at ``now``. Early calls do nothing."""
        if self.state is not TransactionState.PENDING or self.started_at is None:
            return None
        if self.deadline is not None and now >= self.deadline:
            self.state = TransactionState.TIMED_OUT
            return None
        if self._next_send is not None:
            if now >= self._next_send:
                # Schedule from the planned instant, not from `now`, so a slightly late wake-up
                # does not stretch the schedule; but never queue a burst after a long stall.
                transmit = self._send(self._next_send)
                if self._next_send is not None and self._next_send <= now:
                    self._next_send = now + self._interval / 2
                return transmit
            return None
        if self._give_up_at is not None and now >= self._give_up_at:
            self.state = TransactionState.TIMED_OUT
        return None

    def handle_response(self, message: Message, source: Address, now: float) -> bool:
        """Accept a response if it belongs to this transaction. Any source address is fine:
        RFC 5780 answers to CHANGE-REQUEST come from another address."""
        if (
            self.state is not TransactionState.PENDING
            or self.started_at is None
            or message.transaction_id != self.transaction_id
            or message.method != self.method
            or message.message_class
            not in (MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE)
        ):
            return False
        self.state = TransactionState.COMPLETED
        self.response = message
        self.response_source = source
        # Measured from the first send: with retransmissions the RTT is ambiguous (Karn), and an
        # overestimate is the safe side for anything derived from it.
        self.rtt = max(0.0, now - self.started_at)
        return True


class TransactionTable:
    """Open transactions by id, with counters for responses that match none of them."""

    def __init__(self) -> None:
        self._open: dict[bytes, ClientTransaction] = {}
        #: Responses with an unknown transaction id (late duplicates, spoofing attempts).
        self.unknown_responses = 0
        #: Responses with a known id but the wrong method or class.
        self.mismatched_responses = 0

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self._open

    def add(self, transaction: ClientTransaction) -> None:
        if transaction.transaction_id in self._open:
            raise ValueError("duplicate transaction id")
        self._open[transaction.transaction_id] = transaction

    def remove(self, transaction_id: bytes) -> ClientTransaction | None:
        return self._open.pop(transaction_id, None)

    def get(self, transaction_id: bytes) -> ClientTransaction | None:
        return self._open.get(transaction_id)

    def transactions(self) -> list[ClientTransaction]:
        return list(self._open.values())

    def handle_response(
        self, message: Message, source: Address, now: float
    ) -> ClientTransaction | None:
        """Route a decoded response; returns the completed transaction or None (counted)."""
        tx = self._open.get(message.transaction_id)
        if tx is None:
            self.unknown_responses += 1
            return None
        if not tx.handle_response(message, source, now):
            self.mismatched_responses += 1
            return None
        return tx

    def next_timer(self) -> float | None:
        timers = [t for tx in self._open.values() if (t := tx.next_timer()) is not None]
        return min(timers, default=None)

    def handle_timer(self, now: float) -> list[Transmit]:
        """Run every due timer; timed-out transactions stay in the table in TIMED_OUT state."""
        out: list[Transmit] = []
        for tx in self._open.values():
            transmit = tx.handle_timer(now)
            if transmit is not None:
                out.append(transmit)
        return out
