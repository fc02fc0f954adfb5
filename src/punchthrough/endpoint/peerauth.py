"""Peer authentication: who is on the other end of a peer connection, proven end to end.

Setup, in the fewest round trips (issue 17); R is the relayed round-trip time:

1. The acceptor, as soon as the dialer's Initial arrives (t = R/2), asks its ``admit`` callback
   about the peer id the relay stamped on the packets and sends its answer as 0.5-RTT data on
   its own control stream (server bidi stream 1): ``Hello`` (then its candidates) or
   ``Hangup`` + CONNECTION_CLOSE: :func:`early_answer`.
2. The dialer, on ``HandshakeCompleted`` (t = R), pins the acceptor's certificate to the peer id
   it dialled (:func:`pin_acceptor`) and sends ``Hello`` + ``PeerAuth`` (a signature over the
   connection's channel binding) on client bidi stream 0 in its first 1-RTT flight without
   waiting for anything: :func:`send_auth`. With the acceptor's ``Hello`` (it came with the
   handshake) the call is usable for the dialer at once: one relayed round trip
   (:func:`read_answer`).
3. The acceptor checks the signature and that the proven id is the one the relay stamped
   (t = 1.5 R): :func:`verify_auth`, bounded by :func:`auth_deadline`. Until then nothing the
   dialer sent reaches the application (the session holds it); a failure closes the connection
   and drops it all.

These functions only speak and check the exchange; they return a :class:`SetupFailure` instead
of acting on it, so the connection alone owns its state.
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

#: ``allow(peer_id)``: True admits the caller. May be a coroutine function. It is asked about
#: the id the relay stamped on the dialer's Initial, half a round trip before the dialer proves
#: it: a connection whose dialer then fails to prove that id never reaches the application.
AllowCallback = Callable[[PeerId], "bool | Awaitable[bool]"]
#: The endpoint's admission of a dialer (asked at its Initial): ``None`` admits, else the refusal
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


def send_auth(quic: QuicConnection, identity: Identity, writer: QuicStreamWriter) -> None:
    """Dialer: ``Hello`` + ``PeerAuth`` on the control stream, with the handshake completion."""
    binding = channel_binding(quic)
    auth = PeerAuth(peer_id=identity.peer_id, signature=sign_exporter(identity, binding))
    writer.write(encode_frame(_hello()) + encode_frame(auth))


async def read_answer(reader: asyncio.StreamReader) -> Hello | Hangup | SetupFailure:
    """Dialer: the acceptor's first message on its control stream.

    Returns its ``Hello`` (accepted, version agreed), its ``Hangup`` (refused), or why setup
    failed.
    """
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


async def early_answer(
    stamped: PeerId, admit: Admit | None, send: Callable[[Message], None]
) -> SetupFailure | None:
    """Acceptor, at the dialer's Initial: the admission policy's answer about ``stamped`` (the
    id the relay stamped; the dialer must still prove it, :func:`verify_auth`), sent with
    ``send`` as 0.5-RTT data. Returns the refusal, or ``None`` (``Hello`` sent)."""
    refusal = await admit(stamped) if admit is not None else None
    if refusal is not None:
        send(Hangup(reason=refusal))
        code = CLOSE_BUSY if refusal == "busy" else CLOSE_REFUSED
        return SetupFailure(PeerRefused(refusal), code, refusal)
    send(_hello())
    return None


async def verify_auth(
    quic: QuicConnection,
    reader: asyncio.StreamReader,
    *,
    stamped: PeerId,
    timeout: float,
) -> PeerId | SetupFailure:
    """Acceptor: read the dialer's ``Hello`` + ``PeerAuth`` from the control stream and check
    them. ``stamped`` is the peer id the relay stamped on the packets (the one admitted by
    :func:`early_answer`); the dialer must prove it. Returns the proven peer id, or why setup
    failed.
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
