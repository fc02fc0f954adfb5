"""UPnP IGD port mapping through async-upnp-client (optional extra ``upnp``, imported lazily).

Unlike NAT-PMP and PCP this speaks SSDP and HTTP on kernel sockets of its own, so it runs only
against real gateways (the lab, the real world), never on the simulator's ``Network``.

Choices, and the library quirks they avoid:

- Discovery is a unicast M-SEARCH to ``gateway:1900`` (UDA 1.1 section 1.3.2), not a multicast
  search of the whole LAN: we already know the gateway, only it may answer, and there is no MX
  wait (``async_search`` sleeps its full timeout; we stop at the first answer).
- The description URL and the control URL must point at the gateway itself; a LAN device
  cannot redirect our HTTP elsewhere.
- ``IgdDevice.async_add_port_mapping`` sends ``NewRemoteHost`` as ``remote_host.exploded``, so
  the wildcard can only be written "0.0.0.0", which IGD gateways (miniupnpd among them) take as
  a specific remote host rather than "any"; the IGD wildcard is the empty string (IGD:1
  WANIPConnection section 2.2.15). It also returns silently when the action is missing, and
  sends ``lease_duration.seconds``. So we call the SOAP actions directly with ``NewRemoteHost=""``.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from punchthrough.netio import Address
from punchthrough.portmap.errors import (
    UPNP,
    PortMapError,
    PortMapRefused,
    PortMapTimeout,
    PortMapUnsupported,
)

#: UDA 1.1 section 1.3.2: SSDP port.
SSDP_PORT: Final = 1900
#: Search target every root device answers (UDA 1.1 section 1.3.2).
SSDP_ST_ROOT: Final = "upnp:rootdevice"
#: WAN connection services that carry AddPortMapping (IGD:1 and IGD:2), in preference order.
WAN_SERVICES: Final = (
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
)
#: UPnP error 718 ConflictInMappingEntry (IGD:1 WANIPConnection section 2.4.16).
UPNP_CONFLICT: Final = 718
#: UPnP error 725 OnlyPermanentLeasesSupported (IGD:1 WANIPConnection section 2.4.16).
UPNP_ONLY_PERMANENT: Final = 725
#: Description used for our mappings (shows up in the router's UI).
DESCRIPTION: Final = "punchthrough"


def upnp_available() -> bool:
    """Whether the optional ``async-upnp-client`` dependency is installed."""
    try:
        import async_upnp_client  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class UpnpMapping:
    external: Address
    lifetime: int  # 0 = permanent (the gateway would not take a lease)


def _host_of(url: str) -> str | None:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host


def _wrap(exc: BaseException, what: str) -> PortMapError:
    code = getattr(exc, "error_code", None)
    return PortMapRefused(
        f"UPnP {what} failed: {exc}", protocol=UPNP, code=code if isinstance(code, int) else None
    )


class UpnpClient:
    """One IGD (the gateway), found by :meth:`probe`; then :meth:`map` and :meth:`delete`."""

    def __init__(self, gateway: str, local_ip: str, *, http_timeout: float = 2.0) -> None:
        ipaddress.IPv4Address(gateway)
        self.gateway = gateway
        self.local_ip = local_ip
        self.http_timeout = http_timeout
        self.location: str | None = None
        self.external_ip: str | None = None
        self._service: Any = None  # async_upnp_client UpnpService

    async def probe(self, timeout: float) -> str:
        """Find the gateway's IGD and ask its external address; returns the address.

        Raises :class:`PortMapTimeout` (no SSDP answer), :class:`PortMapUnsupported` (no IGD
        WAN connection service) or :class:`PortMapRefused`.
        """
        try:
            async with asyncio.timeout(timeout):
                self.location = await self._search(timeout)
                self._service = await self._wan_service(self.location)
                result = await self._service.action("GetExternalIPAddress").async_call()
        except TimeoutError:
            raise PortMapTimeout(
                f"UPnP: no IGD answer from {self.gateway} in {timeout:.2f}s", protocol=UPNP
            ) from None
        except PortMapError:
            raise
        except ImportError as exc:
            raise PortMapUnsupported(f"UPnP needs the 'upnp' extra: {exc}", protocol=UPNP) from None
        except Exception as exc:  # any library/HTTP/XML failure is one typed error
            raise _wrap(exc, "probe") from exc
        ip = result.get("NewExternalIPAddress")
        if not isinstance(ip, str) or not ip:
            raise PortMapRefused("UPnP: gateway reported no external address", protocol=UPNP)
        self.external_ip = ip
        return ip

    async def map(self, internal_port: int, lifetime: int, timeout: float) -> UpnpMapping:
        """AddPortMapping UDP external=internal port; a permanent lease if that is all it takes."""
        if self._service is None or self.external_ip is None:
            raise RuntimeError("UPnP: probe before mapping")
        try:
            async with asyncio.timeout(timeout):
                try:
                    await self._add(internal_port, lifetime)
                except Exception as exc:
                    if getattr(exc, "error_code", None) != UPNP_ONLY_PERMANENT:
                        raise
                    lifetime = 0
                    await self._add(internal_port, 0)
        except TimeoutError:
            raise PortMapTimeout("UPnP: AddPortMapping timed out", protocol=UPNP) from None
        except Exception as exc:
            raise _wrap(exc, "AddPortMapping") from exc
        return UpnpMapping((self.external_ip, internal_port), lifetime)

    async def delete(self, external_port: int, timeout: float) -> None:
        if self._service is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._service.action("DeletePortMapping").async_call(
                    NewRemoteHost="", NewExternalPort=external_port, NewProtocol="UDP"
                )
        except TimeoutError:
            raise PortMapTimeout("UPnP: DeletePortMapping timed out", protocol=UPNP) from None
        except Exception as exc:
            raise _wrap(exc, "DeletePortMapping") from exc

    async def _add(self, internal_port: int, lifetime: int) -> None:
        await self._service.action("AddPortMapping").async_call(
            NewRemoteHost="",  # the IGD wildcard (see the module docstring)
            NewExternalPort=internal_port,
            NewProtocol="UDP",
            NewInternalPort=internal_port,
            NewInternalClient=self.local_ip,
            NewEnabled=True,
            NewPortMappingDescription=DESCRIPTION,
            NewLeaseDuration=lifetime,
        )

    async def _search(self, timeout: float) -> str:
        from async_upnp_client.search import SsdpSearchListener

        found: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        def on_response(headers: Any) -> None:
            location = headers.get("location")
            if (
                isinstance(location, str)
                and _host_of(location) == self.gateway
                and not found.done()
            ):
                found.set_result(location)

        listener = SsdpSearchListener(
            callback=on_response,
            source=(self.local_ip, 0),
            target=(self.gateway, SSDP_PORT),
            timeout=max(1, round(timeout)),
            search_target=SSDP_ST_ROOT,
            connect_callback=lambda: listener.async_search(),
        )
        await listener.async_start()
        try:
            return await found
        finally:
            listener.async_stop()

    async def _wan_service(self, location: str) -> Any:
        from async_upnp_client.aiohttp import AiohttpRequester
        from async_upnp_client.client_factory import UpnpFactory

        factory = UpnpFactory(
            AiohttpRequester(timeout=max(1, round(self.http_timeout))), non_strict=True
        )
        device = await factory.async_create_device(location)
        services = {s.service_type: s for s in device.all_services}
        for kind in WAN_SERVICES:
            service = services.get(kind)
            if service is None or not service.has_action("AddPortMapping"):
                continue
            if _host_of(service.control_url) != self.gateway:
                raise PortMapRefused(
                    f"UPnP control URL {service.control_url} is not on the gateway {self.gateway}",
                    protocol=UPNP,
                )
            return service
        raise PortMapUnsupported("UPnP device has no WAN connection service", protocol=UPNP)
