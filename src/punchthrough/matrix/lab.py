"""The kernel-lab backend: real NATs in network namespaces, real processes, per trial.

One lab (two hosts: the caller behind profile ``a``, the callee behind ``b``, each with its own
router; our STUN servers on the public segment) per cell. Per trial, as in
``tests/lab/test_endpoint_lab.py``: both routers' conntrack tables are flushed (every trial
starts with NATs that remember no earlier call), our relay starts in the pub namespace, the
callee runs ``listen --echo --json``, the caller runs ``connect --json``; the relay and the
listener are stopped after the call on every path.

Delay (``--rtt MS``): this kernel has no netem, so each of the two routers gets
``RouterOptions(delay_ms=MS / 4)``: an iptables NFQUEUE rule plus a userspace delayer
(``punchthrough.lab.delay``) holding every forwarded packet MS / 4 in each direction. The
peers' round trip is then MS on the direct path AND on the relayed one (the relay sits on the
undelayed public segment; in the simulator the relayed RTT is twice the direct one), and each
peer's RTT to the relay or a STUN server is MS / 2. Without ``--rtt`` no delay is applied and
``rtt_ms`` is null.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from punchthrough.identity import Identity
from punchthrough.lab import HostSpec, Lab, LabError, RouterOptions, router_delay_for_rtt
from punchthrough.lab import addresses as A
from punchthrough.lab.ipv6 import RELAY6, STUN6_PRIMARY, bracket
from punchthrough.lab.proc import udp_listening, wait_until
from punchthrough.matrix.model import TrialResult, trial_error, trial_from_call
from punchthrough.matrix.profiles import stacks_for

#: Our relay on the lab's relay address (team notes: 198.51.100.20:3478, RFC 5780 alt .21).
RELAY: Final = (A.RELAY_PRIMARY, A.STUN_PORT)
RELAY_TEXT: Final = f"{RELAY[0]}:{RELAY[1]}"
#: Our STUN servers as the simulator scenario lays them out (primary + the two plain ones).
STUN: Final = (
    f"{A.OUR_STUN_PRIMARY}:{A.STUN_PORT}",
    *(f"{ip}:{A.STUN_PORT}" for ip in A.OUR_STUN_EXTRA),
)
READY_TIMEOUT: Final = 15.0  # s: a Python process importing aioquic starts in ~1 s here
CONNECT_TIMEOUT: Final = 10.0  # s: `connect --connect-timeout`, its own default
#: Beyond duration + connect timeout, before a hung `connect` is killed (start-up, stragglers).
CALL_SLACK: Final = 30.0
DEFAULT_TRIALS: Final = 3  # issue 7: "lab with a few trials per cell"
DEFAULT_DURATION_S: Final = 10.0
ERROR_TAIL: Final = 500  # characters of a failed process's stderr kept in the trial


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "punchthrough", *args]


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a child's stdout, or b"" after ``timeout`` s (the child writes whole,
    flushed lines, so a readable pipe holds a full line or EOF)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else b""


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        return obj if isinstance(obj, dict) else None
    return None


@dataclass
class LabBackend:
    """Runs each trial as real processes on real kernel NATs (needs root)."""

    duration: float = DEFAULT_DURATION_S
    pps: float = 50.0
    requested_rtt_ms: float | None = None
    name: str = "lab"
    #: ``--ipv6``: which peers are dual stack (:func:`punchthrough.matrix.profiles.stacks_for`).
    ipv6: str = "none"

    @property
    def rtt_ms(self) -> float | None:
        """The peers' configured round-trip time (direct and relayed), or None: no delay."""
        return self.requested_rtt_ms or None

    @property
    def notes(self) -> list[str]:
        rtt = self.rtt_ms
        if rtt is None:
            delay = (
                "kernel lab without --rtt: no delay is applied between the peers, so times "
                "are for sub-millisecond namespace links plus process start-up, and rtt_ms is null"
            )
        else:
            delay = (
                f"kernel lab with --rtt {rtt:g}: each router delays every forwarded packet "
                f"{router_delay_for_rtt(rtt):g} ms each way (iptables NFQUEUE + a userspace "
                f"delayer; no netem on this kernel), so the peers' RTT is {rtt:g} ms on the "
                f"direct and on the relayed path alike and {rtt / 2:g} ms to the relay"
            )
        v6 = (
            [
                f"IPv6 ({self.ipv6}): dual-stack peers have 2001:db8:n::2 behind their router's "
                "nftables inet stateful firewall (no delay on IPv6: the delayer is IPv4 only)"
            ]
            if self.ipv6 != "none"
            else []
        )
        return [
            delay,
            f"{self.duration:g} s calls at {self.pps:g} frames/s; a fresh relay, listener and "
            "caller per trial; conntrack flushed before each trial",
            *v6,
        ]

    def __post_init__(self) -> None:
        #: Prefixes of the labs built so far (``punchthrough lab down --prefix P`` cleans one
        #: up if this process is killed before its teardown ran).
        self.prefixes: list[str] = []

    def cell(self, a: str, b: str) -> LabCell:
        cell = LabCell(a, b, self.duration, self.pps, self.rtt_ms, stacks_for(self.ipv6))
        self.prefixes.append(cell.lab.prefix)
        return cell


class LabCell:
    """One pair's lab; a context manager whose value runs trials (``cell(k)``)."""

    def __init__(
        self,
        a: str,
        b: str,
        duration: float,
        pps: float,
        rtt_ms: float | None = None,
        stacks: tuple[str, str] = ("ipv4", "ipv4"),
    ) -> None:
        self.a, self.b = a, b
        self.duration, self.pps = duration, pps
        self.stacks = stacks
        opts = RouterOptions(delay_ms=router_delay_for_rtt(rtt_ms) if rtt_ms else 0.0)
        specs = [HostSpec(p, opts, ipv6=st == "dual") for p, st in ((a, stacks[0]), (b, stacks[1]))]
        self.lab = Lab(specs, stun_server=True, coturn=False)
        self._callee: Identity | None = None
        self._keys: tuple[Path, Path] | None = None

    def __enter__(self) -> LabCell:
        self.lab.__enter__()
        try:
            assert self.lab.workdir is not None
            caller, callee = Identity.generate(), Identity.generate()
            keys = (self.lab.workdir / "caller.key", self.lab.workdir / "callee.key")
            caller.save(keys[0])
            callee.save(keys[1])
            self._callee, self._keys = callee, keys
        except BaseException:
            self.lab.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.lab.close()

    def __call__(self, trial: int) -> TrialResult:
        t0 = time.monotonic()
        try:
            call = self._run(trial)
        except (LabError, OSError, subprocess.SubprocessError) as e:
            return trial_error(
                self.a, self.b, trial, str(e)[-ERROR_TAIL:], wall_s=time.monotonic() - t0
            )
        return trial_from_call(self.a, self.b, trial, call, wall_s=time.monotonic() - t0)

    def call(self, trial: int) -> dict[str, Any]:
        """One call, the caller's raw ``connect --json`` result (benchmarks read fields the
        matrix does not keep, e.g. ``first_echo_ms``). Raises LabError on failure."""
        return self._run(trial)

    def _run(self, trial: int) -> dict[str, Any]:
        assert self._callee is not None and self._keys is not None
        lab = self.lab
        caller_host, callee_host = lab.hosts[0], lab.hosts[1]
        for h in (caller_host, callee_host):
            h.router_run(["conntrack", "-F"], check=False)  # exit 1 when already empty
        v6 = ["--listen", bracket(RELAY6, A.STUN_PORT)] if "dual" in self.stacks else []
        relay = lab.spawn(
            lab.pub_ns,
            _cli(
                "relay",
                "--listen",
                RELAY_TEXT,
                *v6,
                "--alt-ip",
                A.RELAY_ALT,
                "--stats-interval",
                "0",
            ),
            name=f"relay-{trial}",
        )
        try:
            wait_until(
                lambda: udp_listening(lab.pub_ns, *RELAY),
                timeout=READY_TIMEOUT,
                what="the relay to listen",
            )
            return self._call(trial)
        finally:
            lab.stop(relay)

    def _call(self, trial: int) -> dict[str, Any]:
        assert self._callee is not None and self._keys is not None
        lab = self.lab
        caller_host, callee_host = lab.hosts[0], lab.hosts[1]
        stun = [arg for s in STUN for arg in ("--stun", s)]
        stun6 = ["--stun", bracket(STUN6_PRIMARY, A.STUN_PORT)]
        caller_stun = [*stun, *(stun6 if self.stacks[0] == "dual" else [])]
        callee_stun = [*stun, *(stun6 if self.stacks[1] == "dual" else [])]
        listener = lab.spawn(
            callee_host.ns,
            _cli(
                "listen",
                "--identity",
                str(self._keys[1]),
                "--relay",
                RELAY_TEXT,
                *callee_stun,
                "--echo",
                "--json",
            ),
            name=f"listen-{trial}",
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert listener.popen is not None and listener.popen.stdout is not None
            ready = _last_json(_readline(listener.popen.stdout, READY_TIMEOUT).decode())
            if ready is None or ready.get("event") != "listening":
                raise LabError(f"listen --echo did not come up (rc={listener.popen.poll()})")
            proc = caller_host.run(
                _cli(
                    "connect",
                    str(self._callee.peer_id),
                    "--identity",
                    str(self._keys[0]),
                    "--relay",
                    RELAY_TEXT,
                    *caller_stun,
                    "--duration",
                    f"{self.duration:g}",
                    "--pps",
                    f"{self.pps:g}",
                    "--connect-timeout",
                    f"{CONNECT_TIMEOUT:g}",
                    "--json",
                ),
                timeout=self.duration + CONNECT_TIMEOUT + CALL_SLACK,
            )
            result = _last_json(proc.stdout)
            if result is None:
                raise LabError(
                    f"connect printed no JSON (exit {proc.returncode}): "
                    f"{proc.stderr.strip()[-ERROR_TAIL:]}"
                )
            return result
        finally:
            lab.stop(listener)
            if listener.popen is not None and listener.popen.stdout is not None:
                listener.popen.stdout.close()
