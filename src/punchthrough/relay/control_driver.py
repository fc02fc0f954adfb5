"""The relay's QUIC driver for control connections (moved out of :mod:`.control` for size)."""

from __future__ import annotations

from collections.abc import Callable

from punchthrough.netio import Address
from punchthrough.transport.quic import QuicDriver, validated_peer_address


class ControlDriver(QuicDriver):
    """A QuicDriver that reports when the client's validated address changes (migration)."""

    on_address_change: Callable[[Address], None] | None = None

    def datagram_received(self, data: bytes, addr: Address | None = None) -> None:
        super().datagram_received(data, addr)
        if self.on_address_change is None or self.closed:
            return
        addr0 = validated_peer_address(self.connection)
        if addr0 is not None and addr0 != self.peer_address:
            self.peer_address = addr0
            self.on_address_change(addr0)
