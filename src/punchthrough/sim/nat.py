"""A sans-IO model of one NAT box (RFC 4787 behaviours), driven with explicit ``now``.

The world adapter (:mod:`punchthrough.sim.world`) asks :meth:`NatTable.outbound` and
:meth:`NatTable.inbound` what happens to each packet; the answer is a translation or a drop with
a reason. Keeping the model free of the event loop lets property tests drive it directly.

Defaults mirror Linux conntrack (what the kernel lab runs): a binding lives 30 s until the first
reply and 120 s after that (``nf_conntrack_udp_timeout`` / ``_stream``), and traffic in either
direction refreshes it.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from punchthrough.netio import Address

MappingBehaviour = Literal["eim", "adm", "apdm"]
FilteringBehaviour = Literal["eif", "adf", "apdf"]
#: ``hash`` = the lab's ADM recipe: port = hash(internal ip, internal port, remote ip) over a range.
AllocationPolicy = Literal["preserve", "sequential", "random", "hash"]

MAPPINGS: Final[tuple[MappingBehaviour, ...]] = ("eim", "adm", "apdm")
FILTERINGS: Final[tuple[FilteringBehaviour, ...]] = ("eif", "adf", "apdf")
ALLOCATIONS: Final[tuple[AllocationPolicy, ...]] = ("preserve", "sequential", "random", "hash")

#: Linux ``nf_conntrack_udp_timeout``: an unreplied UDP flow lives 30 s.
LINUX_UDP_UNREPLIED_TIMEOUT: Final = 30.0
#: Linux ``nf_conntrack_udp_timeout_stream``: a replied UDP flow lives 120 s.
LINUX_UDP_REPLIED_TIMEOUT: Final = 120.0
#: Linux's ephemeral port range (``ip_local_port_range``): where background hosts' flows start.
LINUX_EPHEMERAL_RANGE: Final = (32768, 60999)
#: RFC 6886 section 3.3 / RFC 6887 section 15: cap on port-mapping lifetimes (2 hours recommended).
MAX_PORTMAP_LIFETIME: Final = 7200


@dataclass(frozen=True, slots=True)
class NatConfig:
    """Every RFC 4787 knob of a simulated NAT. Profiles in :data:`PROFILES` fill these in."""

    mapping: MappingBehaviour = "eim"
    filtering: FilteringBehaviour = "apdf"
    allocation: AllocationPolicy = "preserve"
    #: Sequential allocation: step between consecutive new mappings (any sign, not 0).
    delta: int = 1
    #: Inclusive range external ports are allocated from.
    port_range: tuple[int, int] = (1024, 65535)
    #: Sequential allocation: first port handed out; ``None`` = a seeded random port in range.
    sequential_start: int | None = None
    #: Lifetime of a binding once traffic has come back (seconds).
    binding_lifetime: float = LINUX_UDP_REPLIED_TIMEOUT
    #: Lifetime of a binding that has only seen outbound traffic (seconds).
    unreplied_lifetime: float = LINUX_UDP_UNREPLIED_TIMEOUT
    #: Whether inbound packets refresh the binding (RFC 4787 REQ-6 makes this optional).
    inbound_refreshes: bool = True
    hairpinning: bool = False
    #: Background flows per second opened by other (invisible) hosts behind this NAT.
    churn: float = 0.0
    #: Maximum simultaneous bindings (background ones included); ``None`` = unlimited.
    session_limit: int | None = None
    #: New mappings per second allowed per internal host (token bucket); ``None`` = unlimited.
    mapping_rate_limit: float | None = None
    #: Token-bucket depth for ``mapping_rate_limit``.
    mapping_burst: int = 10
    natpmp: bool = False
    pcp: bool = False
    udp_blocked: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.port_range
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"bad port_range {self.port_range}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}")
        if self.filtering not in FILTERINGS:
            raise ValueError(f"filtering must be one of {FILTERINGS}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}")
        if self.delta == 0 or (abs(self.delta) >= hi - lo + 1 and hi > lo):
            raise ValueError(f"delta {self.delta} must be nonzero and smaller than the range")
        if self.sequential_start is not None and not lo <= self.sequential_start <= hi:
            raise ValueError("sequential_start outside port_range")
        if self.binding_lifetime <= 0 or self.unreplied_lifetime <= 0:
            raise ValueError("lifetimes must be positive")
        if self.churn < 0:
            raise ValueError("churn must be >= 0")
        if self.session_limit is not None and self.session_limit < 1:
            raise ValueError("session_limit must be >= 1")
        if self.mapping_rate_limit is not None and self.mapping_rate_limit <= 0:
            raise ValueError("mapping_rate_limit must be > 0")


#: The lab's profiles (``/work/shared/natlab``), by name. ``open`` means no NAT at all.
PROFILES: Final[dict[str, NatConfig | None]] = {
    "open": None,
    # nft eim-eif.nft: masquerade (port-preserving) + a full-cone dnat map.
    "eim-eif": NatConfig("eim", "eif", "preserve"),
    "eim-adf": NatConfig("eim", "adf", "preserve"),
    # Plain Linux masquerade: EIM, APDF, keeps the source port when it can.
    "eim-apdf": NatConfig("eim", "apdf", "preserve"),
    # gen-adm.sh: port = jhash(saddr . sport . daddr) mod 4096 + 20000.
    "adm": NatConfig("adm", "apdf", "hash", port_range=(20000, 24095)),
    # gen-apdm-sequential.sh: numgen inc over 40000..40999, one counter for every new flow.
    "apdm-sequential": NatConfig("apdm", "apdf", "sequential", port_range=(40000, 40999)),
    # masquerade fully-random.
    "apdm-random": NatConfig("apdm", "apdf", "random"),
    "udp-blocked": NatConfig(udp_blocked=True),
}


def profile(name: str, **overrides: Any) -> NatConfig | None:
    """The named profile with free parameters applied (``open`` takes none)."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown NAT profile {name!r}; known: {', '.join(PROFILES)}") from None
    if base is None:
        if overrides:
            raise ValueError("profile 'open' has no NAT to configure")
        return None
    return replace(base, **overrides)


def nat_config(name: str, **overrides: Any) -> NatConfig:
    """Like :func:`profile` for profiles that have a NAT (``open`` raises ``ValueError``)."""
    config = profile(name, **overrides)
    if config is None:
        raise ValueError(f"profile {name!r} has no NAT")
    return config


@dataclass(slots=True)
class Permission:
    """One remote endpoint this binding has talked to (a conntrack entry, in Linux terms)."""

    expires: float
    replied: bool = False


@dataclass(slots=True)
class Binding:
    internal: Address
    external_port: int
    key: tuple[Any, ...]
    created: float
    expires: float
    remotes: dict[Address, Permission] = field(default_factory=dict)
    #: Set for NAT-PMP/PCP mappings: endpoint-independent, admits anyone until this time.
    static_until: float | None = None
    nonce: bytes | None = None
    background: bool = False

    def alive(self, now: float) -> bool:
        return self.expires > now

    def admits(self, remote: Address, filtering: FilteringBehaviour, now: float) -> bool:
        if self.static_until is not None and self.static_until > now:
            return True
        if filtering == "eif":
            return True
        if filtering == "apdf":
            perm = self.remotes.get(remote)
            return perm is not None and perm.expires > now
        return any(r[0] == remote[0] and p.expires > now for r, p in self.remotes.items())


@dataclass(frozen=True, slots=True)
class Translated:
    """Outbound result: the packet leaves with source ``external``."""

    external: Address
    new: bool
    binding: Binding


@dataclass(frozen=True, slots=True)
class Admitted:
    """Inbound result: the packet is forwarded to ``internal``."""

    internal: Address
    binding: Binding


@dataclass(frozen=True, slots=True)
class Dropped:
    reason: str


#: Called with (virtual time, event kind, detail) for trace output (churn, expiry, mappings).
NatObserver = Callable[[float, str, str], None]


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
            return Dropped("not authorized: mapping nonce mismatch")
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
                return Dropped(f"no resources: {made.reason}")
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
