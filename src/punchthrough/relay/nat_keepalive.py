"""STUN keepalives of our NAT's binding of a relay flow (RFC 8489 Binding requests).

NATs forget idle UDP bindings after as little as a few seconds (the lab's short-timeout
profile: 3 s), and a listener whose binding expired cannot be reached through the relay until
it sends again; the QUIC PINGs of the control connection come far too rarely to prevent that. A
STUN answer costs the relay a parse and a reply, no QUIC decryption. It also says where the
relay sees us now (XOR-MAPPED-ADDRESS), which the owner acts on. An unanswered keepalive is
repeated every :data:`NAT_KEEPALIVE_RTO`, which also re-opens a binding the NAT forgot as soon
as it forwards again.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Final

from punchthrough.netio import Address
from punchthrough.stun import (
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    XorMappedAddress,
    decode_message,
    encode,
    new_transaction_id,
)
from punchthrough.transport.demux import DatagramMux

#: An unanswered STUN keepalive is sent again this often until answered.
NAT_KEEPALIVE_RTO: Final = 0.5

#: Called with where the relay sees us and how many keepalives in a row went unanswered before.
AnswerHandler = Callable[[Address, int], None]


class NatKeepalive:
    """A STUN Binding request to the relay every ``interval`` seconds, from the mux's socket.

    :meth:`start` once registered; :meth:`stop` for good. Counts ``nat_keepalives``,
    ``nat_keepalives_unanswered`` and ``send_errors`` in the owner's ``stats``.
    """

    def __init__(
        self,
        mux: DatagramMux,
        relay_address: Address,
        interval: float,
        stats: Counter[str],
        on_answer: AnswerHandler,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._mux = mux
        self._sock = mux.sock
        self.relay_address = relay_address
        self.interval = interval
        self._stats = stats
        self._on_answer = on_answer
        #: The periodic timer, the outstanding transaction and its retransmission, and how
        #: many keepalives in a row went unanswered.
        self._timer: asyncio.TimerHandle | None = None
        self._retx: asyncio.TimerHandle | None = None
        self._tx: bytes | None = None
        self._misses = 0
        self._waiters: list[asyncio.Future[Address | None]] = []
        self._stopped = False

    def start(self) -> None:
        self._mux.add_stun_handler(self.on_stun)
        self._arm()

    def _arm(self) -> None:
        if not self._stopped:
            self._timer = self._loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._send_keepalive()
        self._arm()

    def _send_keepalive(self) -> None:
        if self._tx is not None:  # the previous one (and its retransmission) unanswered
            self._misses += 1
            self._stats["nat_keepalives_unanswered"] += 1
        self._tx = new_transaction_id()
        self._send(self._tx)
        self._stats["nat_keepalives"] += 1
        if self._retx is not None:
            self._retx.cancel()
        self._retx = self._loop.call_later(NAT_KEEPALIVE_RTO, self._retransmit)

    def _retransmit(self) -> None:
        # Every RTO until answered (the next keepalive starts a new transaction): a binding the
        # NAT forgot (a reboot, an outage) is re-opened, and the relay's answer seen, within
        # half a second of the network forwarding again rather than at the next keepalive.
        self._retx = None
        if self._tx is not None and not self._stopped:
            self._send(self._tx)
            self._retx = self._loop.call_later(NAT_KEEPALIVE_RTO, self._retransmit)

    def _send(self, txid: bytes) -> None:
        data = encode(Message(Method.BINDING, MessageClass.REQUEST, txid), fingerprint=True)
        try:
            self._sock.sendto(data, self.relay_address)
        except OSError:
            self._stats["send_errors"] += 1

    def on_stun(self, data: bytes, addr: Address) -> bool:
        """The answer to our STUN keepalive (a mux STUN handler: others pass through)."""
        txid = self._tx
        if txid is None or addr != self.relay_address or data[8:20] != txid:
            return False
        try:
            msg = decode_message(data)
        except StunDecodeError:
            return False
        if msg.method != Method.BINDING or msg.message_class is not MessageClass.SUCCESS_RESPONSE:
            return False
        xma = msg.get(XorMappedAddress)
        if xma is None:
            return False
        self._tx = None
        if self._retx is not None:
            self._retx.cancel()
            self._retx = None
        misses, self._misses = self._misses, 0
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(xma.address)
        self._waiters.clear()
        self._on_answer(xma.address, misses)
        return True

    async def refresh(self, timeout: float) -> Address | None:
        """A keepalive now; where the relay sees us (``None``: no answer within ``timeout``)."""
        fut: asyncio.Future[Address | None] = self._loop.create_future()
        self._waiters.append(fut)
        if self._tx is None:
            self._send_keepalive()
        else:
            self._send(self._tx)  # one is outstanding: send it again
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def stop(self) -> None:
        """No more keepalives; a pending :meth:`refresh` returns ``None``."""
        self._stopped = True
        for timer in (self._timer, self._retx):
            if timer is not None:
                timer.cancel()
        self._timer = self._retx = None
        self._tx = None
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        self._mux.remove_stun_handler(self.on_stun)
