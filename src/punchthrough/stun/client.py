"""asyncio STUN client over a shared :class:`~punchthrough.netio.DatagramSocket`.

The client never owns the socket: whoever demultiplexes it calls :meth:`StunClient.handle_datagram`
(or :meth:`StunClient.attach` makes the client the sole receiver). All timing comes from the
running loop (``loop.time``/``call_at``) so a virtual-time loop drives it unchanged; the
retransmission logic itself is the sans-IO
:class:`~punchthrough.stun.transaction.ClientTransaction`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from punchthrough.netio import Address, DatagramSocket
from punchthrough.stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCode,
    MappedAddress,
    OtherAddress,
    ResponseOrigin,
    Software,
    UnknownAttributes,
    XorMappedAddress,
)
from punchthrough.stun.constants import DEFAULT_MAX_RETRANSMITS, DEFAULT_RM, DEFAULT_RTO
from punchthrough.stun.errors import (
    StunDecodeError,
    StunError,
    StunErrorResponse,
    StunFamilyMismatch,
    StunTimeout,
)
from punchthrough.stun.message import (
    Message,
    MessageClass,
    Method,
    decode_message,
    encode,
    new_transaction_id,
)
from punchthrough.stun.transaction import (
    ClientTransaction,
    RetransmissionPolicy,
    TransactionState,
    TransactionTable,
)

log = logging.getLogger(__name__)

#: Default SOFTWARE in our requests. Besides naming us, it makes a request large enough that an
#: anti-amplification server (ours: response <= 3x request) can return every RFC 5780 attribute,
#: even over IPv6.
DEFAULT_SOFTWARE = "punchthrough"


@dataclass(frozen=True)
class BindingResult:
    """Outcome of one Binding transaction."""

    mapped: Address  # XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS
    source: Address  # who answered
    response_origin: Address | None
    other_address: Address | None
    rtt: float  # seconds from first send to the response
    local: Address = ("0.0.0.0", 0)  # the socket's local address
    retransmissions: int = 0
    software: str | None = None
    response: Message | None = field(default=None, compare=False, repr=False)


class _Pending:
    __slots__ = ("future", "timer", "tx")

    def __init__(self, tx: ClientTransaction, future: asyncio.Future[None]) -> None:
        self.tx = tx
        self.future = future
        self.timer: asyncio.TimerHandle | None = None


def _is_v6(ip: str) -> bool:
    """IPv6, counting an IPv4-mapped address (``::ffff:a.b.c.d``) as the IPv4 it is."""
    return ":" in ip and not (ip.startswith("::ffff:") and "." in ip)


class StunClient:
    """Binding requests with RFC 8489 retransmission, on a socket shared with other traffic."""

    def __init__(
        self,
        sock: DatagramSocket,
        rto: float = DEFAULT_RTO,
        max_retransmits: int = DEFAULT_MAX_RETRANSMITS,
        rm: int = DEFAULT_RM,
        *,
        software: str | None = DEFAULT_SOFTWARE,
        fingerprint: bool = True,
    ) -> None:
        self._sock = sock
        self._policy = RetransmissionPolicy(rto=rto, max_retransmits=max_retransmits, rm=rm)
        self._software = software
        self._fingerprint = fingerprint
        self._table = TransactionTable()
        self._pending: dict[bytes, _Pending] = {}
        self._hairpin: dict[bytes, _Pending] = {}
        self._attached = False
        self._closed = False
        self._malformed = 0
        self._sent = 0

    # --- receiving -----------------------------------------------------------------------------

    def handle_datagram(self, data: bytes, addr: Address) -> bool:
        """Feed one received datagram; True if it answered (or was) one of our transactions."""
        if not data or data[0] > 3:  # not STUN (RFC 9443 first-byte ranges)
            return False
        try:
            message = decode_message(data)
        except StunDecodeError as exc:
            self._malformed += 1
            log.debug("dropping malformed STUN from %s:%d: %s", *addr, exc)
            return False
        if message.message_class is MessageClass.REQUEST:
            hp = self._hairpin.get(message.transaction_id)
            if hp is None:
                return False
            if not hp.future.done():
                hp.future.set_result(None)
            return True
        if message.message_class is MessageClass.INDICATION:
            return False
        # Without open transactions there is no running loop to ask for the time, nor a need.
        now = asyncio.get_running_loop().time() if len(self._table) else 0.0
        tx = self._table.handle_response(message, addr, now)
        if tx is None:
            return False
        pending = self._pending.get(tx.transaction_id)
        if pending is not None and not pending.future.done():
            pending.future.set_result(None)
        return True

    def attach(self) -> None:
        """Make this client the socket's only receiver (when nothing else shares it)."""
        self._sock.set_receiver(self._receive)
        self._attached = True

    def _receive(self, data: bytes, addr: Address) -> None:
        self.handle_datagram(data, addr)

    # --- requests ------------------------------------------------------------------------------

    async def binding(
        self,
        server: Address,
        change_ip: bool = False,
        change_port: bool = False,
        timeout: float | None = None,
    ) -> BindingResult:
        """One Binding transaction to ``server``; raises StunTimeout or StunErrorResponse."""
        attrs: list[Attribute] = []
        if change_ip or change_port:
            attrs.append(ChangeRequest(change_ip=change_ip, change_port=change_port))
        tx = await self._run(server, attrs, timeout, self._table, self._pending)
        response = tx.response
        assert response is not None and tx.response_source is not None and tx.rtt is not None
        if response.message_class is MessageClass.ERROR_RESPONSE:
            err = response.get(ErrorCode)
            unknown = response.get(UnknownAttributes)
            raise StunErrorResponse(
                err.code if err else 0,
                # Some servers (coturn) pad the reason with NULs inside its length.
                err.reason.rstrip("\x00") if err else "error response without ERROR-CODE",
                unknown.types if unknown else (),
            )
        unknown_required = response.unknown_comprehension_required()
        if unknown_required:
            # RFC 8489 §6.3.3: such a success response fails the transaction.
            names = ", ".join(f"0x{t:04X}" for t in unknown_required)
            raise StunError(f"response has unknown comprehension-required attributes: {names}")
        xma = response.get(XorMappedAddress)
        ma = response.get(MappedAddress)
        if xma is not None:
            mapped = xma.address
        elif ma is not None:
            mapped = ma.address
        else:
            raise StunError("success response carries no (XOR-)MAPPED-ADDRESS")
        if _is_v6(mapped[0]) != _is_v6(server[0]):
            raise StunFamilyMismatch(server, mapped)
        origin = response.get(ResponseOrigin)
        other = response.get(OtherAddress)
        software = response.get(Software)
        return BindingResult(
            mapped=mapped,
            source=tx.response_source,
            response_origin=origin.address if origin else None,
            other_address=other.address if other else None,
            rtt=tx.rtt,
            local=self._sock.local_address,
            retransmissions=tx.sends - 1,
            software=software.value if software else None,
            response=response,
        )

    async def probe_hairpin(self, mapped: Address, timeout: float) -> bool:
        """Send a Binding request to our own mapped address; True if it comes back to this
        socket with the same transaction id (RFC 5780 §4.5), False after ``timeout``."""
        try:
            await self._run(mapped, [], timeout, None, self._hairpin)
        except StunTimeout:
            return False
        return True

    async def _run(
        self,
        dest: Address,
        attrs: list[Attribute],
        timeout: float | None,
        table: TransactionTable | None,
        registry: dict[bytes, _Pending],
    ) -> ClientTransaction:
        if self._closed:
            raise StunError("STUN client is closed")
        loop = asyncio.get_running_loop()
        if self._software is not None:
            attrs = [*attrs, Software(self._software)]
        message = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(), attrs)
        data = encode(message, fingerprint=self._fingerprint)
        now = loop.time()
        tx = ClientTransaction(
            message.transaction_id,
            data,
            dest,
            method=Method.BINDING,
            policy=self._policy,
            deadline=None if timeout is None else now + timeout,
        )
        pending = _Pending(tx, loop.create_future())
        registry[tx.transaction_id] = pending
        if table is not None:
            table.add(tx)
        try:
            self._send(tx.start(now).data, dest)
            self._arm(pending)
            await pending.future
            return tx
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            registry.pop(tx.transaction_id, None)
            if table is not None:
                table.remove(tx.transaction_id)

    def _send(self, data: bytes, dest: Address) -> None:
        self._sock.sendto(data, dest)
        self._sent += 1

    def _arm(self, pending: _Pending) -> None:
        when = pending.tx.next_timer()
        if when is None:
            return
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_at(when, self._on_timer, pending, when)

    def _on_timer(self, pending: _Pending, when: float) -> None:
        pending.timer = None
        if pending.future.done():
            return
        # call_at may fire up to one clock resolution early; never let that look like "not due".
        now = max(asyncio.get_running_loop().time(), when)
        transmit = pending.tx.handle_timer(now)
        if transmit is not None:
            try:
                self._send(transmit.data, transmit.destination)
            except OSError as exc:  # SocketClosed and friends: the transaction cannot go on
                pending.future.set_exception(exc)
                return
        if pending.tx.state is TransactionState.TIMED_OUT:
            pending.future.set_exception(
                StunTimeout(
                    f"no STUN response from {pending.tx.destination[0]}:"
                    f"{pending.tx.destination[1]} after {pending.tx.sends} sends"
                )
            )
            return
        self._arm(pending)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters: datagrams sent, malformed STUN received, responses matching nothing."""
        return {
            "sent": self._sent,
            "malformed": self._malformed,
            "unknown_transaction": self._table.unknown_responses,
            "mismatched": self._table.mismatched_responses,
            "pending": len(self._pending) + len(self._hairpin),
        }

    def close(self) -> None:
        """Fail every pending transaction with StunError and detach from the socket."""
        if self._closed:
            return
        self._closed = True
        for pending in [*self._pending.values(), *self._hairpin.values()]:
            if pending.timer is not None:
                pending.timer.cancel()
                pending.timer = None
            if not pending.future.done():
                pending.future.set_exception(StunError("STUN client closed"))
        if self._attached:
            self._sock.set_receiver(None)
            self._attached = False
