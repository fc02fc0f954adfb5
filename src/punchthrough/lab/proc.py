"""Running commands and long-lived processes inside network namespaces.

Everything goes through `ip netns exec NS cmd...`: ip execs the command, so a Popen's pid is the
command's own pid and can be signalled directly. Errors carry the command and its stderr.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import punchthrough

DEFAULT_CMD_TIMEOUT = 30.0  # s; any single ip/nft/sysctl call finishing slower is a hang
STOP_TIMEOUT = 3.0  # s between SIGTERM and SIGKILL
POLL_INTERVAL = 0.02  # s


class LabError(RuntimeError):
    """A lab operation failed; the message says what was run and what it printed."""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for children: makes `python -m punchthrough...` importable from a checkout."""
    env = dict(os.environ)
    src = str(Path(punchthrough.__file__).resolve().parent.parent)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in parts:
        env["PYTHONPATH"] = os.pathsep.join([src, *parts])
    if extra:
        env.update(extra)
    return env


def ns_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def run(
    argv: Sequence[str],
    *,
    ns: str | None = None,
    check: bool = True,
    timeout: float = DEFAULT_CMD_TIMEOUT,
    input: str | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (optionally in a namespace), capture text output, raise LabError on failure."""
    full = ns_argv(ns, argv)
    try:
        proc = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise LabError(f"{what or 'command'}: {full[0]!r} not found ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{what or 'command'} timed out after {timeout}s: {' '.join(full)}") from exc
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip()
        raise LabError(
            f"{what + ': ' if what else ''}`{' '.join(full)}` failed "
            f"(exit {proc.returncode}): {msg[-2000:]}"
        )
    return proc


def popen(
    argv: Sequence[str],
    *,
    ns: str | None = None,
    log: Path | None = None,
    new_session: bool = True,
    **kwargs: Any,
) -> subprocess.Popen[bytes]:
    """Start a process in a namespace; stdout+stderr go to `log` when given.

    A new session keeps lab servers alive after the CLI that started them exits, and away from
    the terminal's Ctrl-C (cleanup kills them by pid).
    """
    full = ns_argv(ns, argv)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("env", child_env())
    logf: IO[bytes] | None = None
    if log is not None:
        logf = open(log, "ab")  # noqa: SIM115 - handed to the child, closed below
        kwargs.setdefault("stdout", logf)
        kwargs.setdefault("stderr", subprocess.STDOUT)
    try:
        return subprocess.Popen(full, start_new_session=new_session, **kwargs)
    except FileNotFoundError as exc:
        raise LabError(f"cannot start {full[0]!r}: {exc}") from exc
    finally:
        if logf is not None:
            logf.close()


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # state is the field after the parenthesised command name (which may contain spaces)
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X", b"")


def stop_pid(
    pid: int,
    *,
    popen_obj: subprocess.Popen[bytes] | None = None,
    timeout: float = STOP_TIMEOUT,
) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Reaps the child if we are its parent."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            if popen_obj is not None:
                if popen_obj.poll() is not None:
                    return
            elif not pid_alive(pid):
                return
            time.sleep(POLL_INTERVAL)
    if popen_obj is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen_obj.wait(timeout=1.0)


def stop_many(
    targets: Sequence[tuple[int, subprocess.Popen[bytes] | None]],
    *,
    timeout: float = STOP_TIMEOUT,
) -> list[int]:
    """Stop many processes at once: SIGTERM all, wait, SIGKILL stragglers. Returns survivors."""

    def gone(pid: int, p: subprocess.Popen[bytes] | None) -> bool:
        return p.poll() is not None if p is not None else not pid_alive(pid)

    left = list(targets)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        for pid, _ in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            left = [(pid, p) for pid, p in left if not gone(pid, p)]
            if left:
                time.sleep(POLL_INTERVAL)
        if not left:
            break
    for _, p in targets:
        if p is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=0.5)
    return [pid for pid, _ in left]


def netns_pids(ns: str) -> list[int]:
    """Pids whose network namespace is `ns` (empty if the namespace is gone)."""
    proc = run(["ip", "netns", "pids", ns], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def wait_until(
    pred: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    diagnose: Callable[[], str] | None = None,
) -> None:
    """Poll `pred` until true; LabError naming `what` (plus a diagnosis, e.g. a log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if time.monotonic() >= deadline:
            extra = diagnose() if diagnose else ""
            raise LabError(
                f"timed out after {timeout}s waiting for {what}" + (f"\n{extra}" if extra else "")
            )
        time.sleep(interval)


def udp_listening(ns: str, ip: str, port: int) -> bool:
    """True when something in `ns` has a UDP socket bound to ip:port (or the wildcard)."""
    out = run(["ss", "-H", "-uln"], ns=ns, check=False).stdout
    wanted = {f"{ip}:{port}", f"0.0.0.0:{port}", f"*:{port}", f"[{ip}]:{port}", f"[::]:{port}"}
    return any(len(f := line.split()) >= 4 and f[3] in wanted for line in out.splitlines())


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return f"--- last lines of {path} ---\n" + "\n".join(text.splitlines()[-lines:])


@dataclass
class LabProcess:
    """A long-lived process the lab started (server, miniupnpd, or a caller's popen)."""

    name: str
    ns: str
    argv: list[str]
    pid: int
    log: Path | None
    popen: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return pid_alive(self.pid)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        stop_pid(self.pid, popen_obj=self.popen, timeout=timeout)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ns": self.ns,
            "argv": self.argv,
            "pid": self.pid,
            "log": str(self.log) if self.log else None,
        }
