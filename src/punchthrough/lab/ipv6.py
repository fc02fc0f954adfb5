"""IPv6 in the kernel lab: dual-stack routers with an nftables ``inet`` stateful firewall.

Only the documentation prefix ``2001:db8::/32`` (RFC 3849) is used, inside the lab's own
namespaces. Layout (n = a host's 1-based number, written in hex inside the addresses):

    <prefix>-pub   br0 2001:db8:ffff::fe/64; servers on lo: 2001:db8:100::1 and ::2 (our STUN
                   server, RFC 5780 over IPv6), 2001:db8:100::20 (the relay);
                   2001:db8:n::/64 routed via router n
    <prefix>-rN    wan 2001:db8:ffff::n/64, lan 2001:db8:n::1/64, IPv6 forwarding; no NAT66,
                   the home router's IPv6 policy is the RFC 6092 stateful firewall below
                   (none for the ``open`` profile)
    <prefix>-hN    eth0 2001:db8:n::2/64, default via 2001:db8:n::1

Addresses are added with ``nodad``: duplicate address detection would hold every address
"tentative" (unusable) for about a second on a link where no duplicate can exist.
"""

from __future__ import annotations

from typing import Final

from punchthrough.lab.addresses import BRIDGE_IF, HOST_IF, LAN_IF, WAN_IF

PUB6_BRIDGE: Final = "2001:db8:ffff::fe"
PUB6_PREFIX_LEN: Final = 64
LAN6_PREFIX_LEN: Final = 64
#: Our STUN server over IPv6: RFC 5780 on {::1, ::2} x {3478, 3479}.
STUN6_PRIMARY: Final = "2001:db8:100::1"
STUN6_ALT: Final = "2001:db8:100::2"
#: The relay's IPv6 listen address (its IPv4 one is 198.51.100.20).
RELAY6: Final = "2001:db8:100::20"
SERVER6_IPS: Final = (STUN6_PRIMARY, STUN6_ALT, RELAY6)
#: The nftables table holding a router's IPv6 firewall (``inet``: both families' hook, the
#: rules match IPv6 only, so the IPv4 NAT profile's own tables are untouched).
FIREWALL_TABLE: Final = "pt_fw6"


def router_wan6(n: int) -> str:
    return f"2001:db8:ffff::{n:x}"


def lan6_subnet(n: int) -> str:
    return f"2001:db8:{n:x}::/{LAN6_PREFIX_LEN}"


def router_lan6(n: int) -> str:
    return f"2001:db8:{n:x}::1"


def host6(n: int) -> str:
    return f"2001:db8:{n:x}::2"


def bracket(ip: str, port: int) -> str:
    """``[ip]:port`` (the CLI's IPv6 address form)."""
    return f"[{ip}]:{port}"


def pub_commands(hosts: list[int]) -> list[str]:
    """``ip -batch`` lines for the public namespace: the bridge's address, the servers' IPv6
    addresses, and a route to each IPv6 host's LAN prefix via its router."""
    out = [f"addr add {PUB6_BRIDGE}/{PUB6_PREFIX_LEN} dev {BRIDGE_IF} nodad"]
    out += [f"addr add {ip}/128 dev lo nodad" for ip in SERVER6_IPS]
    out += [f"route add {lan6_subnet(n)} via {router_wan6(n)}" for n in hosts]
    return out


def router_commands(n: int) -> list[str]:
    return [
        f"addr add {router_wan6(n)}/{PUB6_PREFIX_LEN} dev {WAN_IF} nodad",
        f"route add default via {PUB6_BRIDGE}",
        f"addr add {router_lan6(n)}/{LAN6_PREFIX_LEN} dev {LAN_IF} nodad",
    ]


def host_commands(n: int) -> list[str]:
    return [
        f"addr add {host6(n)}/{LAN6_PREFIX_LEN} dev {HOST_IF} nodad",
        f"route add default via {router_lan6(n)}",
    ]


def firewall_ruleset() -> str:
    """The home router's IPv6 policy (RFC 6092 REC-8/REC-11): forward from the WAN only what
    answers a flow the LAN opened (conntrack: address-and-port-dependent, as the simulator's
    ``stateful`` firewall); everything from the LAN goes out. No translation."""
    return "\n".join(
        [
            f"table inet {FIREWALL_TABLE} {{",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            f'    meta nfproto ipv6 iifname "{WAN_IF}" ct state established,related accept',
            f'    meta nfproto ipv6 iifname "{WAN_IF}" drop',
            "  }",
            "}",
            "",
        ]
    )


#: Routers and the public segment forward IPv6 (the routers' WAN side keeps no autoconf: every
#: address and route is static).
FORWARDING_SYSCTLS: Final = ("net.ipv6.conf.all.forwarding=1",)
