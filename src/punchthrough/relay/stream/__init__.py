"""The relay over TCP: the same relay protocol on TLS and on WebSocket (``wss://``).

Why a *datagram-over-stream link* and not a second protocol: the relay protocol is datagrams
(STUN keepalives, the QUIC control connection, SEND/DATA/NOTICE frames), demultiplexed by their
first byte. Carrying exactly those datagrams on a stream (2-byte length prefix on TLS, one
binary message each on WebSocket) changes nothing above: the relay's registration, limits and
forwarding see one more socket (:mod:`.hub`), and the client's :class:`~punchthrough.relay.
RelayClient` runs over a link that looks like a UDP socket (:mod:`.link`). UDP and TCP clients
reach each other through the same forwarding code. The cost: the QUIC control connection runs
inside TLS (encrypted twice, a few bytes and one AEAD pass per datagram), and end-to-end QUIC
packets of a call on a TCP relay path suffer TCP's head-of-line blocking, which is why clients
move back to UDP as soon as it answers (``endpoint.relaylink``).

* :mod:`.framing` - length-prefixed datagrams (sans-IO);
* :mod:`.carrier` - one established stream, raw or WebSocket (``websockets`` sans-IO), bounded;
* :mod:`.tls` - the relay's TLS contexts (identity-bound or CA-issued) and pinning;
* :mod:`.hub`, :mod:`.listener` - the relay's TCP port (TLS and WebSocket on one port, by ALPN);
* :mod:`.link`, :mod:`.proxy` - the client's link, direct or through an HTTP CONNECT proxy.
"""

from punchthrough.relay.stream.carrier import WS_DEFAULT_PATH, WS_SUBPROTOCOL
from punchthrough.relay.stream.framing import MAX_STREAM_DATAGRAM, FrameDecoder, encode_datagram
from punchthrough.relay.stream.hub import StreamHub, StreamLimits
from punchthrough.relay.stream.link import (
    LinkError,
    StreamLink,
    StreamTarget,
    open_link,
    parse_stream_url,
)
from punchthrough.relay.stream.listener import StreamListener
from punchthrough.relay.stream.proxy import Proxy, ProxyError, proxy_for
from punchthrough.relay.stream.tls import RelayTlsError, client_context, server_context

__all__ = [
    "MAX_STREAM_DATAGRAM",
    "WS_DEFAULT_PATH",
    "WS_SUBPROTOCOL",
    "FrameDecoder",
    "LinkError",
    "Proxy",
    "ProxyError",
    "RelayTlsError",
    "StreamHub",
    "StreamLimits",
    "StreamLink",
    "StreamListener",
    "StreamTarget",
    "client_context",
    "encode_datagram",
    "open_link",
    "parse_stream_url",
    "proxy_for",
    "server_context",
]
