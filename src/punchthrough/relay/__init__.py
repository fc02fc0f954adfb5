"""The relay: STUN, rendezvous by peer id, and opaque forwarding of end-to-end encrypted packets.

* :mod:`.frames` - the data-plane wire format (DATA, NOTICE), sans-IO;
* :mod:`.limits` - token buckets and :class:`RelayLimits`, pure (take ``now``);
* :mod:`.registry` - peer id -> registration, and the :class:`PeerDirectory` seam for several
  relays sharing one namespace;
* :mod:`.server` - :class:`RelayServer` (one UDP service per address: STUN + QUIC control +
  forwarding), built from :mod:`.listen` (its sockets), :mod:`.control` (control connections
  and registration) and :mod:`.forward` (the data plane);
* :mod:`.client` - :class:`RelayClient`, run over an endpoint's shared socket multiplexer, with
  :mod:`.control_client` (its side of the control stream) and :mod:`.nat_keepalive` (STUN
  keepalives of its NAT binding).
"""

from punchthrough.relay.client import RelayClient
from punchthrough.relay.close import RelayCloseCode
from punchthrough.relay.errors import (
    RelayClosed,
    RelayError,
    RelayFrameError,
    RelayLookupRefused,
    RelayRegistrationError,
    RelayTimeout,
)
from punchthrough.relay.forward import PayloadFilter
from punchthrough.relay.frames import (
    FRAME_DATA,
    FRAME_NOTICE,
    FRAME_SEND,
    MAX_RELAY_PAYLOAD,
    NOTICE_RATE_LIMITED,
    NOTICE_UNKNOWN_DESTINATION,
    RELAY_ALPN,
    DataFrame,
    NoticeFrame,
    decode_frame,
    encode_data,
    encode_notice,
    encode_send,
)
from punchthrough.relay.limits import RelayLimits, TokenBucket
from punchthrough.relay.registry import LocalRegistry, PeerDirectory, Registration, Registry
from punchthrough.relay.server import PeerInfo, RelayServer

__all__ = [
    "FRAME_DATA",
    "FRAME_NOTICE",
    "FRAME_SEND",
    "MAX_RELAY_PAYLOAD",
    "NOTICE_RATE_LIMITED",
    "NOTICE_UNKNOWN_DESTINATION",
    "RELAY_ALPN",
    "DataFrame",
    "LocalRegistry",
    "NoticeFrame",
    "PayloadFilter",
    "PeerDirectory",
    "PeerInfo",
    "Registration",
    "Registry",
    "RelayClient",
    "RelayCloseCode",
    "RelayClosed",
    "RelayError",
    "RelayFrameError",
    "RelayLimits",
    "RelayLookupRefused",
    "RelayRegistrationError",
    "RelayServer",
    "RelayTimeout",
    "TokenBucket",
    "decode_frame",
    "encode_data",
    "encode_notice",
    "encode_send",
]
