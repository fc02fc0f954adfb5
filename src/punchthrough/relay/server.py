"""The relay server: STUN, authenticated registration over QUIC, opaque frame forwarding.

One UDP socket per listen address (:mod:`.listen`), each demultiplexed by first byte
(:class:`~punchthrough.transport.demux.DatagramMux`):

* STUN (0-3) -> :class:`~punchthrough.stun.StunServerCore` (RFC 5780 with ``alt_ip``: then the
  relay also binds the alternate IP/port sockets, which answer STUN only);
* relay frames (16-19) -> forwarding (primary sockets only): :mod:`.forward`; on real UDP
  sockets the common case is taken earlier, in batches and in place: :mod:`.fastpath`;
* QUIC (64-127, 192-255) -> control connections, where clients register: :mod:`.control`.

:class:`RelayServer` binds the sockets, wires them to those parts, sums their statistics and
shuts them down in order.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from punchthrough.identity import Identity, PeerId
from punchthrough.netio import Address, DatagramSocket, Network, UdpNetwork
from punchthrough.netio.batched import BatchedUdpSocket
from punchthrough.relay.close import RelayCloseCode
from punchthrough.relay.control import ControlPlane
from punchthrough.relay.fastpath import FastForwarder
from punchthrough.relay.fleet import FLEET_STAT_KEYS, FleetConfig, FleetLink
from punchthrough.relay.forward import Forwarder, PayloadFilter
from punchthrough.relay.limits import RelayLimits
from punchthrough.relay.listen import MAX_BIND_ATTEMPTS, bind_listen, norm_address
from punchthrough.relay.registry import LocalRegistry
from punchthrough.stun import StunServerCore
from punchthrough.transport.demux import DatagramMux

GLOBAL_STAT_KEYS: Final = (
    "frames_in",  # DATA frames from registered clients, well-formed
    "frames_out",  # DATA frames forwarded
    "bytes_in",  # payload bytes of frames_in
    "bytes_out",  # payload bytes forwarded
    "dropped_unregistered",  # relay frames from an address with no registration
    "early_frames_held",  # SEND right behind its sender's RelayRegister, held until registered
    "early_frames_dropped",  # held, but the sender never registered (or over MAX_EARLY_FRAMES)
    "dropped_bad_token",  # SEND from a registered address without its frame token (forged)
    "dropped_unknown_dest",  # destination peer id not registered here
    "dropped_rate",  # per-client packet/byte limit
    "dropped_filter",  # payload_filter returned None (tests)
    "malformed",  # relay-range datagrams from registered clients that are not a valid DATA
    "notices_sent",
    "send_errors",
    "connections_accepted",
    "connections_refused",  # new-connection packets dropped: the six below + retry_tokens_invalid
    "quic_unknown",  # QUIC for no known connection that is not an Initial
    "initials_over_limit",  # max_connections or max_connections_per_ip reached
    "initials_undecryptable",  # junk: no token taken, no state (transport.initial)
    "initials_over_rate",  # new-connection bucket empty
    "initials_no_progress",  # decrypted, nothing to answer or refused: token given back
    "initials_failed",  # the QUIC stack raised on it (a bug): token given back
    "retries_sent",  # under load: a stateless Retry instead of a connection (relay.retry)
    "retry_tokens_invalid",  # a Retry token that is forged, expired or for another address
    "registrations",
    "registrations_refused",
    "registrations_replaced",
    "registrations_moved",  # NAT rebinding followed by validated QUIC migration
    "clients_forgotten",  # registrations ended (closed or idle)
    "lookups",  # RelayLookup answered
    "lookups_rate_limited",  # RelayLookup refused (429): the client's lookup bucket was empty
    "stun",
)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A registered client, as :meth:`RelayServer.peers` reports it."""

    peer_id: PeerId
    address: Address
    relay_address: Address
    registered_at: float
    stats: dict[str, int]


class RelayServer:
    """A running relay. Build with :meth:`start`; stop with :meth:`close`."""

    def __init__(
        self,
        sockets: dict[Address, DatagramSocket],
        primaries: Sequence[Address],
        stun: StunServerCore,
        identity: Identity,
        limits: RelayLimits,
        payload_filter: PayloadFilter | None = None,
        fleet: FleetConfig | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._primaries = list(primaries)
        self._stun = stun
        self.identity = identity
        self.limits = limits
        self.registry = LocalRegistry()
        self._stats: Counter[str] = Counter(dict.fromkeys(GLOBAL_STAT_KEYS, 0))
        self._muxes: dict[Address, DatagramMux] = {}
        self._control = ControlPlane(
            sockets, self._muxes, identity, limits, self.registry, self._stats
        )
        self._controls = self._control.connections  # a live view, for stats and tests
        self._forwarder = Forwarder(sockets, self.registry, self._stats, payload_filter)
        self._forwarder.early = self._control.early  # SEND right behind RelayRegister (issue 17)
        self._fast: list[FastForwarder] = []
        self._payload_filter = payload_filter
        #: In a fleet: the directory link (relay.fleet); None for a lone relay.
        self.fleet: FleetLink | None = None
        if fleet is not None:
            self._stats.update(dict.fromkeys(FLEET_STAT_KEYS, 0))
            self.fleet = fleet.link(self._primaries, self.registry, self._stats)
            self._control.fleet = self.fleet
            self.fleet.start()
        self._closing = False
        self._closed = False
        #: Sockets added by :meth:`attach_socket` (stream listeners), whose stats we add.
        self._attached: dict[Address, DatagramSocket] = {}
        for local, sock in sockets.items():
            self._serve_on(local, sock, primary=local in self._primaries)

    def _serve_on(self, local: Address, sock: DatagramSocket, *, primary: bool) -> None:
        mux = DatagramMux(sock)
        self._muxes[local] = mux
        mux.add_stun_handler(functools.partial(self._on_stun, local=local))
        if primary:
            mux.set_relay_handler(self._forwarder.handler(local, sock))
            mux.set_new_quic_handler(functools.partial(self._on_new_quic, local=local))
            # the test-only payload filter sees every frame: no fast path then
            if isinstance(sock, BatchedUdpSocket) and self._payload_filter is None:
                fast = FastForwarder(local, sock.family, self.registry)
                sock.set_batch_handler(fast)
                self._fast.append(fast)

    def attach_socket(self, local: Address, sock: DatagramSocket) -> None:
        """Serve the whole relay protocol on one more (virtual) socket: a stream listener's
        hub (``relay.stream``). Closed with the relay; its ``stats`` (if any) join ours."""
        if local in self._sockets:
            raise ValueError(f"a socket is already attached at {local}")
        self._sockets[local] = sock
        self._attached[local] = sock
        # a lookup answers a stream client's relay as the relay's (first) public address, never
        # the hub's key (a registry alias, as for any socket whose public address differs)
        public = list(self.fleet.entry.addresses) if self.fleet is not None else []
        self.registry._public.setdefault(local, (public or self._primaries)[0])
        self._serve_on(local, sock, primary=True)

    def address_gone(self, address: Address) -> None:
        """The stream connection behind virtual ``address`` ended: its control connection and
        registration end now, not at the QUIC idle timeout (frames to it would be lost)."""
        for ctl in [c for c in self._control.connections if c.address == address]:
            if ctl.driver is not None:
                ctl.driver.abort()
            self._control.forget(ctl)

    def is_registered(self, address: Address) -> bool:
        """Whether a client is registered from ``address`` (a stream link's deadline)."""
        return self.registry.by_address(address) is not None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        network: Network,
        listen: Sequence[Address],
        identity: Identity | None = None,
        alt_ip: str | None = None,
        limits: RelayLimits | None = None,
        *,
        payload_filter: PayloadFilter | None = None,
        software: str | None = None,
        fast_path: bool | None = None,
        fleet: FleetConfig | None = None,
    ) -> RelayServer:
        """Bind every address and start serving.

        ``identity``: the relay's certificate key (an ephemeral one is generated if None).
        ``alt_ip``: RFC 5780 STUN on {listen IP, alt_ip} x {port, port + 1}; relay service runs
        on the listen addresses only. ``payload_filter`` is a TEST-ONLY hook applied to every
        forwarded payload (return None to drop it), used to prove end-to-end authentication.
        ``fast_path``: on the kernel's network (:class:`UdpNetwork`), bind the primary sockets
        as :class:`BatchedUdpSocket` and forward SEND frames in batches (:mod:`.fastpath`);
        None (the default) means yes there, and the ordinary path on any other network.
        ``fleet``: this relay's id and the shared directory (``relay.fleet``).
        """
        if fast_path is None:
            fast_path = isinstance(network, UdpNetwork)
        elif fast_path and not isinstance(network, UdpNetwork):
            raise ValueError("the relay's fast path needs the kernel's network (UdpNetwork)")
        if not listen:
            raise ValueError("a relay needs at least one listen address")
        listen = [norm_address(a) for a in listen]
        if (
            alt_ip is not None
            and len({ip for ip, _ in listen if (":" in ip) == (":" in alt_ip)}) != 1
        ):
            raise ValueError("RFC 5780 mode needs exactly one primary IP among listen addresses")
        attempts = MAX_BIND_ATTEMPTS if any(p == 0 for _, p in listen) and alt_ip else 1
        last_error: OSError | None = None
        for _ in range(attempts):
            sockets: dict[Address, DatagramSocket] = {}
            try:
                primaries, core = await bind_listen(
                    network, listen, alt_ip, sockets, software, batched=fast_path
                )
                return cls(
                    sockets,
                    primaries,
                    core,
                    identity or Identity.generate(),
                    limits or RelayLimits(),
                    payload_filter,
                    fleet,
                )
            except OSError as exc:
                last_error = exc
                for sock in sockets.values():
                    sock.close()
            except BaseException:
                for sock in sockets.values():
                    sock.close()
                raise
        assert last_error is not None
        raise last_error

    # -- public state ----------------------------------------------------------------------
    @property
    def addresses(self) -> list[Address]:
        """Relay (and STUN) service addresses: the bound primary listen addresses."""
        return list(self._primaries)

    @property
    def stun_addresses(self) -> list[Address]:
        """Every address answering STUN (with ``alt_ip``: the RFC 5780 quadruple per port)."""
        return self._stun.addresses

    @property
    def peer_id(self) -> PeerId:
        return self.identity.peer_id

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self._stats)
        out["stun"] = self._stun.stats["requests"]
        out["stun_malformed"] = self._stun.stats["malformed"]
        out["stun_rate_limited"] = self._stun.stats["rate_limited"]
        out["clients"] = len(self.registry)
        out["connections"] = len(self._controls)
        for sock in self._attached.values():
            for key, value in getattr(sock, "stats", {}).items():
                out[key] = out.get(key, 0) + value
        for fast in self._fast:
            for key, value in fast.stats().items():
                out[key] += value
            fast.fold()
        for mux in self._muxes.values():
            out["dropped_first_byte"] = out.get("dropped_first_byte", 0) + mux.stats.get(
                "dropped_first_byte", 0
            )
            out["handler_errors"] = out.get("handler_errors", 0) + mux.stats.get(
                "handler_errors", 0
            )
        return out

    def peers(self) -> list[PeerInfo]:
        for fast in self._fast:
            fast.fold()
        return [
            PeerInfo(r.peer_id, r.address, r.local, r.registered_at, r.all_stats)
            for r in self.registry
        ]

    @property
    def closed(self) -> bool:
        return self._closed

    # -- STUN ------------------------------------------------------------------------------
    def _on_stun(self, data: bytes, addr: Address, *, local: Address) -> bool:
        for payload, from_addr, dest in self._stun.handle(data, addr, local):
            sock = self._sockets.get(from_addr)
            if sock is None or sock.closed:
                self._stats["send_errors"] += 1
                continue
            try:
                sock.sendto(payload, dest)
            except OSError:
                self._stats["send_errors"] += 1
        return True  # the relay is the only STUN speaker on its sockets

    # -- control connections -----------------------------------------------------------------
    def _on_new_quic(self, data: bytes, addr: Address, *, local: Address) -> None:
        if self._closing:
            return
        self._control.accept(data, addr, local=local)

    # -- shutdown --------------------------------------------------------------------------
    async def close(self, *, code: RelayCloseCode = RelayCloseCode.SHUTDOWN) -> None:
        """Close every control connection (CONNECTION_CLOSE with ``code``: ``DRAINING`` tells
        clients to move to another relay now), then every socket. Idempotent."""
        if self._closing:
            while not self._closed:
                await asyncio.sleep(0.01)
            return
        self._closing = True
        try:
            await self._control.close(code)
            if self.fleet is not None:
                # the control close queued a withdraw per client: flushed (bounded), then stop
                await self.fleet.close(withdraw=False)
        finally:
            for mux in self._muxes.values():
                mux.close()
            for sock in self._sockets.values():
                sock.close()
            self._closed = True

    async def __aenter__(self) -> RelayServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
