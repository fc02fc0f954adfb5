"""The processes a lab runs: tracked spawns, the STUN servers on the public segment, and STUN
probes from any namespace to check them.

The first base of :class:`~punchthrough.lab.topology.Lab`; the lab's routers
(:mod:`punchthrough.lab.routers`) and its hosts (:mod:`punchthrough.lab.host`) start processes
through it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from punchthrough.lab import addresses as A
from punchthrough.lab.addresses import Address
from punchthrough.lab.ipv6 import STUN6_ALT, STUN6_PRIMARY, bracket
from punchthrough.lab.proc import (
    LabError,
    LabProcess,
    log_tail,
    popen,
    run,
    udp_listening,
    wait_until,
)

SERVER_READY_TIMEOUT = 10.0  # s; coturn and our server bind within ~1 s here
PROBE_MODULE = "punchthrough.lab.probe"


def probe_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The result the stdlib probe printed: one JSON object, on its last line of output."""
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise LabError(f"probe printed no JSON: {proc.stdout!r} {proc.stderr!r}") from exc
    if not isinstance(out, dict):
        raise LabError(f"probe printed {out!r}")
    return out


class LabServers:
    """A lab's tracked processes and STUN servers (``Lab`` sets these attributes up)."""

    prefix: str
    workdir: Path | None
    processes: list[LabProcess]
    stun_running: bool
    coturn_running: bool
    _closed: bool

    @property
    def pub_ns(self) -> str:
        return f"{self.prefix}-pub"

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

    def start_stun_server6(self) -> LabProcess:
        """Our STUN server over IPv6: RFC 5780 on {2001:db8:100::1, ::2} x {3478, 3479}."""
        argv = [
            sys.executable,
            "-m",
            "punchthrough",
            "stun-server",
            "--listen",
            bracket(STUN6_PRIMARY, A.STUN_PORT),
            "--alt-ip",
            STUN6_ALT,
        ]
        proc = self.spawn(self.pub_ns, argv, name="stun6")
        eps = [(ip, p) for ip in (STUN6_PRIMARY, STUN6_ALT) for p in (A.STUN_PORT, A.STUN_ALT_PORT)]
        wait_until(
            lambda: proc.alive() and all(udp_listening(self.pub_ns, *e) for e in eps),
            timeout=SERVER_READY_TIMEOUT,
            what=f"stun6 to listen on {eps}",
        )
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
        return probe_json(run(argv, ns=ns, timeout=budget, what=f"stun probe in {ns}"))

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

    def _save_state(self) -> None:
        """Record the lab's state after a process starts or stops; ``Lab`` writes its file."""
        raise NotImplementedError
