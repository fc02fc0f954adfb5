"""Ruleset generation: pure checks here, `nft --check` of every profile in the lab tests."""

from __future__ import annotations

import pytest

from punchthrough.lab import PROFILES, RouterOptions, nat_ruleset
from punchthrough.lab.rules import miniupnpd_conf, sequential_ports


def _rules(profile: str, **opts: object) -> str:
    return nat_ruleset(
        PROFILES[profile],
        public_ip="203.0.113.1",
        lan_subnet="10.0.1.0/24",
        opts=RouterOptions(**opts),
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_router_drops_unsolicited_input(profile: str) -> None:
    text = _rules(profile)
    assert 'iifname "wan" ct state new drop' in text
    assert text.count("{") == text.count("}")


def test_open_has_no_nat_and_udp_blocked_drops_udp() -> None:
    assert "masquerade" not in _rules("open") and "snat" not in _rules("open")
    assert "meta l4proto udp counter drop" in _rules("udp-blocked")
    assert "meta l4proto udp counter drop" not in _rules("eim-apdf")


def test_firewall_profiles_let_out_only_what_they_name() -> None:
    for profile in ("udp-blocked", "tcp443-only", "proxy-only"):
        text = _rules(profile)
        assert "table inet firewall" in text  # both families: IPv6 too
        assert "masquerade" in text
    assert 'iifname "lan" tcp dport 443 accept' in _rules("tcp443-only")
    proxy = _rules("proxy-only")
    assert 'iifname "lan" ip daddr 198.51.100.30 tcp dport 3128 accept' in proxy
    assert proxy.index("tcp dport 3128 accept") < proxy.index('iifname "lan" counter drop')
    assert "table inet firewall" not in _rules("eim-apdf")


def test_sequential_delta_and_wrap() -> None:
    opts = RouterOptions(seq_base=50000, seq_count=4, seq_delta=7)
    assert sequential_ports(opts) == [50000, 50007, 50014, 50021]
    text = _rules("apdm-sequential", seq_base=50000, seq_count=4, seq_delta=7)
    assert "numgen inc mod 4 map { 0 : 50000, 1 : 50007, 2 : 50014, 3 : 50021 }" in text
    with pytest.raises(ValueError):
        RouterOptions(seq_base=65000, seq_count=100, seq_delta=10).validate()
    with pytest.raises(ValueError):
        RouterOptions(seq_delta=0).validate()


def test_random_port_range_narrows_udp_only() -> None:
    text = _rules("apdm-random", random_port_range=(50000, 54095))
    assert "meta l4proto udp masquerade to :50000-54095 fully-random" in text
    # other protocols keep the kernel's range, and the default has no range at all
    assert text.count("masquerade fully-random") == 1
    assert "masquerade to :" not in _rules("apdm-random")
    for bad in ((0, 10), (60000, 50000), (50000, 70000)):
        with pytest.raises(ValueError):
            RouterOptions(random_port_range=bad).validate()


def test_timeouts_follow_udp_timeout_and_loss_threshold() -> None:
    assert _rules("eim-eif").count("timeout 120s") == 1
    assert _rules("eim-adf", udp_timeout=7).count("timeout 7s") == 2
    assert "numgen random mod 1000 < 125 counter drop" in _rules("eim-apdf", loss_percent=12.5)
    assert "numgen random" not in _rules("eim-apdf")
    with pytest.raises(ValueError):
        RouterOptions(loss_percent=101).validate()


def test_miniupnpd_chains_and_conf() -> None:
    text = nat_ruleset(
        PROFILES["eim-apdf"],
        public_ip="203.0.113.1",
        lan_subnet="10.0.1.0/24",
        opts=RouterOptions(miniupnpd=True),
        stun_allow=[("198.51.100.11", 3479), ("198.51.100.10", 3478)],
    )
    for chain in ("miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"):
        assert f"chain {chain} {{" in text
    # the STUN self-test replies are accepted BEFORE the new-connection drop
    allow = text.index("ip saddr 198.51.100.11 udp sport 3479 accept")
    assert allow < text.index("ct state new drop")
    conf = miniupnpd_conf(
        lan_subnet="10.0.1.0/24", lease_file="/tmp/x", uuid="u", stun=("198.51.100.10", 3478)
    )
    assert "allow 1024-65535 10.0.1.0/24 1024-65535" in conf
    assert "ext_stun_host=198.51.100.10" in conf and "lease_file=/tmp/x" in conf
