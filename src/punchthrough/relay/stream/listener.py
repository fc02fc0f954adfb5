"""The relay's TCP port: TLS, then either the raw stream or a WebSocket upgrade, into the hub.

One asyncio TCP server per listen address. For each connection, in order, each step bounded:

1. **Caps before any work** (:class:`.hub.StreamLimits`): total connections and per IPv4
   address / IPv6 /64; over a cap the connection is closed at once, before TLS costs anything.
2. **TLS** within ``handshake_timeout`` (garbage, a plain-HTTP request, a wrong version: the
   handshake fails, counted, closed).
3. **Transport by ALPN** (RFC 7301): ``punchthrough-relay/1`` is the length-prefixed stream,
   ``http/1.1`` the WebSocket upgrade (``websockets`` sans-IO, subprotocol
   ``punchthrough-relay.v1``, path ``StreamLimits.ws_path``), within ``header_timeout`` and
   ``max_header_bytes``. A client offering no ALPN is told apart by its first bytes
   (``GET `` is HTTP).
4. **A link** in the hub (:mod:`.hub`): datagrams go to the relay's demultiplexer. Closed when
   it breaks the framing, goes silent for ``idle_timeout``, or has not registered within
   ``register_timeout``.

Every end is counted in ``stream_*`` stats; one connection's trouble never reaches another.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from typing import Final, Protocol

from websockets.http11 import Request
from websockets.server import ServerProtocol

from punchthrough.netio import Address
from punchthrough.relay.limits import address_prefix
from punchthrough.relay.stream.carrier import (
    WS_SUBPROTOCOL,
    Carrier,
    CarrierError,
    RawCarrier,
    WsCarrier,
    ws_max_size,
)
from punchthrough.relay.stream.hub import StreamHub, StreamLimits
from punchthrough.relay.stream.tls import HTTP_ALPN

log = logging.getLogger(__name__)

#: Bytes peeked when the client offered no ALPN: enough for ``GET `` (an HTTP request line).
_PEEK: Final = 4
#: asyncio's read buffer bound per connection (it stops reading at twice this): we take what
#: arrives at once, so it only fills if the event loop falls behind.
READ_LIMIT: Final = 16 * 1024
#: Local keys of the hubs (``100::N``: never a real address, see :mod:`.hub`).
_HUB_IDS = itertools.count(1)


class Attachable(Protocol):
    """What the listener needs of a relay (``RelayServer`` provides it)."""

    def attach_socket(self, local: Address, sock: StreamHub) -> None: ...

    def is_registered(self, address: Address) -> bool: ...

    def address_gone(self, address: Address) -> None: ...


class StreamListener:
    """One TCP listen address of a relay. Build with :meth:`start`; the relay's ``close()``
    closes it (the hub is one of its sockets), or call :meth:`close`."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        limits: StreamLimits,
        is_registered: Callable[[Address], bool],
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._ssl = ssl_context
        self.limits = limits
        self._is_registered = is_registered
        self._gone: Callable[[Address], None] = lambda _addr: None
        self._server: asyncio.Server | None = None
        self._per_ip: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.address: Address = ("0.0.0.0", 0)
        #: Its key among the relay's sockets (never an address anything is sent from).
        self.hub = StreamHub((f"100::{next(_HUB_IDS):x}", 0))
        self.hub.on_close = self._close_now

    @classmethod
    async def start(
        cls,
        relay: Attachable,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext,
        limits: StreamLimits | None = None,
    ) -> StreamListener:
        """Listen on ``host:port`` (TCP) and serve the relay there."""
        self = cls(ssl_context, limits or StreamLimits(), relay.is_registered)
        self._gone = relay.address_gone
        self._server = await asyncio.start_server(
            self._on_connection, host, port, limit=READ_LIMIT, backlog=256
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))
        relay.attach_socket(self.hub.local_address, self.hub)
        return self

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self.hub.stats)
        out["stream_connections"] = len(self._writers)
        out["stream_links"] = len(self.hub)
        return out

    # -- one connection ------------------------------------------------------------------------
    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = self._loop.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats = self.hub.stats
        peer = writer.get_extra_info("peername")
        ip, port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        prefix = address_prefix(ip)
        stats["stream_accepted"] += 1
        if self.hub.closed or len(self._writers) >= self.limits.max_connections:
            stats["stream_refused_full"] += 1
            writer.transport.abort()
            return
        if self._per_ip[prefix] >= self.limits.max_connections_per_ip:
            stats["stream_refused_per_ip"] += 1
            writer.transport.abort()
            return
        self._per_ip[prefix] += 1
        self._writers.add(writer)
        try:
            carrier = await self._handshake(reader, writer)
            if carrier is not None:
                await self._link(carrier, reader, port)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug: log it, close this connection, keep serving the others
            log.exception("stream connection from %s failed", ip)
        finally:
            self._writers.discard(writer)
            self._per_ip[prefix] -= 1
            if self._per_ip[prefix] <= 0:
                del self._per_ip[prefix]
            writer.transport.close()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Carrier | None:
        stats = self.hub.stats
        try:
            # our bound, not asyncio's (60 s): a cancelled start_tls closes the transport
            async with asyncio.timeout(self.limits.handshake_timeout):
                await writer.start_tls(self._ssl)
        except TimeoutError:
            stats["stream_tls_timeout"] += 1
            return None
        except (OSError, EOFError):  # ssl.SSLError is an OSError
            stats["stream_tls_failed"] += 1
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        initial = b""
        if alpn is None:
            try:
                async with asyncio.timeout(self.limits.header_timeout):
                    initial = await reader.read(_PEEK)
            except (TimeoutError, OSError):
                stats["stream_header_timeout"] += 1
                return None
        if alpn == HTTP_ALPN or initial.startswith(b"GET"):
            return await self._upgrade(reader, writer, initial)
        stats["stream_tls"] += 1
        return RawCarrier(writer, initial)

    async def _upgrade(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes
    ) -> WsCarrier | None:
        """The WebSocket upgrade (RFC 6455 section 4.2), by ``websockets``' sans-IO server."""
        stats = self.hub.stats
        proto = ServerProtocol(subprotocols=[WS_SUBPROTOCOL], max_size=ws_max_size())
        request: Request | None = None
        received = 0
        data = initial
        try:
            async with asyncio.timeout(self.limits.header_timeout):
                while request is None:
                    if not data:
                        data = await reader.read(4096)
                        if not data:
                            return None
                    received += len(data)
                    if received > self.limits.max_header_bytes:
                        stats["stream_header_too_large"] += 1
                        return None
                    proto.receive_data(data)
                    data = b""
                    for event in proto.events_received():
                        if isinstance(event, Request):
                            request = event
                    if request is None and proto.handshake_exc is not None:
                        self._write_all(writer, proto)
                        stats["stream_ws_rejected"] += 1
                        return None
        except TimeoutError:
            stats["stream_header_timeout"] += 1
            return None
        except OSError:
            return None
        if request.path.split("?", 1)[0] != self.limits.ws_path:
            response = proto.reject(404, "no relay here\n")
        else:
            response = proto.accept(request)
            if response.status_code == 101 and proto.subprotocol != WS_SUBPROTOCOL:
                response = proto.reject(400, f"subprotocol {WS_SUBPROTOCOL} required\n")
        proto.send_response(response)
        self._write_all(writer, proto)
        if response.status_code != 101:
            stats["stream_ws_rejected"] += 1
            return None
        stats["stream_websocket"] += 1
        return WsCarrier(writer, proto)

    @staticmethod
    def _write_all(writer: asyncio.StreamWriter, proto: ServerProtocol) -> None:
        for chunk in proto.data_to_send():
            if chunk:
                writer.write(chunk)

    async def _link(self, carrier: Carrier, reader: asyncio.StreamReader, port: int) -> None:
        stats = self.hub.stats
        hub = self.hub
        addr = hub.attach(carrier, port)

        def deadline() -> None:
            if not self._is_registered(addr):
                stats["stream_unregistered_closed"] += 1
                carrier.close()

        timer = self._loop.call_later(self.limits.register_timeout, deadline)
        try:
            if isinstance(carrier, RawCarrier):
                for datagram in carrier.feed_initial():
                    hub.deliver(datagram, addr)
            truncated = await carrier.pump(
                reader, lambda d: hub.deliver(d, addr), self.limits.idle_timeout
            )
            if truncated:
                stats["stream_truncated"] += 1
        except TimeoutError:
            stats["stream_idle_closed"] += 1
        except CarrierError:
            stats["stream_bad_frame"] += 1
        except OSError:
            pass  # reset by the peer, or closed under us (deadline, shutdown)
        finally:
            timer.cancel()
            hub.detach(addr)
            carrier.close()
            if not hub.closed:
                self._gone(addr)  # its registration ends with it

    # -- shutdown --------------------------------------------------------------------------------
    def _close_now(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.close()
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        self.hub.close()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
