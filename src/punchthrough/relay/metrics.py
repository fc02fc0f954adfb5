"""``punchthrough relay --metrics ADDR``: Prometheus text exposition and ``/healthz``.

A deliberately tiny HTTP/1.0 responder on asyncio streams (no web framework for two read-only
pages): one request per connection, the request line read with a size and time bound, then the
answer and close. ``GET /metrics`` renders :attr:`RelayServer.stats` in the Prometheus text
format 0.0.4 (counters and gauges, dropped frames labelled by reason) plus the process's CPU
seconds; ``GET /healthz`` answers 200 while the relay serves (the directory's state is in the
body: a relay with Redis down still serves its own clients, so it stays healthy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

log = logging.getLogger(__name__)

#: Bounds on one HTTP request: its head, and how long the client may take to send it.
MAX_REQUEST_HEAD: Final = 8192
REQUEST_TIMEOUT: Final = 5.0
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Stat keys exported as gauges (current values); everything else is a counter.
GAUGES: Final = frozenset({"clients", "connections"})
#: ``dropped_<reason>`` counters become ``punchthrough_relay_frames_dropped_total{reason=...}``.
DROPPED_PREFIX: Final = "dropped_"

HELP: Final = {
    "clients": "Registered clients.",
    "connections": "Open control connections.",
    "registrations": "Registrations accepted.",
    "frames_out": "Relay frames forwarded.",
    "bytes_out": "Payload bytes forwarded.",
    "lookups": "Peer lookups answered.",
    "directory_lookups": "Lookups of peers not registered here (asked of the directory).",
    "directory_misses": "Directory lookups that found nothing.",
    "directory_errors": "Directory lookups that failed (clients got 503).",
}


def render(stats: Mapping[str, int], *, cpu_seconds: float | None = None) -> str:
    """Prometheus text for a relay's stats."""
    lines: list[str] = []
    dropped: list[tuple[str, int]] = []
    for key in sorted(stats):
        value = stats[key]
        if key.startswith(DROPPED_PREFIX):
            dropped.append((key[len(DROPPED_PREFIX) :], value))
            continue
        gauge = key in GAUGES
        name = f"punchthrough_relay_{key}" + ("" if gauge else "_total")
        if key in HELP:
            lines.append(f"# HELP {name} {HELP[key]}")
        lines.append(f"# TYPE {name} {'gauge' if gauge else 'counter'}")
        lines.append(f"{name} {value}")
    if dropped:
        name = "punchthrough_relay_frames_dropped_total"
        lines.append(f"# HELP {name} Relay frames dropped, by reason.")
        lines.append(f"# TYPE {name} counter")
        lines.extend(f'{name}{{reason="{reason}"}} {value}' for reason, value in dropped)
    if cpu_seconds is not None:
        lines.append("# HELP process_cpu_seconds_total User and system CPU time spent.")
        lines.append("# TYPE process_cpu_seconds_total counter")
        lines.append(f"process_cpu_seconds_total {cpu_seconds:.3f}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``/metrics`` and ``/healthz`` from ``stats()`` and ``health()`` callbacks."""

    def __init__(
        self,
        stats: Callable[[], Mapping[str, int]],
        health: Callable[[], tuple[bool, str]],
    ) -> None:
        self._stats = stats
        self._health = health
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port)
        sock = self._server.sockets[0]
        name = sock.getsockname()
        return (str(name[0]), int(name[1]))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, body, ctype = self._answer(head[:MAX_REQUEST_HEAD])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, body, ctype = "400 Bad Request", "bad request\n", "text/plain"
        except Exception:
            log.exception("metrics request failed")
            status, body, ctype = "500 Internal Server Error", "error\n", "text/plain"
        data = body.encode()
        writer.write(
            f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data
        )
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await writer.wait_closed()

    def _answer(self, head: bytes) -> tuple[str, str, str]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "GET only\n", "text/plain"
        path = parts[1].split(b"?", 1)[0]
        if path == b"/metrics":
            return "200 OK", render(self._stats(), cpu_seconds=time.process_time()), CONTENT_TYPE
        if path == b"/healthz":
            ok, text = self._health()
            return ("200 OK" if ok else "503 Service Unavailable"), text + "\n", "text/plain"
        return "404 Not Found", "not found\n", "text/plain"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
