"""Peer id -> home relay for a relay fleet (:mod:`.base`), in memory or in Redis."""

from __future__ import annotations

from punchthrough.relay.directory.base import (
    DEFAULT_TTL,
    DIRECTORY_TIMEOUT,
    Directory,
    DirectoryUnavailable,
    HomeEntry,
)
from punchthrough.relay.directory.memory import MemoryDirectory


def open_directory(spec: str | None, *, timeout: float = DIRECTORY_TIMEOUT) -> Directory:
    """``None``/``"memory"``: in memory; ``redis://...``/``rediss://...``: Redis (imported only
    then, so a single relay never needs the redis package)."""
    if spec is None or spec == "memory":
        return MemoryDirectory()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        from punchthrough.relay.directory.redis import RedisDirectory

        return RedisDirectory.from_url(spec, timeout=timeout)
    raise ValueError(f"directory {spec!r}: use 'memory' or a redis:// URL")


__all__ = [
    "DEFAULT_TTL",
    "DIRECTORY_TIMEOUT",
    "Directory",
    "DirectoryUnavailable",
    "HomeEntry",
    "MemoryDirectory",
    "open_directory",
]
