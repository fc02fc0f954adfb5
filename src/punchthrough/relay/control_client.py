"""The client side of a relay control connection: who the relay is, registering, lookups.

Registration proves possession of our key for *this* QUIC connection: we sign its channel
binding under ``RELAY_REGISTER_CONTEXT``, so the proof cannot be replayed on another connection
(the relay's side: :mod:`punchthrough.relay.control`). Trouble on the control stream surfaces
as :class:`RelayClosed` (the connection went away) or :class:`RelayError` (a bad reply).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aioquic.quic.connection import QuicConnection

from punchthrough.identity import (
    RELAY_REGISTER_CONTEXT,
    Identity,
    IdentityError,
    PeerId,
    channel_binding,
    peer_certificate_chain,
    peer_id_from_certificate,
    sign_exporter,
    verify_quic_peer,
)
from punchthrough.netio import Address
from punchthrough.relay.errors import (
    RelayClosed,
    RelayError,
    RelayLookupRefused,
    RelayRegistrationError,
)
from punchthrough.relay.frames import derive_frame_token
from punchthrough.signal import (
    Message,
    RelayLookupResult,
    RelayRegister,
    RelayRegistered,
    SignalError,
    read_message,
    write_message,
)
from punchthrough.signal import RelayError as RelayErrorMsg
from punchthrough.transport.quic import QuicStreamWriter


def relay_peer_id(conn: QuicConnection, expected: PeerId | None) -> PeerId | None:
    """The relay's peer id, from its certificate; with ``expected``, it must be that one."""
    try:
        if expected is not None:
            verify_quic_peer(conn, expected)
        chain = peer_certificate_chain(conn)
        return peer_id_from_certificate(chain[0]) if chain else None
    except IdentityError as exc:
        raise RelayError(f"relay identity: {exc}") from None


async def send(writer: QuicStreamWriter, msg: Message) -> None:
    """Send ``msg`` on the control stream (the first half of :func:`request`)."""
    try:
        await write_message(writer, msg, timeout=None)
    except ConnectionError as exc:
        raise RelayClosed(f"relay control connection closed: {exc}") from None
    except SignalError as exc:
        raise RelayError(f"cannot send to relay: {exc}") from None


async def receive(reader: asyncio.StreamReader) -> Message | None:
    """The relay's next reply (``None``: it ended the stream)."""
    try:
        return await read_message(reader)
    except ConnectionError as exc:
        raise RelayClosed(f"relay control connection closed: {exc}") from None
    except SignalError as exc:
        raise RelayError(f"bad reply from relay: {exc}") from None


async def request(
    reader: asyncio.StreamReader, writer: QuicStreamWriter, msg: Message
) -> Message | None:
    """Send ``msg`` on the control stream; the reply (``None``: the relay ended the stream)."""
    await send(writer, msg)
    return await receive(reader)


def register_message(
    conn: QuicConnection, identity: Identity, clock: Callable[[], float], *, visitor: bool = False
) -> RelayRegister:
    """``RelayRegister`` for ``identity``, signing ``conn``'s channel binding."""
    signature = sign_exporter(identity, channel_binding(conn), context=RELAY_REGISTER_CONTEXT)
    return RelayRegister(
        peer_id=identity.peer_id,
        timestamp_ms=max(0, int(clock() * 1000)),
        signature=signature,
        visitor=visitor,
    )


async def send_register(
    writer: QuicStreamWriter,
    conn: QuicConnection,
    identity: Identity,
    clock: Callable[[], float],
    *,
    visitor: bool = False,
) -> bytes:
    """Send ``RelayRegister`` without waiting for the answer (issue 17); returns the frame
    token, which both ends derive from ``conn`` (``frames.derive_frame_token``)."""
    await send(writer, register_message(conn, identity, clock, visitor=visitor))
    return derive_frame_token(channel_binding(conn))


async def register(
    reader: asyncio.StreamReader,
    writer: QuicStreamWriter,
    conn: QuicConnection,
    identity: Identity,
    clock: Callable[[], float],
    *,
    visitor: bool = False,
) -> Message | None:
    """Send ``RelayRegister`` for ``identity`` over ``conn``; the reply, as :func:`request`."""
    msg = register_message(conn, identity, clock, visitor=visitor)
    return await request(reader, writer, msg)


def registered(reply: Message, identity: Identity) -> RelayRegistered:
    """The relay's answer to our registration; raises if it is not "registered as us"."""
    if isinstance(reply, RelayErrorMsg):
        raise RelayRegistrationError(reply.code, reply.reason)
    if not isinstance(reply, RelayRegistered) or reply.peer_id != identity.peer_id:
        raise RelayError(f"unexpected reply to registration: {type(reply).__name__}")
    return reply


def lookup_result(reply: Message | None, peer_id: PeerId) -> tuple[Address, ...]:
    """The relay addresses a ``RelayLookup`` reply names for ``peer_id`` (empty: none)."""
    if isinstance(reply, RelayErrorMsg):
        raise RelayLookupRefused(reply.code, reply.reason)
    if not isinstance(reply, RelayLookupResult) or reply.peer_id != peer_id:
        raise RelayError(f"unexpected reply to lookup: {type(reply).__name__}")
    return tuple((r.host, r.port) for r in reply.relays) if reply.found else ()
