"""A lab's private hosts: what each one is (profile, router options) and how to run things in it.

A host reaches its lab only through :class:`~punchthrough.lab.servers.LabServers` (spawning and
STUN probes), so this module sits below :mod:`punchthrough.lab.topology`, which creates hosts.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from punchthrough.lab import addresses as A
from punchthrough.lab.addresses import Address
from punchthrough.lab.ipv6 import host6
from punchthrough.lab.natdiscovery import (
    DEFAULT_TIMEOUT as NATDISCOVERY_TIMEOUT,
)
from punchthrough.lab.natdiscovery import NatDiscoveryResult, run_natdiscovery
from punchthrough.lab.proc import run
from punchthrough.lab.profiles import NatProfile, get_profile
from punchthrough.lab.rules import RouterOptions
from punchthrough.lab.servers import PROBE_MODULE, LabServers, probe_json


@dataclass(frozen=True)
class HostSpec:
    """One private host: the NAT profile of its router and the router's options."""

    profile: str
    options: RouterOptions = field(default_factory=RouterOptions)
    #: Dual stack: the host also gets a global IPv6 address (2001:db8:n::2) behind its
    #: router's stateful IPv6 firewall (:mod:`punchthrough.lab.ipv6`).
    ipv6: bool = False

    def __post_init__(self) -> None:
        prof = get_profile(self.profile)
        self.options.validate()
        if self.options.miniupnpd and not prof.nat:
            raise ValueError("miniupnpd needs a NAT profile (not 'open')")


@dataclass
class Host:
    """A private host behind its own router; run commands in it with `run` / `popen`."""

    #: Its Lab, typed by the base a host uses (so this module need not import topology.py).
    lab: LabServers = field(repr=False)
    index: int  # 0-based position in the lab
    spec: HostSpec

    @property
    def n(self) -> int:
        return self.index + 1

    @property
    def profile(self) -> NatProfile:
        return get_profile(self.spec.profile)

    @property
    def name(self) -> str:
        return f"h{self.n}"

    @property
    def ns(self) -> str:
        return f"{self.lab.prefix}-h{self.n}"

    @property
    def router_ns(self) -> str:
        return f"{self.lab.prefix}-r{self.n}"

    @property
    def ip(self) -> str:
        """The host's own address (private 10.0.n.2, or public 192.0.2.x for `open`)."""
        return A.open_host_ip(self.n) if not self.profile.nat else A.host_private_ip(self.n)

    @property
    def ip6(self) -> str | None:
        """The host's global IPv6 address, or ``None`` (IPv4 only)."""
        return host6(self.n) if self.spec.ipv6 else None

    @property
    def gateway(self) -> str:
        return A.open_router_ip(self.n) if not self.profile.nat else A.router_lan_ip(self.n)

    @property
    def subnet(self) -> str:
        return A.open_subnet(self.n) if not self.profile.nat else A.lan_subnet(self.n)

    @property
    def router_wan_ip(self) -> str:
        return A.router_wan_ip(self.n)

    @property
    def delay_ms(self) -> float:
        """One-way delay this host's router adds to each forwarded packet (each direction)."""
        return self.spec.options.delay_ms

    @property
    def public_ip(self) -> str:
        """The address servers see this host's traffic come from."""
        return self.router_wan_ip if self.profile.nat else self.ip

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host namespace; text output captured."""
        return run(
            argv,
            ns=self.ns,
            check=check,
            timeout=timeout,
            input=input,
            what=f"{self.name} ({self.spec.profile})" if check else None,
        )

    def popen(
        self, argv: Sequence[str], *, name: str | None = None, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        """Start a process in the host namespace. The caller owns it; the lab still kills it
        on close if it is running then. Output goes to `<workdir>/<name>.log` unless `stdout`
        is given."""
        proc = self.lab.spawn(self.ns, argv, name=name or f"{self.name}-proc", **kwargs)
        assert proc.popen is not None
        return proc.popen

    def router_run(
        self, argv: Sequence[str], *, timeout: float = 30.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command in this host's router namespace (nft, conntrack, ss)."""
        return run(
            argv, ns=self.router_ns, check=check, timeout=timeout, what=f"router of {self.name}"
        )

    def stun(
        self,
        server: Address,
        *,
        count: int = 1,
        interval: float = 0.01,
        timeout: float = 1.0,
        bind: Address | None = None,
    ) -> dict[str, Any]:
        """Send Binding requests from this host with the stdlib probe; see probe.stun."""
        return self.lab.stun_probe(
            self.ns, server, count=count, interval=interval, timeout=timeout, bind=bind
        )

    def natpmp(self, timeout: float = 3.0) -> dict[str, Any]:
        """NAT-PMP external-address request to this host's router (miniupnpd)."""
        argv = [
            sys.executable,
            "-m",
            PROBE_MODULE,
            "natpmp",
            self.gateway,
            "--timeout",
            str(timeout),
        ]
        return probe_json(self.run(argv, timeout=timeout + 10, check=True))

    def natdiscovery(
        self,
        server: str = A.COTURN_PRIMARY,
        port: int = A.STUN_PORT,
        timeout: float = NATDISCOVERY_TIMEOUT,
    ) -> NatDiscoveryResult:
        """Classify this host's NAT with coturn's turnutils_natdiscovery."""
        return run_natdiscovery(self.ns, server, port, timeout, local_ip=self.ip)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "profile": self.spec.profile,
            "ns": self.ns,
            "router_ns": self.router_ns,
            "ip": self.ip,
            **({"ip6": self.ip6} if self.ip6 else {}),
            "gateway": self.gateway,
            "subnet": self.subnet,
            "router_wan_ip": self.router_wan_ip,
            "public_ip": self.public_ip,
            "options": asdict(self.spec.options),
            "expected": {
                "mapping": self.profile.mapping,
                "filtering": self.profile.filtering,
                "allocation": self.profile.allocation,
                "preserves_port": self.profile.preserves_port,
            },
        }
