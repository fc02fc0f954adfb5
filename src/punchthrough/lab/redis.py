"""A real ``redis-server`` for tests, benchmarks and the lab: no persistence, its own temp dir,
started and stopped by PID.

``argv_prefix`` runs it elsewhere (``ip netns exec NS`` in the lab). Nothing is written to disk
(``--save '' --appendonly no``) and the working directory is removed on :meth:`stop`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

#: redis-server binds within ~50 ms here; 10 s covers a loaded 2-core machine.
READY_TIMEOUT: Final = 10.0
REDIS_BINARY: Final = "redis-server"


class RedisServerError(RuntimeError):
    """redis-server is missing, or did not start."""


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def redis_available() -> bool:
    return shutil.which(REDIS_BINARY) is not None


class RedisServer:
    """One redis-server process. ``url`` is what relays take (``--directory``)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = None, *, argv_prefix: Sequence[str] = ()
    ) -> None:
        self.host = host
        self.port = port if port is not None else free_tcp_port(host)
        self._prefix = list(argv_prefix)
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> RedisServer:
        binary = shutil.which(REDIS_BINARY)
        if binary is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        self._dir = Path(tempfile.mkdtemp(prefix="pt-redis-"))
        argv = [
            *self._prefix,
            binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--protected-mode", "no",
            "--daemonize", "no",
            "--loglevel", "warning",
        ]  # fmt: skip
        log = open(self._dir / "redis.log", "wb")  # noqa: SIM115 - handed to the child
        try:
            self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        if not self._prefix:
            self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RedisServerError(f"redis-server exited: {self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer within {READY_TIMEOUT:g} s")

    def log_tail(self) -> str:
        if self._dir is None:
            return ""
        try:
            return (self._dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (an outage), keeping the temp dir until :meth:`stop`."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 3 s), then remove the temp dir. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
