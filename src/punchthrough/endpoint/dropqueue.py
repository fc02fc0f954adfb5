"""A bounded receive queue that never blocks the producer.

Datagrams (and streams) are pushed from aioquic's event callback, which must not wait: under
overload the oldest item goes, as stale media is worth less than fresh.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class DropOldestQueue(Generic[T]):
    """A bounded FIFO whose ``put`` never blocks: when full, the oldest item is dropped."""

    def __init__(self, maxlen: int) -> None:
        self._items: deque[T] = deque()
        self._maxlen = maxlen
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self._wake()

    def close(self, exc: BaseException) -> None:
        """Wake getters; they drain what is queued, then get ``exc``."""
        if self._closed is None:
            self._closed = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> T:
        while not self._items:
            if self._closed is not None:
                raise self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()
