"""The kernel NAT lab: network namespaces, nftables NAT routers, real STUN servers.

Topology (n = 1..N, one router per host so every host has its own NAT profile):

    <prefix>-pub   bridge br0 203.0.113.254/24, server addresses 198.51.100.x/32 on lo
    <prefix>-rN    wan 203.0.113.N/24 (on br0), lan 10.0.N.1/24, nftables ruleset of the profile
    <prefix>-hN    eth0 10.0.N.2/24, default via 10.0.N.1 (open: 192.0.2.x/29, no NAT)

Veths are created directly inside their namespaces, so labs with different prefixes coexist.
State (namespaces, pids, addresses) is saved under /run/punchthrough so `Lab.down(prefix)` can
clean up a lab whose creator crashed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from punchthrough.lab import addresses as A
from punchthrough.lab.addresses import Address
from punchthrough.lab.delay import iptables_argv, queue_bound
from punchthrough.lab.natdiscovery import (
    DEFAULT_TIMEOUT as NATDISCOVERY_TIMEOUT,
)
from punchthrough.lab.natdiscovery import (
    NatDiscoveryResult,
    run_natdiscovery,
    run_natdiscovery_many,
)
from punchthrough.lab.proc import (
    LabError,
    LabProcess,
    log_tail,
    netns_pids,
    popen,
    run,
    stop_many,
    udp_listening,
    wait_until,
)
from punchthrough.lab.profiles import PROFILE_NAMES, NatProfile, get_profile
from punchthrough.lab.rules import RouterOptions, miniupnpd_conf, nat_ruleset

STATE_DIR = Path("/run/punchthrough")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,11}$")
SERVER_READY_TIMEOUT = 10.0  # s; coturn and our server bind within ~1 s here
MINIUPNPD_READY_TIMEOUT = 10.0  # s; includes its STUN self-test
PROBE_MODULE = "punchthrough.lab.probe"
DELAY_MODULE = "punchthrough.lab.delay"
NFQUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"  # per network namespace


@dataclass(frozen=True)
class HostSpec:
    """One private host: the NAT profile of its router and the router's options."""

    profile: str
    options: RouterOptions = field(default_factory=RouterOptions)

    def __post_init__(self) -> None:
        prof = get_profile(self.profile)
        self.options.validate()
        if self.options.miniupnpd and not prof.nat:
            raise ValueError("miniupnpd needs a NAT profile (not 'open')")


@dataclass
class Host:
    """A private host behind its own router; run commands in it with `run` / `popen`."""

    lab: Lab = field(repr=False)
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
        return _json_out(self.run(argv, timeout=timeout + 10, check=True))

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


def _json_out(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise LabError(f"probe printed no JSON: {proc.stdout!r} {proc.stderr!r}") from exc
    if not isinstance(out, dict):
        raise LabError(f"probe printed {out!r}")
    return out


def _default_prefix() -> str:
    return "pt" + secrets.token_hex(3)


def _state_path(state_dir: Path, prefix: str) -> Path:
    return state_dir / f"lab-{prefix}.json"


def _existing_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _lab_namespaces(prefix: str, names: Iterable[str]) -> list[str]:
    pat = re.compile(rf"^{re.escape(prefix)}-(pub|r\d+|h\d+)$")
    return [n for n in names if pat.match(n)]


class Lab:
    """A kernel NAT lab; use as a context manager (sync). See the module docstring.

    `hosts`: profile names or HostSpecs, default one host per profile. `stun_server`: start our
    STUN server (`python -m punchthrough stun-server`); `coturn`: start coturn (RFC 5780 on
    .10/.11 and a second instance on .12/.13; required for miniupnpd's STUN self-test).
    """

    def __init__(
        self,
        hosts: Sequence[str | HostSpec] | None = None,
        *,
        prefix: str | None = None,
        stun_server: bool = True,
        coturn: bool = True,
        state_dir: Path = STATE_DIR,
        keep_workdir: bool = False,
    ) -> None:
        self.prefix = prefix or _default_prefix()
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"lab prefix {self.prefix!r} must match {PREFIX_RE.pattern}")
        specs = [
            h if isinstance(h, HostSpec) else HostSpec(h)
            for h in (hosts if hosts is not None else PROFILE_NAMES)
        ]
        if not 1 <= len(specs) <= A.MAX_HOSTS:
            raise ValueError(f"a lab has 1..{A.MAX_HOSTS} hosts, got {len(specs)}")
        if any(s.options.miniupnpd for s in specs) and not coturn:
            raise ValueError("miniupnpd needs coturn (its STUN self-test server)")
        self.hosts = [Host(self, i, s) for i, s in enumerate(specs)]
        self.want_stun_server = stun_server
        self.want_coturn = coturn
        self.state_dir = state_dir
        self.keep_workdir = keep_workdir
        self.workdir: Path | None = None
        self.processes: list[LabProcess] = []
        self.stun_running = False
        self.coturn_running = False
        self.build_seconds: float | None = None
        self._created: list[str] = []
        self._closed = False
        self.created_at = time.time()  # wall clock, for humans reading the state file

    # ----------------------------------------------------------------- names
    @property
    def pub_ns(self) -> str:
        return f"{self.prefix}-pub"

    @property
    def namespaces(self) -> list[str]:
        return [self.pub_ns, *(h.router_ns for h in self.hosts), *(h.ns for h in self.hosts)]

    def host(self, key: str | int) -> Host:
        """A host by index (0-based, or "h1"-style name) or by profile name (first match)."""
        if isinstance(key, int):
            if 0 <= key < len(self.hosts):
                return self.hosts[key]
            raise KeyError(f"no host with index {key} (lab has {len(self.hosts)})")
        for h in self.hosts:
            if key in (h.spec.profile, h.name):
                return h
        if key.isdigit():
            return self.host(int(key))
        raise KeyError(
            f"no host with profile or name {key!r}; hosts: "
            f"{', '.join(f'{h.name}={h.spec.profile}' for h in self.hosts)}"
        )

    # ------------------------------------------------------------- lifecycle
    def __enter__(self) -> Lab:
        try:
            self.up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def up(self) -> Lab:
        """Build the topology and start the servers. On error the caller must `close()`
        (the context manager does)."""
        t0 = time.monotonic()
        self._check_free()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"punchthrough-lab-{self.prefix}-"))
        self._save_state()  # before anything exists, so a crash mid-build is still cleanable
        self._build()
        self.build_seconds = time.monotonic() - t0
        if self.want_coturn:
            self.start_coturn()
        if self.want_stun_server:
            self.start_stun_server()
        for h in self.hosts:
            if h.spec.options.miniupnpd:
                self.start_miniupnpd(h)
        self._save_state()
        return self

    def _check_free(self) -> None:
        taken = _lab_namespaces(self.prefix, _existing_namespaces())
        if taken or _state_path(self.state_dir, self.prefix).exists():
            what = ", ".join(taken) or "state file"
            raise LabError(
                f"lab prefix {self.prefix!r} is in use ({what}); clean it with "
                f"`punchthrough lab down --prefix {self.prefix}`"
            )

    def _build(self) -> None:
        for ns in self.namespaces:
            run(["ip", "netns", "add", ns], what="create namespace")
            self._created.append(ns)
            self._save_state()
        # veth pairs created directly inside their namespaces (never in the root namespace)
        root_batch = []
        for h in self.hosts:
            root_batch.append(
                f"link add {A.WAN_IF} netns {h.router_ns} type veth "
                f"peer name p{h.n} netns {self.pub_ns}"
            )
            root_batch.append(
                f"link add {A.LAN_IF} netns {h.router_ns} type veth "
                f"peer name {A.HOST_IF} netns {h.ns}"
            )
        self._ip_batch(None, root_batch)
        pub = [
            "link set lo up",
            f"link add {A.BRIDGE_IF} type bridge",
            f"addr add {A.PUB_BRIDGE_IP}/{A.PUB_PREFIX_LEN} dev {A.BRIDGE_IF}",
            f"link set {A.BRIDGE_IF} up",
            *(f"addr add {ip}/32 dev lo" for ip in A.SERVER_IPS),
        ]
        for h in self.hosts:
            pub.append(f"link set p{h.n} master {A.BRIDGE_IF} up")
            if not h.profile.nat:
                pub.append(f"route add {h.subnet} via {h.router_wan_ip}")
        self._ip_batch(self.pub_ns, pub)
        # The public segment routes between routers (an `open` host's subnet sits behind its
        # router), as the internet does: without forwarding only relayed traffic gets through.
        run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=self.pub_ns, what="pub forwarding")
        for h in self.hosts:
            plen = h.subnet.split("/")[1]
            self._ip_batch(
                h.router_ns,
                [
                    "link set lo up",
                    f"addr add {h.router_wan_ip}/{A.PUB_PREFIX_LEN} dev {A.WAN_IF}",
                    f"link set {A.WAN_IF} up",
                    f"route add default via {A.PUB_BRIDGE_IP}",
                    f"addr add {h.gateway}/{plen} dev {A.LAN_IF}",
                    f"link set {A.LAN_IF} up",
                ],
            )
            self._ip_batch(
                h.ns,
                [
                    "link set lo up",
                    f"addr add {h.ip}/{plen} dev {A.HOST_IF}",
                    f"link set {A.HOST_IF} up",
                    f"route add default via {h.gateway}",
                ],
            )
            self._configure_router(h)

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

    def _ip_batch(self, ns: str | None, cmds: Sequence[str]) -> None:
        argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
        run(argv, input="\n".join(cmds) + "\n", what=f"configure {ns or 'root namespace'}")

    def close(self) -> None:
        """Kill every process in the lab's namespaces (by pid), then delete the namespaces.
        Idempotent; raises LabError if something could not be removed."""
        if self._closed:
            return
        self._closed = True
        problems = _teardown(
            self.prefix, self._created or [], [(p.pid, p.popen) for p in self.processes]
        )
        self.processes.clear()
        with contextlib.suppress(FileNotFoundError):
            _state_path(self.state_dir, self.prefix).unlink()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise LabError(f"lab {self.prefix} teardown incomplete: {'; '.join(problems)}")

    @classmethod
    def down(cls, prefix: str, state_dir: Path = STATE_DIR) -> list[str]:
        """Clean up lab `prefix` from any process, also after its creator crashed.
        Returns the namespaces deleted."""
        if not PREFIX_RE.match(prefix):
            raise ValueError(f"lab prefix {prefix!r} must match {PREFIX_RE.pattern}")
        path = _state_path(state_dir, prefix)
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
        existing = _existing_namespaces()
        names = set(_lab_namespaces(prefix, existing))
        names |= {n for n in state.get("namespaces", []) if n in existing}
        problems = _teardown(prefix, sorted(names), [])
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        workdir = state.get("workdir")
        if workdir and Path(workdir).name.startswith(f"punchthrough-lab-{prefix}-"):
            shutil.rmtree(workdir, ignore_errors=True)
        if problems:
            raise LabError(f"lab {prefix} teardown incomplete: {'; '.join(problems)}")
        return sorted(names)

    @staticmethod
    def list_states(state_dir: Path = STATE_DIR) -> list[dict[str, Any]]:
        """Saved state of every lab (running or crashed), newest first."""
        out = []
        for path in sorted(state_dir.glob("lab-*.json")):
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(path.read_text()))
        return sorted(out, key=lambda s: -float(s.get("created", 0)))

    @staticmethod
    def load_state(prefix: str, state_dir: Path = STATE_DIR) -> dict[str, Any]:
        path = _state_path(state_dir, prefix)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab with prefix {prefix!r} (no {path})") from None
        except ValueError as exc:
            raise LabError(f"corrupt lab state {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise LabError(f"corrupt lab state {path}")
        return data

    # -------------------------------------------------------------- processes
    def spawn(
        self, ns: str, argv: Sequence[str], *, name: str, log: bool = True, **kwargs: Any
    ) -> LabProcess:
        """Start a tracked process in namespace `ns`, output to `<workdir>/<name>.log`."""
        if self.workdir is None or self._closed:
            raise LabError("lab is not up")
        path = self.workdir / f"{name}.log" if log and "stdout" not in kwargs else None
        p = popen(argv, ns=ns, log=path, **kwargs)
        proc = LabProcess(name=name, ns=ns, argv=list(argv), pid=p.pid, log=path, popen=p)
        self.processes.append(proc)
        self._save_state()
        return proc

    def stop(self, proc: LabProcess, timeout: float = 3.0) -> None:
        """SIGTERM then SIGKILL one tracked process."""
        proc.stop(timeout)
        if proc in self.processes:
            self.processes.remove(proc)
        self._save_state()

    def _spawn_server(
        self,
        name: str,
        argv: Sequence[str],
        ns: str,
        endpoints: Sequence[Address],
        *,
        rfc5780: Address | None,
        timeout: float = SERVER_READY_TIMEOUT,
    ) -> LabProcess:
        proc = self.spawn(ns, argv, name=name)

        def diagnose() -> str:
            state = "exited" if not proc.alive() else "running"
            return f"{name} is {state}; {' '.join(argv)}\n{log_tail(proc.log) if proc.log else ''}"

        def ready() -> bool:
            if not proc.alive():
                raise LabError(f"{name} exited during startup\n{diagnose()}")
            return all(udp_listening(self.pub_ns, ip, port) for ip, port in endpoints)

        try:
            wait_until(
                ready, timeout=timeout, what=f"{name} to listen on {endpoints}", diagnose=diagnose
            )
            first = endpoints[0]
            res = self.wait_stun(self.pub_ns, first, timeout=timeout)
            if rfc5780 is not None and tuple(res.get("other_address", ())) != rfc5780:
                raise LabError(
                    f"{name} at {first} answered without OTHER-ADDRESS {rfc5780} "
                    f"(got {res.get('other_address')})\n{diagnose()}"
                )
        except BaseException:
            self.stop(proc)
            raise
        return proc

    def start_coturn(self, second: bool = True) -> list[LabProcess]:
        """coturn as an RFC 5780 STUN server on .10/.11 (3478/3479) and, with `second`, a
        second instance on .12/.13. `-L` pins every listener and relay to those addresses;
        a private --userdb in the workdir avoids /var/lib/turn; -n: no config file."""
        assert self.workdir is not None
        started = []
        pairs = [(A.COTURN_PRIMARY, A.COTURN_ALT)]
        if second:
            pairs.append((A.COTURN2_PRIMARY, A.COTURN2_ALT))
        for i, (ip1, ip2) in enumerate(pairs, start=1):
            base = self.workdir / f"coturn{i}"
            argv = [
                "turnserver",
                "-n",
                "-S",
                "-L",
                ip1,
                "-L",
                ip2,
                "--listening-port",
                str(A.STUN_PORT),
                "--alt-listening-port",
                str(A.STUN_ALT_PORT),
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                "--no-stdout-log",
                "--simple-log",
                "--log-file",
                f"{base}.turn.log",
                "--pidfile",
                f"{base}.pid",
                "--userdb",
                f"{base}.db",
            ]
            eps = [(ip, port) for ip in (ip1, ip2) for port in (A.STUN_PORT, A.STUN_ALT_PORT)]
            started.append(
                self._spawn_server(
                    f"coturn{i}", argv, self.pub_ns, eps, rfc5780=(ip2, A.STUN_ALT_PORT)
                )
            )
        self.coturn_running = True
        self._save_state()
        return started

    def start_stun_server(self) -> list[LabProcess]:
        """Our STUN server: RFC 5780 on {.1, .2} x {3478, 3479}, plus a plain one on .3/.4."""
        main = [
            sys.executable,
            "-m",
            "punchthrough",
            "stun-server",
            "--listen",
            f"{A.OUR_STUN_PRIMARY}:{A.STUN_PORT}",
            "--alt-ip",
            A.OUR_STUN_ALT,
        ]
        eps = [
            (ip, port)
            for ip in (A.OUR_STUN_PRIMARY, A.OUR_STUN_ALT)
            for port in (A.STUN_PORT, A.STUN_ALT_PORT)
        ]
        started = [
            self._spawn_server(
                "stun", main, self.pub_ns, eps, rfc5780=(A.OUR_STUN_ALT, A.STUN_ALT_PORT)
            )
        ]
        extra = [sys.executable, "-m", "punchthrough", "stun-server"]
        for ip in A.OUR_STUN_EXTRA:
            extra += ["--listen", f"{ip}:{A.STUN_PORT}"]
        started.append(
            self._spawn_server(
                "stun-extra",
                extra,
                self.pub_ns,
                [(ip, A.STUN_PORT) for ip in A.OUR_STUN_EXTRA],
                rfc5780=None,
            )
        )
        self.stun_running = True
        self._save_state()
        return started

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

    # ---------------------------------------------------------------- probing
    def stun_probe(
        self,
        ns: str,
        server: Address,
        *,
        count: int = 1,
        interval: float = 0.01,
        timeout: float = 1.0,
        bind: Address | None = None,
    ) -> dict[str, Any]:
        """Send `count` STUN Binding requests from namespace `ns` with the stdlib probe.
        Returns {sent, received, mapped, other_address, response_origin, rtt_ms, local}."""
        argv = [
            sys.executable,
            "-m",
            PROBE_MODULE,
            "stun",
            server[0],
            str(server[1]),
            "--count",
            str(count),
            "--interval",
            str(interval),
            "--timeout",
            str(timeout),
        ]
        if bind is not None:
            argv += ["--bind", f"{bind[0]}:{bind[1]}"]
        budget = timeout + count * interval + 15
        return _json_out(run(argv, ns=ns, timeout=budget, what=f"stun probe in {ns}"))

    def wait_stun(
        self,
        ns: str,
        server: Address,
        timeout: float = SERVER_READY_TIMEOUT,
    ) -> dict[str, Any]:
        """Wait until `server` answers a Binding request sent from inside `ns`."""
        result: dict[str, Any] = {}

        def answered() -> bool:
            nonlocal result
            result = self.stun_probe(ns, server, timeout=0.5)
            return bool(result.get("received"))

        wait_until(
            answered, timeout=timeout, what=f"STUN answer from {server} in {ns}", interval=0.0
        )
        return result

    def natdiscovery_all(
        self,
        server: str = A.COTURN_PRIMARY,
        port: int = A.STUN_PORT,
        timeout: float = NATDISCOVERY_TIMEOUT,
    ) -> dict[str, NatDiscoveryResult]:
        """turnutils_natdiscovery from every host in parallel, keyed by host name."""
        res = run_natdiscovery_many(
            [h.ns for h in self.hosts], server, port, timeout, [h.ip for h in self.hosts]
        )
        return {h.name: r for h, r in zip(self.hosts, res, strict=True)}

    # ----------------------------------------------------------- server lists
    def stun_servers(self) -> list[Address]:
        """Our STUN server's endpoints for netcheck's --stun: RFC 5780 primary first, then the
        other distinct IPs, then the alternate ports (6 endpoints, 4 IPs)."""
        return [
            (A.OUR_STUN_PRIMARY, A.STUN_PORT),
            (A.OUR_STUN_ALT, A.STUN_PORT),
            *((ip, A.STUN_PORT) for ip in A.OUR_STUN_EXTRA),
            (A.OUR_STUN_PRIMARY, A.STUN_ALT_PORT),
            (A.OUR_STUN_ALT, A.STUN_ALT_PORT),
        ]

    def coturn_servers(self) -> list[Address]:
        """coturn's endpoints, RFC 5780 instance (.10) first: 8 endpoints on 4 IPs."""
        ips = (A.COTURN_PRIMARY, A.COTURN_ALT, A.COTURN2_PRIMARY, A.COTURN2_ALT)
        return [*((ip, A.STUN_PORT) for ip in ips), *((ip, A.STUN_ALT_PORT) for ip in ips)]

    # ------------------------------------------------------------------ state
    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "created": self.created_at,
            "pid": os.getpid(),
            "workdir": str(self.workdir) if self.workdir else None,
            "pub_ns": self.pub_ns,
            "namespaces": list(self._created),
            "hosts": [h.to_json() for h in self.hosts],
            "processes": [p.to_json() for p in self.processes],
            "servers": {
                "stun": [list(a) for a in self.stun_servers()] if self.stun_running else [],
                "coturn": [list(a) for a in self.coturn_servers()] if self.coturn_running else [],
            },
            "build_seconds": self.build_seconds,
        }

    def _save_state(self) -> None:
        path = _state_path(self.state_dir, self.prefix)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)


def _teardown(
    prefix: str,
    namespaces: Sequence[str],
    known: Sequence[tuple[int, subprocess.Popen[bytes] | None]],
) -> list[str]:
    """Kill known pids and every pid inside the namespaces, then delete the namespaces.

    A namespace with a live process keeps running (and answering) after `ip netns del`, so the
    kill comes first; pids from `ip netns pids` are authoritative (saved pids may be reused).
    """
    problems: list[str] = []
    existing = set(_existing_namespaces())
    present = [ns for ns in namespaces if ns in existing]
    in_ns = {pid for ns in present for pid in netns_pids(ns)}
    targets: list[tuple[int, subprocess.Popen[bytes] | None]] = [
        (pid, p) for pid, p in known if p is None or p.poll() is None
    ]
    targets += [(pid, None) for pid in sorted(in_ns - {pid for pid, _ in targets})]
    survivors = stop_many(targets)
    if survivors:
        problems.append(f"pids survived SIGKILL: {survivors}")
    for ns in present:
        proc = run(["ip", "netns", "del", ns], check=False)
        if proc.returncode != 0:
            problems.append(f"ip netns del {ns}: {proc.stderr.strip()}")
    left = _lab_namespaces(prefix, _existing_namespaces())
    left = [ns for ns in left if ns in namespaces]
    if left:
        problems.append(f"namespaces left: {left}")
    return problems
