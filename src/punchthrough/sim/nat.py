"""A sans-IO model of one NAT box (RFC 4787 behaviours), driven with explicit ``now``.

The world adapter (:mod:`punchthrough.sim.world`) asks :meth:`NatTable.outbound` and
:meth:`NatTable.inbound` what happens to each packet; the answer is a translation or a drop with
a reason. Keeping the model free of the event loop lets property tests drive it directly.

What the box does is configured in :mod:`punchthrough.sim.nat_config` and what the table holds
and answers is in :mod:`punchthrough.sim.nat_binding`; both are re-exported here.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from typing import Any

from punchthrough.netio import Address
from punchthrough.sim.nat_binding import (
    Admitted,
    Binding,
    DropKind,
    Dropped,
    NatObserver,
    Permission,
    Translated,
)
from punchthrough.sim.nat_config import (
    ALLOCATIONS,
    FILTERINGS,
    LINUX_EPHEMERAL_RANGE,
    LINUX_UDP_REPLIED_TIMEOUT,
    LINUX_UDP_UNREPLIED_TIMEOUT,
    MAPPINGS,
    MAX_PORTMAP_LIFETIME,
    PROFILES,
    AllocationPolicy,
    FilteringBehaviour,
    MappingBehaviour,
    NatConfig,
    nat_config,
    profile,
)

__all__ = [
    "ALLOCATIONS",
    "FILTERINGS",
    "LINUX_EPHEMERAL_RANGE",
    "LINUX_UDP_REPLIED_TIMEOUT",
    "LINUX_UDP_UNREPLIED_TIMEOUT",
    "MAPPINGS",
    "MAX_PORTMAP_LIFETIME",
    "PROFILES",
    "Admitted",
    "AllocationPolicy",
    "Binding",
    "Dropped",
    "FilteringBehaviour",
    "MappingBehaviour",
    "NatConfig",
    "NatObserver",
    "NatTable",
    "Permission",
    "Translated",
    "nat_config",
    "profile",
]


class NatTable:
    """The binding table, port allocator and filter of one NAT box."""

    def __init__(
        self,
        config: NatConfig,
        external_ip: str,
        rng: random.Random,
        *,
        now: float = 0.0,
        name: str = "nat",
        observer: NatObserver | None = None,
    ) -> None:
        self.config = config
        self.external_ip = external_ip
        self.name = name
        self._rng = rng
        self._observer = observer
        self.started = now
        self._by_port: dict[int, Binding] = {}
        self._by_key: dict[tuple[Any, ...], Binding] = {}
        self._static: dict[Address, Binding] = {}
        self._expiry: list[tuple[float, int, int]] = []  # (expires, seq, port), lazily checked
        self._seq = 0
        lo, hi = config.port_range
        self._size = hi - lo + 1
        start = config.sequential_start
        self._next_seq_port = start if start is not None else rng.randint(lo, hi)
        self._salt = rng.getrandbits(64).to_bytes(8, "big")
        self._tokens: dict[str, tuple[float, float]] = {}  # internal ip -> (tokens, at)
        self._churn_rng = random.Random(rng.getrandbits(64))
        self._churn_next = now + self._churn_gap() if config.churn > 0 else float("inf")
        self._clock = now
        self.stats: dict[str, int] = {}

    # -- public queries ---------------------------------------------------------------------

    @property
    def bindings(self) -> list[Binding]:
        """Live bindings (as of the last operation), oldest port first."""
        return [b for _, b in sorted(self._by_port.items())]

    def binding_for_port(self, port: int, now: float) -> Binding | None:
        self.advance(now)
        return self._by_port.get(port)

    def epoch(self, now: float) -> int:
        """Seconds since the NAT started: the NAT-PMP/PCP epoch (RFC 6886 section 3.6)."""
        return int(now - self.started)

    # -- packet decisions -------------------------------------------------------------------

    def outbound(self, now: float, internal: Address, remote: Address) -> Translated | Dropped:
        """Translate a packet from ``internal`` to ``remote``, creating a binding if needed."""
        self.advance(now)
        if self.config.udp_blocked:
            return self._drop("udp blocked")
        binding = self._live_static(internal, now)
        if binding is None:
            binding = self._by_key.get(self._key(internal, remote))
        new = binding is None
        if binding is None:
            made = self._create(now, internal, remote, background=False)
            if isinstance(made, Dropped):
                return made
            binding = made
        self._touch(binding, remote, now, inbound=False)
        self._count("out")
        return Translated((self.external_ip, binding.external_port), new, binding)

    def inbound(self, now: float, remote: Address, external_port: int) -> Admitted | Dropped:
        """Decide the fate of a packet from ``remote`` to our external ``external_port``."""
        self.advance(now)
        if self.config.udp_blocked:
            return self._drop("udp blocked")
        binding = self._by_port.get(external_port)
        if binding is None:
            return self._drop(f"no binding for port {external_port}")
        if not binding.admits(remote, self.config.filtering, now):
            return self._drop(
                f"filtered ({self.config.filtering}): {remote[0]}:{remote[1]} not contacted "
                f"from port {external_port}"
            )
        if binding.background:
            return self._drop(f"port {external_port} belongs to a background host")
        self._touch(binding, remote, now, inbound=True)
        self._count("in")
        return Admitted(binding.internal, binding)

    # -- port mapping (NAT-PMP / PCP) ---------------------------------------------------------

    def map_port(
        self,
        now: float,
        internal: Address,
        suggested_port: int,
        lifetime: int,
        nonce: bytes | None = None,
    ) -> Binding | Dropped | None:
        """Create, renew or (``lifetime == 0``) delete an explicit mapping.

        Returns the binding, ``None`` after a delete, or a :class:`Dropped` naming the refusal
        (``not authorized`` for a PCP nonce mismatch, ``no resources`` when the table is full).
        """
        self.advance(now)
        existing = self._live_static(internal, now)
        if existing is not None and nonce is not None and existing.nonce not in (None, nonce):
            return Dropped("not authorized: mapping nonce mismatch", DropKind.NOT_AUTHORIZED)
        if lifetime == 0:
            if existing is not None:
                self._remove(existing)
                self._event(now, "unmap", f"{_fmt(internal)} port {existing.external_port}")
            return None
        lifetime = min(lifetime, MAX_PORTMAP_LIFETIME)
        binding = existing
        if binding is None and self.config.mapping == "eim":
            binding = self._by_key.get(self._key(internal, ("0.0.0.0", 0)))
        if binding is None:
            port = suggested_port if suggested_port and suggested_port not in self._by_port else 0
            made = self._create(now, internal, None, background=False, port=port)
            if isinstance(made, Dropped):
                return Dropped(f"no resources: {made.reason}", DropKind.NO_RESOURCES)
            binding = made
        binding.static_until = now + lifetime
        binding.nonce = nonce if nonce is not None else binding.nonce
        self._static[internal] = binding
        self._extend(binding, binding.static_until)
        self._event(
            now,
            "map",
            f"{_fmt(internal)} <-> {self.external_ip}:"
            f"{binding.external_port} for {lifetime}s (port mapping)",
        )
        return binding

    def unmap_all(self, now: float, internal_ip: str) -> int:
        """Delete every explicit mapping of one host (NAT-PMP internal port 0, lifetime 0)."""
        self.advance(now)
        gone = [b for a, b in self._static.items() if a[0] == internal_ip]
        for b in gone:
            self._remove(b)
        return len(gone)

    # -- time ---------------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Bring the table to ``now``: background churn up to now, then expire bindings."""
        if now < self._clock:
            now = self._clock
        self._clock = now
        while self._churn_next <= now:
            at = self._churn_next
            self._churn_next = at + self._churn_gap()
            self._expire(at)
            self._churn_flow(at)
        self._expire(now)

    def _expire(self, now: float) -> None:
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _, _, port = heapq.heappop(heap)
            binding = self._by_port.get(port)
            if binding is None:
                continue
            if binding.expires > now:
                self._push_expiry(binding)  # refreshed since it was queued
                continue
            self._remove(binding)
            if not binding.background:
                self._event(
                    binding.expires,
                    "expire",
                    f"{_fmt(binding.internal)} <-> {self.external_ip}:{port}",
                )

    # -- internals ----------------------------------------------------------------------------

    def _live_static(self, internal: Address, now: float) -> Binding | None:
        binding = self._static.get(internal)
        if binding is not None and (binding.static_until or 0.0) <= now:
            # The explicit mapping ran out; flows it admitted live on as ordinary bindings.
            del self._static[internal]
            binding.static_until = None
            return None
        return binding

    def _churn_gap(self) -> float:
        return self._churn_rng.expovariate(self.config.churn)

    def _churn_flow(self, at: float) -> None:
        rng = self._churn_rng
        internal = (
            f"10.255.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            rng.randint(*LINUX_EPHEMERAL_RANGE),
        )
        remote = (f"192.0.2.{rng.randint(1, 254)}", rng.randint(1024, 65535))
        made = self._create(at, internal, remote, background=True)
        if isinstance(made, Binding):
            self._touch(made, remote, at, inbound=False)
            self._count("churn")

    def _key(self, internal: Address, remote: Address) -> tuple[Any, ...]:
        m = self.config.mapping
        if m == "eim":
            return (internal,)
        if m == "adm":
            return (internal, remote[0])
        return (internal, remote)

    def _create(
        self,
        now: float,
        internal: Address,
        remote: Address | None,
        *,
        background: bool,
        port: int = 0,
    ) -> Binding | Dropped:
        cfg = self.config
        limit = cfg.session_limit
        if limit is not None and len(self._by_port) >= limit:
            return self._drop("session table full")
        if (
            not background
            and cfg.mapping_rate_limit is not None
            and not self._take_token(internal[0], now)
        ):
            return self._drop("new-mapping rate limit")
        allocated = not port
        if allocated:
            port = self._allocate(internal, remote)
        if not port:
            return self._drop("external port range exhausted")
        key = self._key(internal, remote if remote is not None else ("0.0.0.0", 0))
        binding = Binding(internal, port, key, now, now, background=background)
        self._by_port[port] = binding
        if remote is not None:
            self._by_key[key] = binding
        if allocated and cfg.allocation == "sequential":
            self._next_seq_port = self._wrap(port + cfg.delta)
        if background:
            self._event(now, "churn", f"background flow takes port {port}")
        return binding

    def _allocate(self, internal: Address, remote: Address | None) -> int:
        cfg = self.config
        lo, hi = cfg.port_range
        used = self._by_port
        if len(used) >= 65535:
            return 0
        alloc = cfg.allocation
        if alloc == "preserve" and lo <= internal[1] <= hi and internal[1] not in used:
            return internal[1]
        if alloc == "sequential":
            port = self._next_seq_port
            for _ in range(self._size):
                if port not in used:
                    return port
                port = self._wrap(port + cfg.delta)
            return 0
        if alloc == "hash":
            text = f"{internal[0]}|{internal[1]}|{remote[0] if remote else ''}".encode()
            digest = hashlib.blake2b(text, key=self._salt, digest_size=8).digest()
            start = lo + int.from_bytes(digest, "big") % self._size
            for i in range(self._size):
                port = lo + (start - lo + i) % self._size
                if port not in used:
                    return port
            return 0
        # random, and preserve's fallback on a clash (what Linux masquerade does)
        for _ in range(64):
            port = self._rng.randint(lo, hi)
            if port not in used:
                return port
        free = [p for p in range(lo, hi + 1) if p not in used]
        return self._rng.choice(free) if free else 0

    def _wrap(self, port: int) -> int:
        lo = self.config.port_range[0]
        return lo + (port - lo) % self._size

    def _take_token(self, ip: str, now: float) -> bool:
        rate = self.config.mapping_rate_limit
        assert rate is not None
        burst = float(self.config.mapping_burst)
        tokens, at = self._tokens.get(ip, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._tokens[ip] = (tokens, now)
            return False
        self._tokens[ip] = (tokens - 1.0, now)
        return True

    def _touch(self, binding: Binding, remote: Address, now: float, *, inbound: bool) -> None:
        cfg = self.config
        perm = binding.remotes.get(remote)
        if inbound:
            if perm is not None:
                perm.replied = True
            if not cfg.inbound_refreshes:
                return
            if perm is None:
                # Admitted by EIF/ADF from a new remote: it now has a flow of its own.
                perm = binding.remotes[remote] = Permission(now, replied=True)
        elif perm is None:
            perm = binding.remotes[remote] = Permission(now)
        life = cfg.binding_lifetime if perm.replied else cfg.unreplied_lifetime
        perm.expires = max(perm.expires, now + life)
        self._extend(binding, perm.expires)

    def _extend(self, binding: Binding, until: float) -> None:
        if until > binding.expires:
            fresh = binding.expires <= binding.created
            binding.expires = until
            if fresh:
                self._push_expiry(binding)

    def _push_expiry(self, binding: Binding) -> None:
        self._seq += 1
        heapq.heappush(self._expiry, (binding.expires, self._seq, binding.external_port))

    def _remove(self, binding: Binding) -> None:
        if self._by_port.get(binding.external_port) is binding:
            del self._by_port[binding.external_port]
        if self._by_key.get(binding.key) is binding:
            del self._by_key[binding.key]
        if self._static.get(binding.internal) is binding:
            del self._static[binding.internal]

    def _drop(self, reason: str) -> Dropped:
        self._count("drop")
        return Dropped(reason)

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _event(self, at: float, kind: str, detail: str) -> None:
        if self._observer is not None:
            self._observer(at, kind, detail)


def _fmt(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"
