"""The UPnP IGD side of a port mapper: find the IGD, add our mapping, keep it, delete it.

UPnP has no renew message, so the lease is kept by adding the mapping again at half its
lifetime (as NAT-PMP renews). :mod:`punchthrough.portmap.upnp` (and through it the optional
``async-upnp-client``) is imported only when UPnP is actually asked for.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from punchthrough.portmap.errors import UPNP, PortMapError, PortMapTimeout, PortMapUnsupported
from punchthrough.portmap.gateway import is_double_nat_address
from punchthrough.portmap.mapping import PortMapping
from punchthrough.portmap.session import MIN_RENEW_INTERVAL, RENEW_FRACTION

log = logging.getLogger(__name__)


class UpnpLease:
    """Our mapping of ``internal_port`` on ``gateway``'s IGD. ``on_lost`` is called when the
    lease ran out because renewals kept failing."""

    def __init__(
        self, gateway: str, internal_port: int, lifetime: int, on_lost: Callable[[], None]
    ) -> None:
        self.gateway = gateway
        self.internal_port = internal_port
        self.lifetime = lifetime
        self._on_lost = on_lost
        self._client: object | None = None  # UpnpClient, typed loosely to keep the import lazy
        #: External port of our mapping (None: none to delete).
        self.mapped: int | None = None
        self._renewer: asyncio.Task[None] | None = None

    async def probe(self, local_ip: str | None, timeout: float) -> str:
        """Find the gateway's IGD; returns its external address."""
        from punchthrough.portmap.gateway import local_ip_towards
        from punchthrough.portmap.upnp import UpnpClient, upnp_available

        if not upnp_available():
            raise PortMapUnsupported(
                "async-upnp-client is not installed (extra 'upnp')", protocol=UPNP
            )
        local = local_ip or local_ip_towards(self.gateway)
        if local is None:
            raise PortMapError("UPnP: no local address towards the gateway", protocol=UPNP)
        client = UpnpClient(self.gateway, local)
        ip = await client.probe(timeout)
        self._client = client
        return ip

    async def map(self, request_timeout: float) -> PortMapping:
        from punchthrough.portmap.upnp import UpnpClient

        client = self._client
        assert isinstance(client, UpnpClient)
        try:
            m = await client.map(self.internal_port, self.lifetime, request_timeout)
        except PortMapTimeout:
            # a timed-out add may still have landed: delete it on close. A refused add (e.g.
            # 718 ConflictInMappingEntry: another host owns the port) must NOT be deleted by us.
            self.mapped = self.internal_port
            raise
        self.mapped = m.external[1]
        if m.lifetime > 0 and self._renewer is None:
            self._renewer = asyncio.ensure_future(self._renew(client, m.lifetime, request_timeout))
        return PortMapping(UPNP, m.external, m.lifetime, is_double_nat_address(m.external[0]))

    async def _renew(self, client: object, lifetime: int, request_timeout: float) -> None:
        """UPnP has no renew message: AddPortMapping again at half the lease (as NAT-PMP)."""
        from punchthrough.portmap.upnp import UpnpClient

        assert isinstance(client, UpnpClient)
        loop = asyncio.get_running_loop()
        expires = loop.time() + lifetime
        wait = max(MIN_RENEW_INTERVAL, lifetime * RENEW_FRACTION)
        while True:
            await asyncio.sleep(wait)
            try:
                m = await client.map(self.internal_port, self.lifetime, request_timeout)
            except PortMapError as exc:
                left = expires - loop.time()
                log.info("UPnP renewal failed (%s); %.0f s left", exc, left)
                if left < 2 * MIN_RENEW_INTERVAL:
                    self._on_lost()
                    return
                wait = left * RENEW_FRACTION
                continue
            if m.lifetime == 0:
                return
            expires = loop.time() + m.lifetime
            wait = max(MIN_RENEW_INTERVAL, m.lifetime * RENEW_FRACTION)

    def stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            self._renewer = None

    async def delete(self, external_port: int, timeout: float) -> None:
        from punchthrough.portmap.upnp import UpnpClient

        client = self._client
        assert isinstance(client, UpnpClient)
        try:
            await client.delete(external_port, timeout)
        except PortMapError as exc:
            log.info("UPnP delete failed: %s", exc)
        self.mapped = None
