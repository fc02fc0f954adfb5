"""The client's stream link: a TLS or WebSocket connection to a relay that looks like a UDP
socket to :class:`~punchthrough.relay.RelayClient`.

:func:`open_link` connects (directly or through an HTTP proxy, :mod:`.proxy`), does TLS
(pinned or CA-checked, :mod:`.tls`) and for ``wss://`` the WebSocket upgrade (``websockets``
sans-IO client, subprotocol ``punchthrough-relay.v1``), and returns a :class:`StreamLink`: a
:class:`~punchthrough.netio.DatagramSocket` whose only peer is the relay. A relay client built
on it (through its own :class:`~punchthrough.transport.demux.DatagramMux`) runs the unchanged
relay protocol: the QUIC control connection, SEND/DATA frames and STUN keepalives all ride the
stream, each datagram length-prefixed (TLS) or one binary message (WebSocket).

Relay addresses: ``tls://host:port`` and ``wss://host[:port]/path`` (:func:`parse_stream_url`).
Host names are resolved at connect time (both families, RFC 8305 happy eyeballs by asyncio);
with a CA-issued relay certificate TLS checks the name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.http11 import Response
from websockets.uri import parse_uri

from punchthrough.identity import PeerId
from punchthrough.netio import Address, DatagramReceiver, SocketClosed
from punchthrough.relay.frames import RELAY_ALPN
from punchthrough.relay.stream.carrier import (
    WS_DEFAULT_PATH,
    WS_SUBPROTOCOL,
    Carrier,
    CarrierError,
    RawCarrier,
    WsCarrier,
    ws_max_size,
)
from punchthrough.relay.stream.proxy import Proxy, open_tunnel
from punchthrough.relay.stream.tls import HTTP_ALPN, check_pin, client_context

log = logging.getLogger(__name__)

TransportKind = Literal["tls", "websocket"]
#: Default ports: HTTPS (RFC 9110 section 4.2.2), what UDP-blocking networks let out.
DEFAULT_TLS_PORT: Final = 443
#: A link silent this long is dead (the relay client sends something every 2-10 s).
LINK_IDLE_TIMEOUT: Final = 60.0
#: Bytes of the relay's WebSocket upgrade response we read before giving up.
MAX_UPGRADE_RESPONSE: Final = 16 * 1024


class LinkError(ConnectionError):
    """The stream link could not be opened (TCP, proxy, TLS or upgrade); the message says."""


@dataclass(frozen=True, slots=True)
class StreamTarget:
    """One stream transport of a relay: ``tls://host:port`` or ``wss://host:port/path``."""

    kind: TransportKind
    host: str
    port: int
    path: str = WS_DEFAULT_PATH

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.kind == "tls":
            return f"tls://{host}:{self.port}"
        return f"wss://{host}:{self.port}{self.path}"


def parse_stream_url(text: str) -> StreamTarget:
    """``tls://host[:port]`` or ``wss://host[:port][/path]`` (port 443 by default)."""
    parts = urlsplit(text.strip())
    if parts.scheme not in ("tls", "wss"):
        raise ValueError(f"{text!r}: a stream relay is tls://host:port or wss://host/path")
    if not parts.hostname:
        raise ValueError(f"{text!r} has no host")
    try:
        port = parts.port or DEFAULT_TLS_PORT
    except ValueError:
        raise ValueError(f"{text!r} has a bad port") from None
    if parts.scheme == "tls":
        if parts.path not in ("", "/"):
            raise ValueError(f"{text!r}: a tls:// relay has no path")
        return StreamTarget("tls", parts.hostname, port)
    return StreamTarget("websocket", parts.hostname, port, parts.path or WS_DEFAULT_PATH)


class StreamLink:
    """A :class:`~punchthrough.netio.DatagramSocket` over one stream to a relay.

    Every datagram is "from" and "to" :attr:`remote` (the relay's TCP address). ``sendto``
    never blocks: past the carrier's write bound the datagram is dropped and counted in
    ``send_errors``, as UDP drops it.
    """

    def __init__(
        self, carrier: Carrier, reader: asyncio.StreamReader, remote: Address, local: Address
    ) -> None:
        self._carrier = carrier
        self._reader = reader
        self.remote = remote
        self._local = local
        self.kind: TransportKind = "websocket" if isinstance(carrier, WsCarrier) else "tls"
        self._receiver: DatagramReceiver | None = None
        self._send_errors = 0
        self._closed = False
        #: Why the link ended (None while up, or closed by us).
        self.close_reason: str | None = None
        self._on_lost: list[Callable[[str], None]] = []
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        reason = "relay closed the stream"
        try:
            truncated = await self._carrier.pump(self._reader, self._deliver, LINK_IDLE_TIMEOUT)
            if truncated:
                reason = f"relay closed the stream inside a datagram ({truncated} bytes)"
        except TimeoutError:
            reason = f"nothing from the relay for {LINK_IDLE_TIMEOUT:g} s"
        except CarrierError as exc:
            reason = f"relay broke the stream protocol: {exc}"
        except OSError as exc:
            reason = f"stream error: {exc}"
        except asyncio.CancelledError:
            return
        self._lost(reason)

    def _deliver(self, data: bytes) -> None:
        receiver = self._receiver
        if receiver is None or self._closed:
            return
        try:
            receiver(data, self.remote)
        except Exception:
            log.exception("datagram receiver failed on a stream datagram")

    def _lost(self, reason: str) -> None:
        if self._closed:
            return
        self.close_reason = reason
        self._close()
        for cb in list(self._on_lost):
            try:
                cb(reason)
            except Exception:
                log.exception("stream link loss handler failed")

    def on_lost(self, cb: Callable[[str], None]) -> None:
        """``cb(reason)`` when the link ends by itself (not when we close it)."""
        self._on_lost.append(cb)

    # -- DatagramSocket ------------------------------------------------------------------------
    @property
    def local_address(self) -> Address:
        return self._local

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def send_errors(self) -> int:
        return self._send_errors + self._carrier.dropped_backlog

    def sendto(self, data: bytes, addr: Address) -> None:
        if self._closed:
            raise SocketClosed(f"stream link to {self.remote[0]}:{self.remote[1]} is closed")
        if addr != self.remote:
            self._send_errors += 1  # a link has one peer: anything else is not sent
            return
        try:
            self._carrier.send(data)
        except (OSError, CarrierError, ValueError):
            self._send_errors += 1

    def set_receiver(self, receiver: DatagramReceiver | None) -> None:
        self._receiver = receiver

    def _close(self) -> None:
        self._closed = True
        self._carrier.close()

    def close(self) -> None:
        """Close the stream (queued datagrams are flushed first). Idempotent."""
        if self._closed:
            return
        self._close()
        self._task.cancel()

    @property
    def stats(self) -> dict[str, int]:
        return {
            "datagrams_sent": self._carrier.sent,
            "datagrams_received": self._carrier.received,
            "dropped_backlog": self._carrier.dropped_backlog,
        }


async def open_link(
    target: StreamTarget,
    *,
    pin: PeerId | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    proxy: Proxy | None = None,
    timeout: float = 10.0,
) -> StreamLink:
    """Connect, TLS, (upgrade), within ``timeout``. Raises :class:`LinkError` (and its
    subclasses' reasons in the message) or ``TimeoutError``; nothing stays open on failure."""
    alpn = RELAY_ALPN if target.kind == "tls" else HTTP_ALPN
    ctx = client_context(alpn, pin=pin, ca_file=ca_file)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            server_hostname = target.host if pin is None else _sni(target.host)
            if proxy is None:
                reader, writer = await asyncio.open_connection(
                    target.host,
                    target.port,
                    ssl=ctx,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout,
                    happy_eyeballs_delay=0.25,
                )
            else:
                reader, writer = await open_tunnel(proxy, target.host, target.port)
                await writer.start_tls(
                    ctx, server_hostname=server_hostname, ssl_handshake_timeout=timeout
                )
            ssl_object = writer.get_extra_info("ssl_object")
            check_pin(ssl_object, pin)
            chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            if chosen not in (None, alpn):
                raise LinkError(f"relay chose ALPN {chosen!r}, we offered {alpn!r}")
            carrier: Carrier
            if target.kind == "tls":
                carrier = RawCarrier(writer)
            else:
                carrier = await _upgrade(target, reader, writer)
    except TimeoutError:
        if writer is not None:
            writer.transport.abort()
        raise
    except LinkError:
        if writer is not None:
            writer.transport.abort()
        raise
    except (OSError, ValueError) as exc:  # refused, proxy, TLS (ssl.SSLError), RelayTlsError
        if writer is not None:
            writer.transport.abort()
        raise LinkError(f"{target.url}: {exc}") from None
    peer = writer.get_extra_info("peername")
    sockname = writer.get_extra_info("sockname")
    remote = (str(peer[0]), int(peer[1])) if peer else (target.host, target.port)
    local = (str(sockname[0]), int(sockname[1])) if sockname else ("0.0.0.0", 0)
    return StreamLink(carrier, reader, remote, local)


def _sni(host: str) -> str | None:
    """SNI for a pinned relay: its name, or none for an IP literal (RFC 6066 section 3)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return host
    return None


async def _upgrade(
    target: StreamTarget, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> WsCarrier:
    """The WebSocket upgrade, client side (RFC 6455 section 4.1), by ``websockets``."""
    uri = parse_uri(f"wss://{_authority(target)}{target.path}")
    proto = ClientProtocol(uri, subprotocols=[WS_SUBPROTOCOL], max_size=ws_max_size())
    proto.send_request(proto.connect())
    for chunk in proto.data_to_send():
        writer.write(chunk)
    received = 0
    while True:
        data = await reader.read(4096)
        if not data:
            raise LinkError(f"{target.url}: relay closed the connection during the upgrade")
        received += len(data)
        if received > MAX_UPGRADE_RESPONSE:
            raise LinkError(f"{target.url}: upgrade response over {MAX_UPGRADE_RESPONSE} bytes")
        proto.receive_data(data)
        events = proto.events_received()
        if proto.handshake_exc is not None:
            raise LinkError(f"{target.url}: WebSocket upgrade refused: {proto.handshake_exc}")
        if any(isinstance(e, Response) for e in events):
            break
    if proto.subprotocol != WS_SUBPROTOCOL:
        raise LinkError(f"{target.url}: relay did not accept subprotocol {WS_SUBPROTOCOL}")
    # The relay never sends before we do, so nothing arrived after the response (any such
    # events would be dropped here).
    return WsCarrier(writer, proto)


def _authority(target: StreamTarget) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{host}:{target.port}"
