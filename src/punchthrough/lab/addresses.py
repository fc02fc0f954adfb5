"""Fixed addresses of the kernel NAT lab, all in one place.

Only documentation ranges (RFC 5737: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) and 10.x
inside namespaces the lab creates are ever used, per the team's network-safety rule.
"""

from __future__ import annotations

from typing import Final

Address = tuple[str, int]

# Public segment: a bridge in the pub namespace; router i (1-based) has wan 203.0.113.i.
PUB_BRIDGE_IP: Final = "203.0.113.254"
PUB_PREFIX_LEN: Final = 24
MAX_HOSTS: Final = 30  # open hosts take a /29 of 192.0.2.0/24 each: 32 slices, keep a margin

STUN_PORT: Final = 3478  # RFC 8489 section 18.6 default port
STUN_ALT_PORT: Final = 3479  # RFC 5780 alternate port convention (primary + 1)

# Our STUN server (RFC 5780 mode): {primary, alt} x {3478, 3479}.
OUR_STUN_PRIMARY: Final = "198.51.100.1"
OUR_STUN_ALT: Final = "198.51.100.2"
#: Three of our STUN server's RFC 5780 endpoints: with the relay, four mapping samples per
#: endpoint (``--stun`` for listen/connect), enough to tell sequential from random allocation.
PEER_STUN_SERVERS: Final = (
    f"{OUR_STUN_PRIMARY}:{STUN_PORT}",
    f"{OUR_STUN_ALT}:{STUN_PORT}",
    f"{OUR_STUN_PRIMARY}:{STUN_ALT_PORT}",
)
# Extra plain STUN endpoints so netcheck sees >= 5 distinct endpoints (second process).
OUR_STUN_EXTRA: Final = ("198.51.100.3", "198.51.100.4")

# coturn as an independent RFC 5780 server, and a second plain coturn instance so that
# netcheck against coturn alone has 8 endpoints.
COTURN_PRIMARY: Final = "198.51.100.10"
COTURN_ALT: Final = "198.51.100.11"
COTURN2_PRIMARY: Final = "198.51.100.12"
COTURN2_ALT: Final = "198.51.100.13"

# Our relay (punchthrough relay): primary and RFC 5780 alternate address, relay port 3478.
RELAY_PRIMARY: Final = "198.51.100.20"
RELAY_ALT: Final = "198.51.100.21"

# An HTTP proxy (tinyproxy, CONNECT) for the relay's TLS/WebSocket transports: the only
# destination the `proxy-only` profile lets out. 3128: squid's customary port.
HTTP_PROXY_IP: Final = "198.51.100.30"
HTTP_PROXY_PORT: Final = 3128
#: Where `tcp443-only` lets TCP out (HTTPS, RFC 9110 section 4.2.2).
HTTPS_PORT: Final = 443

SERVER_IPS: Final = (
    OUR_STUN_PRIMARY,
    OUR_STUN_ALT,
    *OUR_STUN_EXTRA,
    COTURN_PRIMARY,
    COTURN_ALT,
    COTURN2_PRIMARY,
    COTURN2_ALT,
    RELAY_PRIMARY,
    RELAY_ALT,
    HTTP_PROXY_IP,
)

NATPMP_PORT: Final = 5351  # RFC 6886 section 3 (also PCP, RFC 6887 section 19.1)

# Interface names inside namespaces (fixed: veths are created directly inside their namespace,
# so names never clash between labs and stay far below the 15-char IFNAMSIZ limit).
WAN_IF: Final = "wan"
LAN_IF: Final = "lan"
HOST_IF: Final = "eth0"
BRIDGE_IF: Final = "br0"


def router_wan_ip(n: int) -> str:
    """WAN address of router n (1-based)."""
    return f"203.0.113.{n}"


def lan_subnet(n: int) -> str:
    return f"10.0.{n}.0/24"


def router_lan_ip(n: int) -> str:
    return f"10.0.{n}.1"


def host_private_ip(n: int) -> str:
    return f"10.0.{n}.2"


def open_subnet(n: int) -> str:
    """The /29 of 192.0.2.0/24 given to an `open` (no-NAT) host n, routed via its router."""
    return f"192.0.2.{8 * (n - 1)}/29"


def open_router_ip(n: int) -> str:
    return f"192.0.2.{8 * (n - 1) + 1}"


def open_host_ip(n: int) -> str:
    return f"192.0.2.{8 * (n - 1) + 2}"
