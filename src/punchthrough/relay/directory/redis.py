"""The fleet directory in Redis (``punchthrough relay --directory redis://host:port/db``).

One key per peer, ``pt:home:<peer id hex>``, holding ``{"r": relay id, "a": [[ip, port], ...]}``
with a TTL (``SET ... PX``): Redis expires what no relay refreshes. Publishing is one pipelined
round trip for any number of peers (a relay refreshes all of its clients at once); withdrawing is
a compare-and-delete script, so a relay that forgets a client never deletes the entry of a newer
home elsewhere. Scaling and outages: the README (relay fleet).

Every operation is bounded by ``timeout`` (socket and overall) and never retried here: when
Redis is down a lookup fails within the timeout with :class:`DirectoryUnavailable` and the
relay answers 503, which is what a caller needs (retrying belongs to the caller, who knows
whether it is in a hurry).
"""

from __future__ import annotations

import asyncio
from typing import Final

import msgspec
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from punchthrough.identity import PeerId
from punchthrough.relay.directory.base import DIRECTORY_TIMEOUT, DirectoryUnavailable, HomeEntry

KEY_PREFIX: Final = "pt:home:"

#: Delete KEYS[1] only if its relay id is ARGV[1] (Redis ships cjson in its Lua).
_WITHDRAW: Final = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, doc = pcall(cjson.decode, v)
if ok and type(doc) == 'table' and doc['r'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class _Doc(msgspec.Struct, frozen=True):
    r: str
    a: list[tuple[str, int]]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Doc)


def key_for(peer_id: PeerId) -> str:
    return KEY_PREFIX + peer_id.raw.hex()


def encode_entry(entry: HomeEntry) -> bytes:
    return _encoder.encode(_Doc(entry.relay_id, [(h, p) for h, p in entry.addresses]))


def decode_entry(data: bytes) -> HomeEntry | None:
    """An entry, or None for a value that is not one of ours (counted by the caller)."""
    try:
        doc = _decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return HomeEntry(doc.r, tuple((h, int(p)) for h, p in doc.a))


class RedisDirectory:
    """A :class:`~.base.Directory` on one Redis server (or a proxy/Sentinel master address)."""

    def __init__(self, client: Redis, url: str, timeout: float) -> None:
        self._redis = client
        self.url = url
        self.timeout = timeout
        self._withdraw = client.register_script(_WITHDRAW)
        self.stats = {"publishes": 0, "lookups": 0, "withdraws": 0, "bad_values": 0}

    @classmethod
    def from_url(cls, url: str, *, timeout: float = DIRECTORY_TIMEOUT) -> RedisDirectory:
        """No I/O yet: the first operation connects (and fails fast if it cannot)."""
        client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
        )
        return cls(client, url, timeout)

    async def _bounded(self, what: str, coro: object) -> object:
        try:
            async with asyncio.timeout(self.timeout):
                return await coro  # type: ignore[misc]
        except TimeoutError:
            raise DirectoryUnavailable(
                f"{what}: no answer from {self.url} within {self.timeout:g} s"
            ) from None
        except (RedisError, OSError) as exc:
            raise DirectoryUnavailable(f"{what}: {self.url}: {exc}") from None

    async def publish(self, entries: dict[PeerId, HomeEntry], ttl: float) -> None:
        if not entries:
            return
        ms = max(1, int(ttl * 1000))
        pipe = self._redis.pipeline(transaction=False)
        for peer, entry in entries.items():
            pipe.set(key_for(peer), encode_entry(entry), px=ms)
        await self._bounded("publish", pipe.execute())
        self.stats["publishes"] += len(entries)

    async def lookup(self, peer_id: PeerId) -> HomeEntry | None:
        value = await self._bounded("lookup", self._redis.get(key_for(peer_id)))
        self.stats["lookups"] += 1
        if value is None:
            return None
        entry = decode_entry(bytes(value)) if isinstance(value, bytes | bytearray) else None
        if entry is None:
            self.stats["bad_values"] += 1
        return entry

    async def withdraw(self, peer_id: PeerId, relay_id: str) -> bool:
        done = await self._bounded(
            "withdraw", self._withdraw(keys=[key_for(peer_id)], args=[relay_id])
        )
        if done:
            self.stats["withdraws"] += 1
        return bool(done)

    async def ping(self) -> None:
        """Raises :class:`DirectoryUnavailable` unless Redis answers (health checks)."""
        await self._bounded("ping", self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
