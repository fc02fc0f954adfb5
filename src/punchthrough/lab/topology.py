"""The kernel NAT lab: network namespaces, nftables NAT routers, real STUN servers.

Topology (n = 1..N, one router per host so every host has its own NAT profile):

    <prefix>-pub   bridge br0 203.0.113.254/24, server addresses 198.51.100.x/32 on lo
    <prefix>-rN    wan 203.0.113.N/24 (on br0), lan 10.0.N.1/24, nftables ruleset of the profile
    <prefix>-hN    eth0 10.0.N.2/24, default via 10.0.N.1 (open: 192.0.2.x/29, no NAT)

Veths are created directly inside their namespaces, so labs with different prefixes coexist.
State (namespaces, pids, addresses) is saved under /run/punchthrough so `Lab.down(prefix)` can
clean up a lab whose creator crashed.

This module builds the namespaces and links and owns the lab's life cycle; the hosts
(:mod:`.host`), their routers (:mod:`.routers`), the servers and probes (:mod:`.servers`) and
teardown (:mod:`.namespaces`) are its siblings.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from punchthrough.lab import addresses as A
from punchthrough.lab import ipv6 as V6
from punchthrough.lab.host import Host, HostSpec
from punchthrough.lab.namespaces import (
    PREFIX_RE,
    STATE_DIR,
    default_prefix,
    existing_namespaces,
    lab_namespaces,
    state_path,
    teardown,
)
from punchthrough.lab.natdiscovery import (
    DEFAULT_TIMEOUT as NATDISCOVERY_TIMEOUT,
)
from punchthrough.lab.natdiscovery import NatDiscoveryResult, run_natdiscovery_many
from punchthrough.lab.proc import LabError, LabProcess, run
from punchthrough.lab.profiles import PROFILE_NAMES
from punchthrough.lab.routers import LabRouters

__all__ = ["STATE_DIR", "Host", "HostSpec", "Lab"]


class Lab(LabRouters):
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
        self.prefix = prefix or default_prefix()
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
            if any(h.spec.ipv6 for h in self.hosts):
                self.start_stun_server6()
        for h in self.hosts:
            if h.spec.options.miniupnpd:
                self.start_miniupnpd(h)
        self._save_state()
        return self

    def _check_free(self) -> None:
        taken = lab_namespaces(self.prefix, existing_namespaces())
        if taken or state_path(self.state_dir, self.prefix).exists():
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
        if any(h.spec.ipv6 for h in self.hosts):
            self._build_ipv6()

    def _build_ipv6(self) -> None:
        """Dual-stack routers and hosts (:mod:`punchthrough.lab.ipv6`): static addresses and
        routes, forwarding, and each NAT router's stateful IPv6 firewall."""
        six = [h for h in self.hosts if h.spec.ipv6]
        self._ip_batch(self.pub_ns, V6.pub_commands([h.n for h in six]))
        run(["sysctl", "-qw", *V6.FORWARDING_SYSCTLS], ns=self.pub_ns, what="pub IPv6")
        for h in six:
            self._ip_batch(h.router_ns, V6.router_commands(h.n))
            self._ip_batch(h.ns, V6.host_commands(h.n))
            run(["sysctl", "-qw", *V6.FORWARDING_SYSCTLS], ns=h.router_ns, what="router IPv6")
            if h.profile.nat:  # `open`: no NAT on IPv4, no firewall on IPv6
                fw = V6.firewall_ruleset()
                run(["nft", "-f", "-"], ns=h.router_ns, input=fw, what="IPv6 firewall")

    def _ip_batch(self, ns: str | None, cmds: Sequence[str]) -> None:
        argv = ["ip", *(["-n", ns] if ns else []), "-batch", "-"]
        run(argv, input="\n".join(cmds) + "\n", what=f"configure {ns or 'root namespace'}")

    def close(self) -> None:
        """Kill every process in the lab's namespaces (by pid), then delete the namespaces.
        Idempotent; raises LabError if something could not be removed."""
        if self._closed:
            return
        self._closed = True
        problems = teardown(
            self.prefix, self._created or [], [(p.pid, p.popen) for p in self.processes]
        )
        self.processes.clear()
        with contextlib.suppress(FileNotFoundError):
            state_path(self.state_dir, self.prefix).unlink()
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
        path = state_path(state_dir, prefix)
        state: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
        existing = existing_namespaces()
        names = set(lab_namespaces(prefix, existing))
        names |= {n for n in state.get("namespaces", []) if n in existing}
        problems = teardown(prefix, sorted(names), [])
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
        path = state_path(state_dir, prefix)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab with prefix {prefix!r} (no {path})") from None
        except ValueError as exc:
            raise LabError(f"corrupt lab state {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise LabError(f"corrupt lab state {path}")
        return data

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
        path = state_path(self.state_dir, self.prefix)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2))
        tmp.replace(path)
