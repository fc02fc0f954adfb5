"""Runs one sans-IO mapping session (NAT-PMP or PCP) on the running loop.

The session (:mod:`punchthrough.portmap.session`) decides what to send and when it wants to
wake up; the driver only sends its datagrams to the gateway and keeps one loop timer for it,
so the same session code runs in real and in virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from punchthrough.netio import Address, DatagramSocket
from punchthrough.portmap.session import Event, MappingSession


class SessionDriver:
    """Runs one sans-IO session on the loop: sends its datagrams, fires its timer."""

    def __init__(
        self,
        session: MappingSession,
        sock: DatagramSocket,
        gateway: Address,
        on_event: Callable[[MappingSession, Event], None],
    ) -> None:
        self.session = session
        self._sock = sock
        self._gateway = gateway
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def now(self) -> float:
        return self._loop.time()

    def feed(self, data: bytes) -> None:
        self.flush(self.session.receive(data, self.now()))

    def _fire(self) -> None:
        self._timer = None
        self.flush(self.session.handle_timer(self.now()))

    def flush(self, events: Sequence[Event] = ()) -> None:
        for data in self.session.datagrams_to_send():
            if self._sock.closed:
                break
            self._sock.sendto(data, self._gateway)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.session.timer()
        if when is not None and not self._closed:
            self._timer = self._loop.call_at(when, self._fire)
        for event in events:
            self._on_event(self.session, event)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
