"""netcheck: what does the NAT in front of this host do? (phase A)

One run answers, from one main socket plus one fresh socket for filtering:

1. Binding to every configured server at once (in list order): UDP works? public IP? Which
   servers do RFC 5780 (OTHER-ADDRESS)?
2. Binding to the RFC 5780 server's other endpoints (B,P), (B,P'), (A,P') from the same socket:
   these plus step 1 are the port-allocation samples (allocation order = send order) and the
   mapping test (RFC 5780 section 4.3).
3. Concurrently: the filtering tests (RFC 5780 section 4.4, CHANGE-REQUEST from a fresh socket so
   step 1-2's flows cannot open its filter) and the hairpin test (section 4.5).
4. From the start, concurrently with all of the above when a gateway is given: port mapping
   (PCP, NAT-PMP, optionally UPnP) of a spare socket's port, deleted again before returning. A
   spare socket, not the main one, so that an explicit mapping cannot change what steps 1-3
   observe. The probe is capped below the filtering wait, so a silent gateway costs nothing.

Filtering tests succeed by an answer and fail by silence, so their wait is what a run costs: it is
sized from the RTTs measured in step 1 (see :func:`~punchthrough.nat.filtering.filter_wait`), not
a fixed guess. The report's verdicts come with the NAT summary the stage planner takes
(``report.summary``), from the classifier the endpoint's candidate gathering uses too
(:mod:`punchthrough.nat.classify`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from punchthrough.nat.allocation import (
    DEFAULT_PORT_RANGE,
    AllocationResult,
    PortAllocation,
    classify_port_allocation,
)
from punchthrough.nat.behavior import Behavior, Sample, filtering_behavior
from punchthrough.nat.classify import (
    NatObservations,
    Purpose,
    classify_allocation,
    classify_mapping,
    classify_nat,
)
from punchthrough.nat.filtering import filter_wait, filtering_probes
from punchthrough.nat.netcheck6 import BIND_IPV6, Ipv6Report, is_ipv6, run_netcheck6, translated
from punchthrough.nat.probe import PROBE_RTO, sample_mappings
from punchthrough.nat.summary import NatSummary, usable_protocols
from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.portmap import PortMapper
from punchthrough.portmap.mapper import DEFAULT_PROBE_TIMEOUT
from punchthrough.stun import BindingResult, StunClient, StunError

log = logging.getLogger(__name__)


class NetcheckError(Exception):
    """netcheck cannot run at all (bad configuration, not a network outcome)."""


def _fmt(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class NetcheckReport:
    """Everything netcheck learned; ``to_json`` is the stable machine-readable form."""

    udp: bool = False
    public_ip: str | None = None
    local_address: Address | None = None
    mapped_endpoints: list[str] = field(default_factory=list)
    sample_destinations: list[str] = field(default_factory=list)
    mapping: Behavior = Behavior.UNKNOWN
    filtering: Behavior = Behavior.UNKNOWN
    allocation: AllocationResult = field(default_factory=lambda: classify_port_allocation(()))
    preserves_port: bool | None = None
    hairpinning: bool | None = None
    rfc5780_server: str | None = None
    duration_ms: float = 0.0
    errors: list[str] = field(default_factory=list)
    #: Port mapping: the gateway asked (None = not probed), who answered, what was mapped.
    port_mapping_gateway: str | None = None
    port_mapping: dict[str, bool] = field(
        default_factory=lambda: {"nat_pmp": False, "pcp": False, "upnp": False}
    )
    port_mapping_external: str | None = None
    double_nat: bool | None = None
    #: The NAT as the stage planner sees it (None: the run failed). Not part of ``to_json``.
    summary: NatSummary | None = None
    #: IPv6 (:mod:`punchthrough.nat.netcheck6`), when IPv6 STUN servers were given.
    ipv6: Ipv6Report | None = None

    def to_json(self) -> dict[str, object]:
        out = self._ipv4_json()
        if self.ipv6 is not None:
            out["ipv6"] = self.ipv6.to_json()
        return out

    def _ipv4_json(self) -> dict[str, object]:
        return {
            "udp": self.udp,
            "public_ip": self.public_ip,
            "local_address": _fmt(self.local_address) if self.local_address else None,
            "mapped_endpoints": list(self.mapped_endpoints),
            "sample_destinations": list(self.sample_destinations),
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "port_allocation": self.allocation.to_json(),
            "preserves_port": self.preserves_port,
            "hairpinning": self.hairpinning,
            "rfc5780_server": self.rfc5780_server,
            "duration_ms": round(self.duration_ms, 1),
            "errors": list(self.errors),
            "port_mapping_gateway": self.port_mapping_gateway,
            "port_mapping": dict(self.port_mapping),
            "port_mapping_external": self.port_mapping_external,
            "double_nat": self.double_nat,
        }

    @property
    def nat_type(self) -> str:
        """A one-line human summary, e.g. ``EIM+APDF, port-preserving``."""
        if not self.udp:
            return "UDP blocked"
        abbrev = {
            Behavior.ENDPOINT_INDEPENDENT: "EI",
            Behavior.ADDRESS_DEPENDENT: "AD",
            Behavior.ADDRESS_AND_PORT_DEPENDENT: "APD",
            Behavior.UNKNOWN: "?",
        }
        kind = self.allocation.kind.value
        if self.allocation.kind is PortAllocation.SEQUENTIAL:
            kind += f" (delta {self.allocation.delta:+d})"
        return f"{abbrev[self.mapping]}M+{abbrev[self.filtering]}F, {kind}"


async def _binding_or_none(
    client: StunClient, dest: Address, timeout: float, **kw: bool
) -> BindingResult | None:
    try:
        return await client.binding(dest, timeout=timeout, **kw)
    except StunError as exc:
        log.debug("binding to %s failed: %s", _fmt(dest), exc)
        return None


async def _port_mapping(
    network: Network,
    report: NetcheckReport,
    gateway: str,
    bind_host: str,
    local_ip: str | None,
    upnp: bool,
    timeout: float,
) -> None:
    """Step 4: probe, map a spare socket's port, record, delete. Never raises (but cancels)."""
    report.port_mapping_gateway = gateway
    if local_ip is None and bind_host not in ("0.0.0.0", "::", ""):
        local_ip = bind_host
    spare: DatagramSocket | None = None
    try:
        spare = await network.bind(bind_host, 0)
        mapper = PortMapper(
            network,
            gateway,
            spare.local_address[1],
            local_ip=local_ip,
            upnp=upnp,
            probe_timeout=min(DEFAULT_PROBE_TIMEOUT, timeout),
        )
        async with mapper:
            report.port_mapping = mapper.report.to_json()
            mapping = mapper.mapping
            if mapping is not None:
                report.port_mapping_external = mapping.external_text()
            report.double_nat = mapper.double_nat if mapper.report.answered() else None
            if mapping is not None and mapping.double_nat:
                report.errors.append(
                    f"port mapping gave {mapping.external_text()}, a private/CGNAT address: "
                    "double NAT, the mapping is useless to peers"
                )
    except (OSError, ValueError) as exc:
        report.errors.append(f"port mapping probe failed: {exc}")
    finally:
        if spare is not None:
            spare.close()


async def run_netcheck(
    network: Network,
    servers: Sequence[Address],
    *,
    timeout: float = 3.0,
    samples: int = 5,
    rto: float = PROBE_RTO,
    bind_host: str = "0.0.0.0",
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE,
    gateway: str | None = None,
    port_mapping: bool = True,
    local_ip: str | None = None,
    upnp: bool = False,
) -> NetcheckReport:
    """Probe the NAT in front of this host; see the module docstring for the plan.

    ``timeout`` bounds every single wait (each Binding transaction); the three steps run one
    after another, so a run takes at most about ``3 * timeout`` (plus, with port mapping, the
    mapper's own request and delete timeouts). ``samples`` is the port-allocation sample count
    wished for; fewer are taken when the servers offer fewer distinct endpoints (and the report
    says so in ``errors``).

    Port mapping is probed only when ``gateway`` is given (the library never reads the machine's
    routing table itself: see :func:`punchthrough.portmap.default_gateway`) and
    ``port_mapping`` is true. ``local_ip`` is our address on the gateway's LAN (PCP needs it;
    default: ``bind_host`` when specific). ``upnp`` adds UPnP IGD, which uses kernel sockets:
    only for the real network.
    """
    if not servers:
        raise NetcheckError("no STUN server given: pass at least one --stun IP:PORT")
    if timeout <= 0:
        raise NetcheckError("timeout must be positive")
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = NetcheckReport()
    v6_task: asyncio.Task[Ipv6Report] | None = None
    v4_servers = [s for s in servers if not is_ipv6(s)]
    if v4_servers and len(v4_servers) < len(servers):
        # Dual stack: IPv6 on its own socket, alongside; the steps below are about IPv4.
        v6 = [s for s in servers if is_ipv6(s)]
        v6_task = asyncio.ensure_future(run_netcheck6(network, v6, timeout=timeout, rto=rto))
        servers = v4_servers
    elif not v4_servers and bind_host == "0.0.0.0":
        bind_host = BIND_IPV6  # IPv6 servers only: the steps below are about IPv6
    sockets: list[DatagramSocket] = []
    clients: list[StunClient] = []
    portmap_task: asyncio.Task[None] | None = None
    sample_list: list[Sample] = []
    ok = False
    try:
        main_sock = await network.bind(bind_host, 0)
        sockets.append(main_sock)
        report.local_address = main_sock.local_address
        main = StunClient(main_sock, rto=rto)
        main.attach()
        clients.append(main)
        if gateway is not None and port_mapping:
            portmap_task = asyncio.ensure_future(
                _port_mapping(network, report, gateway, bind_host, local_ip, upnp, timeout)
            )

        # Step 1: every configured server, concurrently, in list order.
        unique_servers = list(dict.fromkeys(servers))
        first = await asyncio.gather(*(_binding_or_none(main, s, timeout) for s in unique_servers))
        answered = [(s, r) for s, r in zip(unique_servers, first, strict=True) if r is not None]
        if not answered:
            report.errors.append("no STUN server answered: UDP blocked or servers down")
            ok = True
            return report
        report.udp = True

        # Step 2: the RFC 5780 server's other endpoints.
        rfc5780 = next(((s, r) for s, r in answered if r.other_address is not None), None)
        extra: list[Address] = []
        if rfc5780 is not None:
            (a_ip, p), res = rfc5780
            assert res.other_address is not None
            b_ip, p_alt = res.other_address
            report.rfc5780_server = _fmt(rfc5780[0])
            seen = {s for s, _ in answered}
            extra = [d for d in ((b_ip, p), (b_ip, p_alt), (a_ip, p_alt)) if d not in seen]
        else:
            report.errors.append(
                "no server sent OTHER-ADDRESS (RFC 5780): filtering is unknown and mapping is "
                "inferred from distinct servers only"
            )
        sample_list = [Sample(s, r.mapped) for s, r in answered]
        sample_list += await sample_mappings(main, extra, timeout)
        report.sample_destinations = [_fmt(s.destination) for s in sample_list]
        report.mapped_endpoints = [_fmt(s.mapped) for s in sample_list]
        report.public_ip = sample_list[0].mapped[0]
        report.mapping = classify_mapping(sample_list, Purpose.REPORT)
        report.allocation = classify_allocation(
            sample_list, report.mapping, Purpose.REPORT, port_range
        )
        report.preserves_port = sample_list[0].mapped[1] == main_sock.local_address[1]
        if len(sample_list) < samples:
            report.errors.append(
                f"only {len(sample_list)} distinct server endpoints answered "
                f"({samples} wanted): port allocation evidence is thin"
            )

        # Step 3: filtering (fresh socket) and hairpinning (main socket), concurrently.
        wait = filter_wait([r.rtt for _, r in answered], timeout)
        hairpin_target = sample_list[0].mapped
        if rfc5780 is not None:
            filt_sock = await network.bind(bind_host, 0)
            sockets.append(filt_sock)
            filt = StunClient(filt_sock, rto=rto)
            filt.attach()
            clients.append(filt)
            target = rfc5780[0]
            test_ii, test_iii = filtering_probes(filt, target, wait)
            both, port_only, report.hairpinning = await asyncio.gather(
                test_ii, test_iii, main.probe_hairpin(hairpin_target, wait)
            )
            report.filtering = filtering_behavior(both, port_only)
        else:
            report.hairpinning = await main.probe_hairpin(hairpin_target, wait)
        ok = True
        return report
    finally:
        for c in clients:
            c.close()
        for s in sockets:
            s.close()
        if portmap_task is not None:
            if not ok:
                portmap_task.cancel()  # its mapper still sends the delete on the way out
            try:
                await portmap_task
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being cancelled ourselves: do not swallow it
        if v6_task is not None:
            if not ok:
                v6_task.cancel()
            try:
                report.ipv6 = await v6_task
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        elif ok and not v4_servers:
            report.ipv6 = ipv6_from_main(report, network)
        if ok:
            report.summary = _summary(report, sample_list, port_range)
        report.duration_ms = (loop.time() - started) * 1000.0


def ipv6_from_main(report: NetcheckReport, network: Network) -> Ipv6Report:
    """The IPv6 section of a run that had IPv6 servers only (the main steps were IPv6)."""
    return Ipv6Report(
        reachable=report.udp,
        public_ip=report.public_ip,
        mapped_endpoints=list(report.mapped_endpoints),
        translated=translated(network, report.public_ip),
        mapping=report.mapping,
        filtering=report.filtering,
        rfc5780_server=report.rfc5780_server,
    )


def _summary(
    report: NetcheckReport, samples: list[Sample], port_range: tuple[int, int]
) -> NatSummary:
    """The planner's view of this run (the same classifier the endpoint's gathering uses)."""
    port_mapping = usable_protocols(report.port_mapping, double_nat=report.double_nat is True)
    obs = NatObservations(
        samples=samples,
        udp=report.udp,
        filtering=report.filtering,
        port_mapping=port_mapping,
        local_port=report.local_address[1] if report.local_address is not None else None,
        port_range=port_range,
    )
    return classify_nat(obs, Purpose.REPORT)
