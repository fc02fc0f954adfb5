"""Candidate gathering: our addresses for the peers to try, and our NAT as the planner sees it.

One gather collects host candidates (local addresses), the mapped candidate (the gateway's port
mapping) and server-reflexive ones: where each relay sees us (kept fresh by its keepalives, so
no packet is sent for them) and one STUN Binding to each ``--stun`` server, all at once. On a
dual-stack socket the STUN servers given by IPv6 address give IPv6 server-reflexive candidates
(the same socket learns and later uses them); the NAT summary is about the IPv4 NAT, so only
IPv4 samples feed it when there are any (an IPv6 firewall maps nothing). Those
observations are also the samples of :func:`punchthrough.nat.classify.classify_nat`
(``Purpose.PLAN``), which gives the NAT summary sent to peers.

The RFC 5780 filtering test waits one retransmission plus round trips (``nat.filtering.
gather_filter_wait``, 0.33 s at a 40 ms RTT) for answers a filtering NAT drops, so it runs behind
the call, in the background: candidates, the hole punch and the NAT summary's mapping half do not
wait for it. The summary is sendable at once (``LocalCandidates.summary_ready``) with its
filtering "unknown", so a peer's race can start what needs only our mapping (port prediction);
when the test ends the summary is final (``summary_final``) and every agent resends it. It is
only worth running for an endpoint-independent mapping: the planner needs that side's filtering
to know whether the peer's unannounced ports get through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Final, cast, get_args

from punchthrough.endpoint.dualstack import nat_samples, usable_ips
from punchthrough.nat.behavior import Behavior, Sample
from punchthrough.nat.classify import NatObservations, Purpose, classify_nat
from punchthrough.nat.filtering import filtering_test, gather_filter_wait
from punchthrough.nat.summary import AD, APD, EI
from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.portmap import PortMapper
from punchthrough.relay import RelayClient
from punchthrough.signal.messages import Behavior as BehaviorText
from punchthrough.signal.messages import PortMappingProtocol
from punchthrough.stun import BindingResult, StunClient, StunError
from punchthrough.traversal.candidates import make_candidates
from punchthrough.traversal.host import AgentHandle
from punchthrough.traversal.local import LocalCandidates, MappingHint

log = logging.getLogger(__name__)

#: Budget of one STUN Binding to a server while gathering candidates: a server that has not
#: answered by then is skipped (from an RTO of ``nat.probe.PROBE_RTO``, 0.25 s, 3 tries fit);
#: it also caps the filtering test's wait.
GATHER_TIMEOUT: Final = 1.0
#: The planner's mapping verdict as the candidates' hint (``Purpose.PLAN`` never says AD).
_HINTS: Final[dict[BehaviorText, MappingHint]] = {
    EI: "independent",
    AD: "dependent",
    APD: "dependent",
    "unknown": "unknown",
}
#: Port-mapping protocols a peer's planner knows (the signal schema's ``PortMappingProtocol``).
_PROTOCOLS: Final[frozenset[str]] = frozenset(get_args(PortMappingProtocol))


def host_ips(sock: DatagramSocket, network: Network | None) -> list[str]:
    """Our local addresses: the main socket's, or every interface's when it is a wildcard."""
    local_ip = sock.local_address[0]
    if local_ip not in ("0.0.0.0", "::", ""):
        return [local_ip]
    lister = getattr(network, "interface_addresses", None)
    if callable(lister):
        try:
            ips = lister()
        except OSError:
            return []
        return usable_ips([str(ip) for ip in ips], local_ip)
    return []


class Gatherer:
    """Fills the shared :class:`LocalCandidates` (``local``) and runs the filtering test."""

    def __init__(
        self,
        local: LocalCandidates,
        sock: DatagramSocket,
        network: Network | None,
        stun: StunClient,
        stun_servers: list[Address],
        *,
        relays: Mapping[Address, RelayClient],
        port_mapper: Callable[[], PortMapper | None],
        agents: Callable[[], Iterable[AgentHandle]],
        is_closed: Callable[[], bool],
        udp_unanswered: Callable[[], bool] = lambda: False,
    ) -> None:
        """``relays``: the live registrations (read at each gather). ``udp_unanswered()``:
        every relay's UDP went unanswered (they carry us over TCP). ``agents()``: every
        connection's agent, told when the NAT summary becomes final."""
        self._loop = asyncio.get_running_loop()
        self.local = local
        self._sock = sock
        self._network = network
        self._stun = stun
        self.stun_servers = stun_servers
        self._relays = relays
        self._port_mapper = port_mapper
        self._agents = agents
        self._is_closed = is_closed
        self._udp_unanswered = udp_unanswered
        #: Where each server IP saw us at the last gather.
        self.seen: dict[str, Address] = {}
        #: The background filtering test of the latest gather, and that gather's number.
        self.filter_task: asyncio.Task[None] | None = None
        self._round = 0

    async def gather(self, ask: Sequence[Address] = ()) -> LocalCandidates:
        """See :meth:`Endpoint.gather`. ``ask``: relays whose registration is still under way
        (issue 17), asked by STUN instead (a relay answers STUN on its relay port, from the
        mapping its registration will see), so that gathering runs alongside registering."""
        srflx: list[tuple[Address, str]] = []
        seen: dict[str, Address] = {}
        samples: list[Sample] = []  # in the order the mappings were made
        for addr, client in self._relays.items():
            if client.transport != "udp":
                continue  # a TLS/WebSocket relay sees our TCP mapping: no UDP candidate
            # where the relay sees us now (registration, then kept fresh by its keepalives)
            srflx.append((client.mapped_address, addr[0]))
            seen[addr[0]] = client.mapped_address
            samples.append(Sample(addr, client.mapped_address))
        results: list[tuple[Address, BindingResult]] = []
        asked = [a for a in ask if a not in self._relays]
        if self.stun_servers or asked:

            async def one(server: Address) -> tuple[Address, BindingResult] | None:
                try:
                    res = await self._stun.binding(server, timeout=GATHER_TIMEOUT)
                except (StunError, OSError):
                    return None
                return server, res

            servers = [*asked, *self.stun_servers]  # the relays' samples first, as above
            for i, r in enumerate(await asyncio.gather(*(one(s) for s in servers))):
                if r is not None:
                    if i >= len(asked):  # (the filtering test uses the STUN servers only)
                        results.append(r)
                    srflx.append((r[1].mapped, r[0][0]))
                    seen.setdefault(r[0][0], r[1].mapped)
                    samples.append(Sample(r[0], r[1].mapped))
        self.seen = seen
        mapper = self._port_mapper()
        mapped = mapper.candidate if mapper is not None else None
        protocol = (
            mapper.mapping.protocol if mapper is not None and mapper.mapping is not None else None
        )
        offered: tuple[PortMappingProtocol, ...] = ()
        if mapped is not None and protocol in _PROTOCOLS:
            offered = (cast(PortMappingProtocol, protocol),)
        # UDP is blocked when nothing answered it: the STUN servers, or (none given) the relays,
        # every one on TLS/WebSocket because its UDP did not answer (endpoint.relaylink)
        unanswered = bool(self.stun_servers) or self._udp_unanswered()
        obs = NatObservations(
            samples=nat_samples(samples),
            udp=bool(samples) or not unanswered,
            port_mapping=offered,
        )
        summary = classify_nat(obs, Purpose.PLAN)
        mapping = _HINTS[summary.mapping]
        cands = make_candidates(
            self._sock.local_address[1],
            host_ips=host_ips(self._sock, self._network),
            srflx=srflx,
            mapped=mapped,
        )
        local = self.local
        changed = cands != local.candidates or mapping != local.mapping
        if changed and local.candidates:
            local.generation += 1
        local.candidates = cands
        local.mapping = mapping
        local.allocation, local.delta = summary.allocation, summary.delta
        local.mapped = mapped
        local.mapped_protocol = protocol
        local.public_ip = summary.public_ip
        local.summary = summary
        self._round += 1
        if self.filter_task is not None:
            self.filter_task.cancel()
            self.filter_task = None
        # The mapping half is sendable now; the filtering test, if any, finishes it later.
        local.summary_ready = True
        if mapping == "independent" and any(r.other_address for _, r in results):
            local.summary_final = False  # until the filtering test behind the call is done
            self.filter_task = self._loop.create_task(
                self._finish_filtering(self._round, results, obs)
            )
        else:
            local.summary_final = True
        return local

    async def _finish_filtering(
        self, round_: int, results: list[tuple[Address, BindingResult]], obs: NatObservations
    ) -> None:
        try:
            filtering = await self._filtering_test(results)
        except Exception:  # a bug here must not leave the summary pending forever
            log.exception("filtering test failed")
            filtering = Behavior.UNKNOWN
        if round_ != self._round or self._is_closed():
            return  # a newer gather superseded this one
        local = self.local
        local.summary = classify_nat(replace(obs, filtering=filtering), Purpose.PLAN)
        local.summary_ready = local.summary_final = True
        self.filter_task = None
        for agent in dict.fromkeys(self._agents()):  # each once, in a stable order
            agent.local_summary_ready()

    async def summary_ready(self) -> None:
        """Wait for the running filtering test (the NAT summary is final afterwards)."""
        task = self.filter_task
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def _filtering_test(self, results: list[tuple[Address, BindingResult]]) -> Behavior:
        """Tests II and III against the first RFC 5780 server, from a fresh socket on the main
        socket's address (the main socket has already sent to the servers' other addresses)."""
        rfc5780 = [(srv, res) for srv, res in results if res.other_address is not None]
        if not rfc5780 or self._network is None:
            return Behavior.UNKNOWN
        server, res = rfc5780[0]
        wait = gather_filter_wait([res.rtt], GATHER_TIMEOUT)
        return await filtering_test(self._network, self._sock.local_address[0], server, wait)
