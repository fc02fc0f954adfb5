"""The endpoint's public view of its relay transports (``.relaylink``), kept apart from the
endpoint module: what carries each registration now, and every move between transports."""

from __future__ import annotations

from punchthrough.endpoint.relaylink import TransportChange
from punchthrough.endpoint.relays import RelaySet
from punchthrough.netio import Address


class RelayTransports:
    """Mixed into :class:`~punchthrough.endpoint.Endpoint`."""

    _relays: RelaySet

    @property
    def relay_transports(self) -> dict[Address, str]:
        """What carries each registration now: ``udp``, ``tls`` or ``websocket``."""
        return {a: c.transport for a, c in self._relays.clients.items()}

    @property
    def relay_transport_changes(self) -> list[TransportChange]:
        """Every move of a relay registration between transports, and why (empty for relays
        that list only UDP)."""
        links = self._relays.links
        return list(links.changes) if links is not None else []
