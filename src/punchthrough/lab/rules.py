"""nftables rulesets and miniupnpd configuration for lab routers (pure text generation).

Derived from the verified recipes in shared/natlab (nft 1.0.6 syntax). Differences from the
recipes, all for routers that also originate traffic (miniupnpd's STUN self-test):
NAT statements match `ip saddr <lan subnet>` (resp. `ct original ip saddr`) so the router's own
packets are never remapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from punchthrough.lab.addresses import (
    HTTP_PROXY_IP,
    HTTP_PROXY_PORT,
    HTTPS_PORT,
    LAN_IF,
    WAN_IF,
    Address,
)
from punchthrough.lab.delay import MAX_DELAY_MS
from punchthrough.lab.profiles import NatProfile

DEFAULT_BINDING_TIMEOUT = 120  # s; Linux nf_conntrack_udp_timeout_stream default, recipe value
DEFAULT_SEQ_BASE = 40000
DEFAULT_SEQ_COUNT = 1000
DEFAULT_ADM_BASE = 20000
DEFAULT_ADM_COUNT = 4096
LOSS_SCALE = 1000  # numgen modulus: loss resolution is 0.1 %
MIN_PORT = 1024
MAX_PORT = 65535


@dataclass(frozen=True)
class RouterOptions:
    """Per-router knobs (see `nat_ruleset`)."""

    udp_timeout: int | None = None  # conntrack + nft map timeout, seconds; None = kernel default
    loss_percent: float = 0.0  # random loss in the forward path, each direction
    #: one-way delay added to every forwarded packet, each direction (NFQUEUE + userspace
    #: delayer, see lab/delay.py): a flow crossing this router gets 2 * delay_ms more RTT
    delay_ms: float = 0.0
    miniupnpd: bool = False
    seq_base: int = DEFAULT_SEQ_BASE
    seq_count: int = DEFAULT_SEQ_COUNT
    seq_delta: int = 1
    adm_base: int = DEFAULT_ADM_BASE
    adm_count: int = DEFAULT_ADM_COUNT
    #: apdm-random: inclusive UDP port range the router picks its random ports from (``None``:
    #: the kernel's, 1024-65535). A narrow range makes the birthday attack quick to test.
    random_port_range: tuple[int, int] | None = None

    def validate(self) -> None:
        """Raise ValueError for options the kernel would reject or silently misapply."""
        if self.udp_timeout is not None and self.udp_timeout < 1:
            raise ValueError("udp_timeout must be >= 1 second")
        if not 0.0 <= self.loss_percent <= 100.0:
            raise ValueError("loss_percent must be within 0..100")
        if not 0.0 <= self.delay_ms <= MAX_DELAY_MS:
            raise ValueError(f"delay_ms must be within 0..{MAX_DELAY_MS:g}")
        if self.seq_count < 1 or self.seq_delta == 0:
            raise ValueError("seq_count must be >= 1 and seq_delta != 0")
        seq_ports = [self.seq_base + i * self.seq_delta for i in range(self.seq_count)]
        if min(seq_ports) < MIN_PORT or max(seq_ports) > MAX_PORT:
            raise ValueError(f"sequential ports {min(seq_ports)}..{max(seq_ports)} out of range")
        if self.adm_count < 1 or not (
            self.adm_base >= MIN_PORT and self.adm_base + self.adm_count - 1 <= MAX_PORT
        ):
            raise ValueError("adm port range out of range")
        if self.random_port_range is not None:
            lo, hi = self.random_port_range
            if not MIN_PORT <= lo <= hi <= MAX_PORT:
                raise ValueError(
                    f"random_port_range {lo}-{hi} must be within {MIN_PORT}..{MAX_PORT}"
                )


_OUT = f'iifname "{LAN_IF}"'
#: The firewalls of the profiles that block UDP (forward chain rules, both address families;
#: replies to what a rule let out come back in on the WAN side and pass).
BLOCKING: Final[dict[str, list[str]]] = {
    "udp-blocked": ["meta l4proto udp counter drop"],
    "tcp443-only": [f"{_OUT} tcp dport {HTTPS_PORT} accept", f"{_OUT} counter drop"],
    "proxy-only": [
        f"{_OUT} ip daddr {HTTP_PROXY_IP} tcp dport {HTTP_PROXY_PORT} accept",
        f"{_OUT} counter drop",
    ],
}


def _map(pairs: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{k} : {v}" for k, v in pairs)


def sequential_ports(opts: RouterOptions) -> list[int]:
    """External ports an apdm-sequential router hands out, in order (then it wraps)."""
    return [opts.seq_base + i * opts.seq_delta for i in range(opts.seq_count)]


def nat_ruleset(
    profile: NatProfile,
    *,
    public_ip: str,
    lan_subnet: str,
    opts: RouterOptions = RouterOptions(),  # frozen dataclass: a safe default
    stun_allow: Sequence[Address] = (),
) -> str:
    """The complete ruleset (`nft -f` input) for one router.

    `stun_allow`: STUN server endpoints whose replies to the router itself are accepted before
    the `ct state new drop` rule (miniupnpd's self-test receives CHANGE-REQUEST answers from the
    server's other address, which conntrack sees as new).
    """
    opts.validate()
    timeout = opts.udp_timeout or DEFAULT_BINDING_TIMEOUT
    lan = f'ip saddr {lan_subnet} oifname "{WAN_IF}"'
    record = f'oifname "{WAN_IF}" meta l4proto udp ct original ip saddr {lan_subnet}'
    wan = f'iifname "{WAN_IF}"'
    out: list[str] = ["flush ruleset"]
    nat: list[str] = []
    name = profile.name
    if name in ("eim-apdf", *BLOCKING):
        nat += _chain(
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            [f"{lan} masquerade"],
        )
    elif name == "apdm-random":
        rules = [f"{lan} masquerade fully-random"]
        if opts.random_port_range is not None:
            # a port range needs the l4proto match (natlab README); other protocols as before
            lo, hi = opts.random_port_range
            rules.insert(0, f"{lan} meta l4proto udp masquerade to :{lo}-{hi} fully-random")
        nat += _chain(
            "postrouting", "type nat hook postrouting priority srcnat; policy accept;", rules
        )
    elif name in ("eim-eif", "eim-adf"):
        # mapped (public) udp port -> internal ip . port, refreshed by outbound traffic
        nat.append(
            f"  map fullcone {{ type inet_service : ipv4_addr . inet_service; "
            f"flags dynamic,timeout; timeout {timeout}s; }}"
        )
        rec = [
            f"{record} update @fullcone "
            "{ udp sport : ct original ip saddr . ct original proto-src }"
        ]
        if name == "eim-adf":
            # mapped port . remote IP: inbound only from addresses this mapping has sent to
            nat.append(
                f"  set allowed {{ type inet_service . ipv4_addr; "
                f"flags dynamic,timeout; timeout {timeout}s; }}"
            )
            pre = (
                f"{wan} meta l4proto udp udp dport . ip saddr @allowed "
                "dnat ip to udp dport map @fullcone"
            )
            rec.append(f"{record} update @allowed {{ udp sport . ip daddr }}")
        else:
            pre = f"{wan} meta l4proto udp dnat ip to udp dport map @fullcone"
        nat += _chain(
            "prerouting", "type nat hook prerouting priority dstnat; policy accept;", [pre]
        )
        nat += _chain(
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            [f"{lan} masquerade"],
        )
        # runs after SNAT (priority > srcnat): udp sport is the mapped port
        nat += _chain(
            "record", "type filter hook postrouting priority srcnat + 10; policy accept;", rec
        )
    elif name == "adm":
        entries = _map([(i, opts.adm_base + i) for i in range(opts.adm_count)])
        nat += _chain(
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            [
                f"{lan} meta l4proto udp snat to {public_ip} : "
                "jhash ip saddr . udp sport . ip daddr "
                f"mod {opts.adm_count} seed 0x5eed map {{ {entries} }}",
                f"{lan} masquerade",
            ],
        )
    elif name == "apdm-sequential":
        # numgen values mapped to ports: `numgen inc ... offset B` yields byte-swapped ports
        entries = _map(list(enumerate(sequential_ports(opts))))
        nat += _chain(
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            [
                f"{lan} meta l4proto udp snat to {public_ip} : numgen inc mod {opts.seq_count} "
                f"map {{ {entries} }}",
                f"{lan} masquerade",
            ],
        )
    elif name != "open":
        raise ValueError(f"no ruleset for profile {name!r}")
    if nat:
        out += ["table ip nat {", *nat, "}"]

    flt: list[str] = []
    inp = [f"{wan} ip saddr {ip} udp sport {port} accept" for ip, port in sorted(set(stun_allow))]
    # Unsolicited packets to the router: drop before conntrack confirms them, or a peer's early
    # punch clashes with our own outbound flow and gets it a new port (natlab README).
    inp.append(f"{wan} ct state new drop")
    flt += _chain("input", "type filter hook input priority filter; policy accept;", inp)
    if opts.loss_percent > 0:
        threshold = round(opts.loss_percent * LOSS_SCALE / 100)
        flt += _chain(
            "impair",
            "type filter hook forward priority -50; policy accept;",
            [f"numgen random mod {LOSS_SCALE} < {threshold} counter drop"],
        )
    out += ["table ip filter {", *flt, "}"]
    if name in BLOCKING:  # inet: IPv6 too, for a host built with ipv6=True
        fw = _chain(
            "forward", "type filter hook forward priority filter; policy accept;", BLOCKING[name]
        )
        out += ["table inet firewall {", *fw, "}"]

    if opts.miniupnpd:
        out += ["table inet filter {", *miniupnpd_chains(), "}"]
    return "\n".join(out) + "\n"


def miniupnpd_chains() -> list[str]:
    """Chains miniupnpd 2.3 (nftables backend) expects; Debian's nft_init.sh is broken.

    Hooked a little before the profile's own chains so a port mapping wins over the profile NAT.
    The forward policy stays accept: the profile's filtering comes from conntrack + the input
    drop rule, not from the forward chain.
    """
    return [
        *_chain(
            "forward",
            "type filter hook forward priority filter - 5; policy accept;",
            ["jump miniupnpd"],
        ),
        "  chain miniupnpd {",
        "  }",
        *_chain(
            "prerouting",
            "type nat hook prerouting priority dstnat - 5; policy accept;",
            ["jump prerouting_miniupnpd"],
        ),
        *_chain(
            "postrouting",
            "type nat hook postrouting priority srcnat - 5; policy accept;",
            ["jump postrouting_miniupnpd"],
        ),
        "  chain prerouting_miniupnpd {",
        "  }",
        "  chain postrouting_miniupnpd {",
        "  }",
    ]


def _chain(name: str, head: str, rules: Sequence[str]) -> list[str]:
    return [f"  chain {name} {{", f"    {head}", *(f"    {r}" for r in rules), "  }"]


def miniupnpd_conf(
    *,
    lan_subnet: str,
    lease_file: str,
    uuid: str,
    stun: Address,
) -> str:
    """miniupnpd.conf for a router: NAT-PMP + PCP + UPnP IGD on `lan`, mappings only for the LAN.

    miniupnpd refuses to map when its external address is in a reserved range (every
    documentation range is), unless a STUN self-test says the address is public: ext_perform_stun.
    """
    return "\n".join(
        [
            f"ext_ifname={WAN_IF}",
            f"listening_ip={LAN_IF}",
            "http_port=0",
            "enable_natpmp=yes",
            "enable_upnp=yes",
            "secure_mode=yes",
            "system_uptime=yes",
            f"lease_file={lease_file}",
            f"uuid={uuid}",
            f"allow 1024-65535 {lan_subnet} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "ext_perform_stun=yes",
            f"ext_stun_host={stun[0]}",
            f"ext_stun_port={stun[1]}",
            "",
        ]
    )
