"""``PortMapper``: probe the gateway (PCP, NAT-PMP, UPnP at once), map one UDP port, keep it
renewed, delete it on close.

The NAT-PMP and PCP sessions are sans-IO (:mod:`punchthrough.portmap.session`); this module is
their thin asyncio adapter: one control socket from the given :class:`~punchthrough.netio.Network`
(so the simulator's gateways answer exactly like a real one), one loop timer per session
(:mod:`.driver`), and futures for the caller's ``await``. UPnP (kernel sockets, lab and real
world only, :mod:`.upnp_lease`) is opt-in.

    async with PortMapper(network, gateway="10.0.1.1", internal_port=sock_port,
                          local_ip="10.0.1.2") as mapper:
        mapper.mapping      # PortMapping(protocol, external, lifetime, double_nat) or None
        mapper.candidate    # the external endpoint to offer peers, None on double NAT
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Callable
from types import TracebackType
from typing import Final

from punchthrough.netio import Address, DatagramSocket, Network, UdpNetwork
from punchthrough.portmap.driver import SessionDriver
from punchthrough.portmap.errors import (
    NAT_PMP,
    PCP,
    UPNP,
    PortMapError,
    PortMapTimeout,
)
from punchthrough.portmap.gateway import is_double_nat_address
from punchthrough.portmap.mapping import PortMapping, ProbeReport
from punchthrough.portmap.natpmp import NatPmpSession
from punchthrough.portmap.natpmp_wire import NATPMP_PORT
from punchthrough.portmap.pcp import PcpSession, route
from punchthrough.portmap.session import (
    DEFAULT_LIFETIME,
    Deleted,
    Event,
    Expired,
    Failed,
    GatewayReset,
    Mapped,
    MappingSession,
    Operation,
    PcpSchedule,
    Probed,
)
from punchthrough.portmap.upnp_lease import UpnpLease

log = logging.getLogger(__name__)

#: How long the probe waits for gateways to answer. A gateway on the LAN answers in a few ms;
#: NAT-PMP gets its 250 ms retransmission (RFC 6886 3.1) inside this window.
DEFAULT_PROBE_TIMEOUT: Final = 0.5
#: Budget for one MAP request (retransmissions included) once the gateway has answered a probe.
DEFAULT_REQUEST_TIMEOUT: Final = 2.0
#: Budget for the delete on close: closing must not hang on a gateway that went away.
DEFAULT_DELETE_TIMEOUT: Final = 1.0
#: Mapping preference: PCP (nonce-protected, RFC 6887 supersedes 6886), NAT-PMP, then UPnP.
PREFERENCE: Final = (PCP, NAT_PMP, UPNP)


class PortMapper:
    """Port mapping for one internal UDP port on one gateway (see the module docstring).

    ``gateway``: the gateway's LAN address (see :func:`~punchthrough.portmap.gateway.
    default_gateway` for the real machine). ``local_ip``: our address on the gateway's LAN;
    PCP needs it (RFC 6887 section 8.1), so without it PCP is skipped. ``upnp``: also try UPnP
    IGD (kernel sockets: never on a simulated network). ``on_change`` hears about every change
    of :attr:`mapping` after :meth:`start` returns (re-map after a gateway reboot: new external
    port; expiry: ``None``).
    """

    def __init__(
        self,
        network: Network,
        gateway: str,
        internal_port: int,
        *,
        local_ip: str | None = None,
        lifetime: int = DEFAULT_LIFETIME,
        upnp: bool = False,
        nat_pmp: bool = True,
        pcp: bool = True,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        delete_timeout: float = DEFAULT_DELETE_TIMEOUT,
        rng: random.Random | None = None,
        on_change: Callable[[PortMapping | None], None] | None = None,
    ) -> None:
        ipaddress.IPv4Address(gateway)  # ValueError now rather than a silent non-answer later
        if not 0 < internal_port <= 0xFFFF:
            raise ValueError(f"internal port {internal_port} out of range")
        if probe_timeout <= 0 or request_timeout <= 0 or delete_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if upnp and not isinstance(network, UdpNetwork):
            # async-upnp-client opens kernel sockets of its own: on a simulated network it would
            # send real SSDP/HTTP from this machine to the simulated gateway's address
            raise ValueError("UPnP needs the kernel network (UdpNetwork), not a simulated one")
        self.network = network
        self.gateway = gateway
        self.internal_port = internal_port
        self.local_ip = local_ip
        self.lifetime = lifetime
        self.want = {NAT_PMP: nat_pmp, PCP: pcp, UPNP: upnp}
        self.probe_timeout = probe_timeout
        self.request_timeout = request_timeout
        self.delete_timeout = delete_timeout
        self.on_change = on_change
        self._rng = rng if rng is not None else random.Random()
        self.report = ProbeReport()
        self.mapping: PortMapping | None = None
        self.gateway_resets = 0
        self.stats: dict[str, int] = {"foreign": 0, "unroutable": 0}
        self._sock: DatagramSocket | None = None
        self._drivers: dict[str, SessionDriver] = {}
        self._waiters: dict[tuple[str, Operation], asyncio.Future[Event]] = {}
        self._upnp = UpnpLease(gateway, internal_port, lifetime, self._upnp_lost)
        self._nonce_rng = rng  # None: PCP nonces come from `secrets`
        self._closed = False

    # -- public ---------------------------------------------------------------------------------

    @property
    def candidate(self) -> Address | None:
        """The mapped external endpoint to offer peers; ``None`` if none or double NAT."""
        m = self.mapping
        return m.external if m is not None and not m.double_nat else None

    @property
    def double_nat(self) -> bool:
        if self.mapping is not None:
            return self.mapping.double_nat
        ip = self.report.external_ip
        return ip is not None and is_double_nat_address(ip)

    def session_stats(self) -> dict[str, dict[str, int]]:
        return {name: dict(d.session.stats) for name, d in self._drivers.items()}

    async def __aenter__(self) -> PortMapper:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> PortMapping | None:
        """Probe, then map with the best protocol that answered; ``None`` if none could."""
        await self.probe()
        return await self.map()

    async def probe(self) -> ProbeReport:
        """Ask all enabled protocols at once; waits at most ``probe_timeout`` (+ UPnP's HTTP)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._open()
        tasks: dict[str, asyncio.Future[Event | str]] = {}
        for name, driver in self._drivers.items():
            tasks[name] = asyncio.ensure_future(
                self._op(
                    name, Operation.PROBE, lambda s, now: s.probe(now, self.probe_timeout), driver
                )
            )
        if self.want[UPNP]:
            tasks[UPNP] = asyncio.ensure_future(self._upnp.probe(self.local_ip, self.probe_timeout))
        try:
            results = await asyncio.gather(*tasks.values(), return_exceptions=True)
        finally:
            for t in tasks.values():
                t.cancel()
        for name, res in zip(tasks, results, strict=True):
            if isinstance(res, Probed):
                setattr(self.report, name.replace("-", "_"), True)
                if res.external_ip is not None:
                    self.report.external_ip = res.external_ip
            elif isinstance(res, str):
                self.report.upnp = True
                self.report.external_ip = self.report.external_ip or res
            elif isinstance(res, Failed):
                self.report.errors[name] = str(res.error)
            elif isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                self.report.errors[name] = str(res)
        self.report.duration = loop.time() - started
        return self.report

    async def map(self) -> PortMapping | None:
        """Map with the first protocol (in :data:`PREFERENCE`) that answered the probe.

        A double-NAT result is deleted again at once and reported (``mapping.double_nat``).
        """
        for name in PREFERENCE:
            if not getattr(self.report, name.replace("-", "_")):
                continue
            try:
                mapping = await self._map_with(name)
            except PortMapError as exc:
                self.report.errors[name] = str(exc)
                log.debug("port mapping with %s failed: %s", name, exc)
                continue
            self.mapping = mapping
            if mapping.double_nat:
                # Useless as a candidate: free it now, keep the report (mapping.double_nat).
                await self._delete_all()
            return mapping
        return None

    async def close(self) -> None:
        """Delete the mapping (bounded by ``delete_timeout``), then release everything."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._delete_all()
        finally:
            self._set_mapping(None)
            for d in self._drivers.values():
                d.close()
            for fut in self._waiters.values():
                fut.cancel()
            if self._sock is not None:
                self._sock.close()

    # -- internals ------------------------------------------------------------------------------

    async def _open(self) -> None:
        if self._sock is not None or self._closed:
            return
        if not (self.want[NAT_PMP] or self.want[PCP]):
            return
        self._sock = await self.network.bind(self.local_ip or "0.0.0.0", 0)
        self._sock.set_receiver(self._receive)
        gw = (self.gateway, NATPMP_PORT)
        if self.want[PCP]:
            if self.local_ip is None:
                self.report.errors[PCP] = "local address unknown (PCP needs it): skipped"
            else:
                pcp = PcpSession(
                    self.internal_port,
                    self.local_ip,
                    lifetime=self.lifetime,
                    schedule=PcpSchedule(self._rng),
                    nonce=self._nonce_rng.randbytes(12) if self._nonce_rng is not None else None,
                )
                self._drivers[PCP] = SessionDriver(pcp, self._sock, gw, self._on_event)
        if self.want[NAT_PMP]:
            nat = NatPmpSession(self.internal_port, lifetime=self.lifetime)
            self._drivers[NAT_PMP] = SessionDriver(nat, self._sock, gw, self._on_event)

    def _receive(self, data: bytes, addr: Address) -> None:
        if addr != (self.gateway, NATPMP_PORT):
            self.stats["foreign"] += 1
            return
        name = route(data)
        driver = self._drivers.get(name) if name is not None else None
        if driver is None:
            self.stats["unroutable"] += 1
            return
        driver.feed(data)

    async def _op(
        self,
        name: str,
        op: Operation,
        start: Callable[[MappingSession, float], object],
        driver: SessionDriver,
    ) -> Event:
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        old = self._waiters.pop((name, op), None)
        if old is not None:
            old.cancel()
        self._waiters[(name, op)] = fut
        start(driver.session, driver.now())
        driver.flush()
        try:
            return await fut
        finally:
            if self._waiters.get((name, op)) is fut:
                del self._waiters[(name, op)]

    def _resolve(self, name: str, op: Operation, event: Event) -> bool:
        fut = self._waiters.get((name, op))
        if fut is None or fut.done():
            return False
        fut.set_result(event)
        return True

    def _on_event(self, session: MappingSession, event: Event) -> None:
        name = session.protocol
        if isinstance(event, Probed):
            self._resolve(name, Operation.PROBE, event)
        elif isinstance(event, Failed):
            if not self._resolve(name, event.operation, event):
                log.info("port mapping %s %s failed: %s", name, event.operation.value, event.error)
        elif isinstance(event, Deleted):
            self._resolve(name, Operation.DELETE, event)
        elif isinstance(event, GatewayReset):
            self.gateway_resets += 1
            log.info(
                "%s gateway %s lost its state (epoch %d, expected ~%.0f): re-mapping",
                name,
                self.gateway,
                event.epoch,
                event.expected,
            )
        elif isinstance(event, Mapped):
            if self._resolve(name, Operation.MAP, event):
                return
            if self.mapping is not None and self.mapping.protocol == name:
                self._set_mapping(self._mapping_from(name, event))
        elif (
            isinstance(event, Expired)
            and self.mapping is not None
            and (self.mapping.protocol == name)
        ):
            self._set_mapping(None)

    def _set_mapping(self, mapping: PortMapping | None) -> None:
        changed = mapping != self.mapping
        self.mapping = mapping
        if changed and self.on_change is not None:
            try:
                self.on_change(mapping)
            except Exception:
                log.exception("port mapping on_change callback failed")

    def _upnp_lost(self) -> None:
        """The UPnP lease ran out (renewals kept failing)."""
        if self.mapping is not None and self.mapping.protocol == UPNP:
            self._set_mapping(None)

    @staticmethod
    def _mapping_from(name: str, event: Mapped) -> PortMapping:
        return PortMapping(
            name, event.external, event.lifetime, is_double_nat_address(event.external[0])
        )

    async def _map_with(self, name: str) -> PortMapping:
        if name == UPNP:
            return await self._upnp.map(self.request_timeout)
        driver = self._drivers[name]
        res = await self._op(
            name, Operation.MAP, lambda s, now: s.map(now, self.request_timeout), driver
        )
        if isinstance(res, Failed):
            raise res.error
        assert isinstance(res, Mapped)
        return self._mapping_from(name, res)

    async def _delete_all(self) -> None:
        """Delete on every protocol that may hold a mapping; never raises PortMapError.

        A session that never sent a MAP resolves at once without sending anything."""
        self._upnp.stop_renewing()
        jobs = [self._delete_one(name, driver) for name, driver in self._drivers.items()]
        if self._upnp.mapped is not None:
            jobs.append(self._upnp.delete(self._upnp.mapped, self.delete_timeout))
        await asyncio.gather(*jobs)

    async def _delete_one(self, name: str, driver: SessionDriver) -> None:
        def start(s: MappingSession, now: float) -> None:
            if not s.delete(now, self.delete_timeout):
                self._resolve(name, Operation.DELETE, Deleted())

        res = await self._op(name, Operation.DELETE, start, driver)
        if isinstance(res, Failed):
            log.info("port mapping %s delete failed: %s", name, res.error)


__all__ = ["PREFERENCE", "PortMapTimeout", "PortMapper", "PortMapping", "ProbeReport"]
