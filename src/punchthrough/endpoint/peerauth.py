"""Peer authentication: who is on the other end of a peer connection, proven end to end.

Setup (after the TLS handshake, which itself runs through the relay):

1. The dialer pins the acceptor's certificate to the peer id it dialled (:func:`pin_acceptor`).
2. The dialer opens the control stream (client bidi stream 0) and sends ``Hello`` and
   ``PeerAuth`` (a signature over the connection's channel binding): :func:`dial`.
3. The acceptor checks the signature (and that the proven id is the one the relay stamped on
   the packets), asks its ``admit`` callback, and answers ``Hello`` (accepted) or ``Hangup`` +
   CONNECTION_CLOSE with :data:`CLOSE_REFUSED` (refused): :func:`accept`, bounded by
   :func:`auth_deadline`.

The connection is *usable* when the dialer has the acceptor's ``Hello``: two round trips through
the relay. These functions only speak and check the exchange; they return a
:class:`SetupFailure` instead of acting on it, so the connection alone owns its state.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aioquic.quic.connection import QuicConnection

from punchthrough import __version__
from punchthrough.endpoint.codes import (
    CLOSE_AUTH_FAILED,
    CLOSE_BUSY,
    CLOSE_PEER_ID_MISMATCH,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REFUSED,
)
from punchthrough.endpoint.errors import ConnectError, HandshakeFailed, PeerIdMismatch, PeerRefused
from punchthrough.identity import (
    BadSignature,
    Identity,
    PeerId,
    channel_binding,
    sign_exporter,
    verify_exporter,
    verify_quic_peer,
)
from punchthrough.identity import PeerIdMismatch as IdentityPeerIdMismatch
from punchthrough.signal import (
    SUPPORTED_VERSIONS,
    Hangup,
    Hello,
    Message,
    PeerAuth,
    SignalDecodeError,
    SignalError,
    encode_frame,
    negotiate_version,
    read_message,
)
from punchthrough.transport.quic import QuicStreamWriter

log = logging.getLogger(__name__)

#: Software string in our ``Hello``.
SOFTWARE: Final = f"punchthrough/{__version__}"

#: ``allow(peer_id)``: True admits the caller. May be a coroutine function.
AllowCallback = Callable[[PeerId], "bool | Awaitable[bool]"]
#: The endpoint's admission of an authenticated dialer: ``None`` admits, else the refusal
#: reason (``"busy"`` closes with :data:`CLOSE_BUSY`, anything else :data:`CLOSE_REFUSED`).
Admit = Callable[[PeerId], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class SetupFailure:
    """Why setup failed: the error for whoever waits on the connection, and the code and
    reason to close the QUIC connection with."""

    error: ConnectError
    code: int
    reason: str


def _hello() -> Hello:
    return Hello(versions=tuple(SUPPORTED_VERSIONS), software=SOFTWARE)


def pin_acceptor(quic: QuicConnection, expected: PeerId) -> SetupFailure | None:
    """Dialer, on ``HandshakeCompleted``: does the acceptor's certificate name ``expected``?"""
    try:
        verify_quic_peer(quic, expected)
    except IdentityPeerIdMismatch as exc:
        err = PeerIdMismatch(exc.expected, exc.actual, "the acceptor's certificate")
        return SetupFailure(err, CLOSE_PEER_ID_MISMATCH, "peer id mismatch")
    return None


async def dial(
    quic: QuicConnection,
    identity: Identity,
    reader: asyncio.StreamReader,
    writer: QuicStreamWriter,
) -> Hello | Hangup | SetupFailure:
    """Dialer: send ``Hello`` + ``PeerAuth`` on the control stream, read the acceptor's answer.

    Returns its ``Hello`` (accepted, version agreed), its ``Hangup`` (refused), or why setup
    failed.
    """
    binding = channel_binding(quic)
    auth = PeerAuth(peer_id=identity.peer_id, signature=sign_exporter(identity, binding))
    writer.write(encode_frame(_hello()))
    writer.write(encode_frame(auth))
    try:
        msg = await read_message(reader)
    except SignalError as exc:
        return SetupFailure(
            HandshakeFailed(f"bad answer on the control stream: {exc}"),
            CLOSE_PROTOCOL_ERROR,
            "bad control message",
        )
    if isinstance(msg, Hangup):
        return msg
    if not isinstance(msg, Hello):
        what = "end of stream" if msg is None else type(msg).__name__
        return SetupFailure(
            HandshakeFailed(f"expected Hello from the acceptor, got {what}"),
            CLOSE_PROTOCOL_ERROR,
            "expected hello",
        )
    try:
        negotiate_version(msg.versions)
    except SignalDecodeError as exc:
        return SetupFailure(HandshakeFailed(str(exc)), CLOSE_PROTOCOL_ERROR, "version")
    return msg


async def accept(
    quic: QuicConnection,
    reader: asyncio.StreamReader,
    *,
    stamped: PeerId,
    timeout: float,
    admit: Admit | None,
    send: Callable[[Message], None],
) -> PeerId | SetupFailure:
    """Acceptor: read the dialer's ``Hello`` + ``PeerAuth`` from the control stream, check them,
    ask ``admit``, and answer with ``send`` (``Hello``, or ``Hangup`` if refused).

    ``stamped`` is the peer id the relay stamped on the packets; the dialer must prove it.
    Returns the proven peer id, or why setup failed.
    """
    try:
        hello = await read_message(reader, timeout=timeout)
        auth = await read_message(reader, timeout=timeout)
    except SignalError as exc:
        return SetupFailure(HandshakeFailed(str(exc)), CLOSE_PROTOCOL_ERROR, "bad control message")
    if not isinstance(hello, Hello) or not isinstance(auth, PeerAuth):
        return SetupFailure(
            HandshakeFailed("expected Hello and PeerAuth"), CLOSE_PROTOCOL_ERROR, "expected auth"
        )
    try:
        negotiate_version(hello.versions)
    except SignalDecodeError as exc:
        return SetupFailure(HandshakeFailed(str(exc)), CLOSE_PROTOCOL_ERROR, "version")
    if auth.peer_id != stamped:
        # The relay stamped another id on the packets than the one the dialer proves.
        return SetupFailure(
            HandshakeFailed(f"dialer claims {auth.peer_id}, relay says {stamped}"),
            CLOSE_AUTH_FAILED,
            "peer id differs from the relay registration",
        )
    try:
        verify_exporter(auth.peer_id, channel_binding(quic), auth.signature)
    except BadSignature:
        return SetupFailure(
            HandshakeFailed("the dialer's PeerAuth signature does not verify"),
            CLOSE_AUTH_FAILED,
            "bad peer authentication",
        )
    refusal = await admit(auth.peer_id) if admit is not None else None
    if refusal is not None:
        send(Hangup(reason=refusal))
        code = CLOSE_BUSY if refusal == "busy" else CLOSE_REFUSED
        return SetupFailure(PeerRefused(refusal), code, refusal)
    send(_hello())
    return auth.peer_id


async def auth_deadline(
    timeout: float, ready: asyncio.Future[None], fail: Callable[[SetupFailure], None]
) -> None:
    """Acceptor: ``fail`` the setup unless it is over (``ready`` done) within ``timeout``."""
    await asyncio.sleep(timeout)
    if not ready.done():
        fail(
            SetupFailure(
                HandshakeFailed("the dialer did not authenticate in time"),
                CLOSE_AUTH_FAILED,
                "authentication timeout",
            )
        )


async def call_allow(allow: AllowCallback, peer_id: PeerId) -> bool:
    """Run an ``allow`` callback, sync or async; an exception counts as a refusal."""
    try:
        result = allow(peer_id)
        if inspect.isawaitable(result):
            result = await result
    except Exception:
        log.exception("allow callback failed for %s; refusing", peer_id)
        return False
    return bool(result)
