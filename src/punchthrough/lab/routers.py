"""Each host's NAT router: its nftables ruleset and sysctls, the delayer, and miniupnpd.

The second base of :class:`~punchthrough.lab.topology.Lab`, which creates the router namespaces
and calls :meth:`LabRouters._configure_router` once each one has its addresses.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import uuid

from punchthrough.lab import addresses as A
from punchthrough.lab.addresses import Address
from punchthrough.lab.delay import iptables_argv, queue_bound
from punchthrough.lab.host import Host
from punchthrough.lab.proc import LabError, LabProcess, log_tail, run, udp_listening, wait_until
from punchthrough.lab.rules import miniupnpd_conf, nat_ruleset
from punchthrough.lab.servers import SERVER_READY_TIMEOUT, LabServers

MINIUPNPD_READY_TIMEOUT = 10.0  # s; includes its STUN self-test
DELAY_MODULE = "punchthrough.lab.delay"
NFQUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"  # per network namespace


class LabRouters(LabServers):
    """Router set-up and the daemons that run on routers."""

    def _configure_router(self, h: Host) -> None:
        opts = h.spec.options
        stun_allow: list[Address] = []
        if opts.miniupnpd:
            stun_allow = [
                (ip, port)
                for ip in (A.COTURN_PRIMARY, A.COTURN_ALT)
                for port in (A.STUN_PORT, A.STUN_ALT_PORT)
            ]
        ruleset = nat_ruleset(
            h.profile,
            public_ip=h.router_wan_ip,
            lan_subnet=h.subnet,
            opts=opts,
            stun_allow=stun_allow,
        )
        run(
            ["nft", "-f", "-"],
            ns=h.router_ns,
            input=ruleset,
            what=f"load {h.spec.profile} ruleset for {h.name}",
        )
        sysctls = ["net.ipv4.ip_forward=1"]
        if opts.udp_timeout is not None:
            # per-namespace conntrack timeouts: only this router changes
            sysctls += [
                f"net.netfilter.nf_conntrack_udp_timeout={opts.udp_timeout}",
                f"net.netfilter.nf_conntrack_udp_timeout_stream={opts.udp_timeout}",
            ]
        run(["sysctl", "-qw", *sysctls], ns=h.router_ns, what=f"sysctl for router of {h.name}")
        if opts.delay_ms > 0:
            self.start_delay(h)

    def start_delay(self, h: Host) -> LabProcess:
        """The router's one-way delay (lab/delay.py): the delayer first, bound to its queue, and
        only then the iptables rule (without a listener the queue drops every packet)."""
        delay_ms = h.spec.options.delay_ms
        if shutil.which("iptables") is None:
            raise LabError("RouterOptions(delay_ms=...) needs iptables (Debian package iptables)")
        if importlib.util.find_spec("netfilterqueue") is None:
            raise LabError(
                "RouterOptions(delay_ms=...) needs the NetfilterQueue package "
                "(pip install NetfilterQueue; Debian libnetfilter-queue-dev + build-essential)"
            )
        argv = [sys.executable, "-m", DELAY_MODULE, "--delay-ms", f"{delay_ms:g}"]
        proc = self.spawn(h.router_ns, argv, name=f"delay-{h.n}")

        def bound() -> bool:
            if not proc.alive():
                raise LabError(
                    f"delayer for {h.name} exited\n{log_tail(proc.log) if proc.log else ''}"
                )
            text = run(["cat", NFQUEUE_PROC], ns=h.router_ns, check=False).stdout
            return queue_bound(text)

        try:
            wait_until(
                bound,
                timeout=SERVER_READY_TIMEOUT,
                what=f"the delayer of {h.name} to bind its queue",
                diagnose=lambda: log_tail(proc.log) if proc.log else "",
            )
            run(iptables_argv("-A"), ns=h.router_ns, what=f"delay rule for router of {h.name}")
        except BaseException:
            self.stop(proc)
            raise
        return proc

    def start_miniupnpd(self, h: Host) -> LabProcess:
        """miniupnpd (NAT-PMP, PCP, UPnP IGD) on h's router, STUN self-test against coturn."""
        assert self.workdir is not None
        if not self.coturn_running:
            raise LabError("start coturn before miniupnpd (its STUN self-test server)")
        lease = self.workdir / f"upnp-{h.n}.leases"
        lease.unlink(missing_ok=True)  # leases survive restarts otherwise
        conf = self.workdir / f"miniupnpd-{h.n}.conf"
        conf.write_text(
            miniupnpd_conf(
                lan_subnet=h.subnet,
                lease_file=str(lease),
                uuid=str(uuid.uuid4()),
                stun=(A.COTURN_PRIMARY, A.STUN_PORT),
            )
        )
        argv = ["miniupnpd", "-f", str(conf), "-d", "-P", str(self.workdir / f"upnp-{h.n}.pid")]
        proc = self.spawn(h.router_ns, argv, name=f"miniupnpd-{h.n}")

        def ready() -> bool:
            if not proc.alive():
                raise LabError(
                    f"miniupnpd for {h.name} exited\n{log_tail(proc.log) if proc.log else ''}"
                )
            return udp_listening(h.router_ns, h.gateway, A.NATPMP_PORT)

        try:
            wait_until(
                ready,
                timeout=MINIUPNPD_READY_TIMEOUT,
                what=f"miniupnpd on {h.gateway}:{A.NATPMP_PORT}",
                diagnose=lambda: log_tail(proc.log) if proc.log else "",
            )
        except BaseException:
            self.stop(proc)
            raise
        return proc
