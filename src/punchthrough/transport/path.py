"""The path manager: where each outgoing packet of one peer connection really goes.

Every peer connection runs ONE aioquic connection that believes its peer sits at a fixed
virtual address (:data:`VIRTUAL_PEER_ADDRESS`). Underneath, this state machine keeps the set of
usable *paths* to the peer and which one is *current*:

- a **relay path** (``kind="relay"``): DATA frames through one relay we are registered with,
  addressed to the peer's id (``remote`` = the relay's address);
- a **direct path** (``kind="direct"``): our main socket (``local``) to one of the peer's
  transport addresses (``remote``), added once an authenticated connectivity check
  (:mod:`punchthrough.traversal`) proved the peer is there.

The manager does no I/O itself: each path is added with a ``sender`` callable, and
:meth:`PathManager.send` hands a packet to the current path's sender. Switching paths is a
routing change under a live QUIC connection (no handshake, no stream reset), recorded in
:attr:`PathManager.changes` with the loop time. Incoming packets are attributed to a path with
:meth:`PathManager.received` (liveness bookkeeping for the direct-path monitor).

Why not let QUIC migrate (RFC 9000 section 9)? A QUIC client cannot follow a server that changes
address, and a relay hop is not an address QUIC understands; the virtual address sidesteps both.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from punchthrough.netio import Address

log = logging.getLogger(__name__)

#: What aioquic is told the peer's address is, on every peer connection. It is deliberately
#: unsendable (the unspecified address, port 0: the kernel refuses it with EINVAL, as does the
#: simulator), so a packet that escaped the path manager could never reach anyone.
VIRTUAL_PEER_ADDRESS: Final[Address] = ("0.0.0.0", 0)

PathKind = Literal["relay", "direct"]
Sender = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class Path:
    """One way to reach the peer. Hashable: paths are compared by value."""

    kind: PathKind
    #: Relay path: the relay's address. Direct path: the peer's transport address.
    remote: Address
    #: Direct path: our socket's local address (``None`` for relay paths).
    local: Address | None = None

    @classmethod
    def relay(cls, relay_address: Address) -> Path:
        return cls("relay", relay_address)

    @classmethod
    def direct(cls, local: Address, remote: Address) -> Path:
        return cls("direct", remote, local)

    def __str__(self) -> str:
        if self.kind == "relay":
            return f"relay {self.remote[0]}:{self.remote[1]}"
        local = f"{self.local[0]}:{self.local[1]}" if self.local else "?"
        return f"direct {local} -> {self.remote[0]}:{self.remote[1]}"


@dataclass(frozen=True, slots=True)
class PathChange:
    """One switch of the current path (``from_`` is ``None`` for none)."""

    at: float  # loop time
    from_: Path | None
    to: Path | None
    reason: str

    def to_json(self, origin: float) -> dict[str, object]:
        """``{t_ms, from, to, reason}`` with ``t_ms`` counted from ``origin`` (loop time)."""
        return {
            "t_ms": round((self.at - origin) * 1000.0, 1),
            "from": self.from_.kind if self.from_ else None,
            "to": self.to.kind if self.to else None,
            "from_path": str(self.from_) if self.from_ else None,
            "to_path": str(self.to) if self.to else None,
            "reason": self.reason,
        }


@dataclass(slots=True)
class PathState:
    """Bookkeeping for one path."""

    path: Path
    sender: Sender
    added_at: float
    last_sent: float | None = None
    last_received: float | None = None
    packets_sent: int = 0
    packets_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    send_errors: int = 0


@dataclass
class PathManager:
    """The paths of one peer connection and the current one. Not thread-safe; no I/O.

    ``clock`` returns the loop time (``loop.time``), so the simulator's virtual clock drives it.
    The first path added becomes current (a connection starts on the relay); later switches are
    explicit (:meth:`switch_to`) except that removing the current path falls back to the best
    remaining one (relay paths first: they are the ones that always work).

    *Mirroring* (:meth:`mirror`) sends every packet on one more path as well, for a while: right
    after a switch (packets the peer cannot take on the new path yet still arrive on the old one)
    and while the current path is suspected dead. QUIC discards the duplicate packet numbers
    itself (RFC 9000 section 12.3), so a switch loses nothing that either path delivers.
    """

    clock: Callable[[], float]
    paths: dict[Path, PathState] = field(default_factory=dict)
    current: Path | None = None
    changes: list[PathChange] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    #: Extra paths every packet also goes to, with the loop time the mirroring ends.
    mirrors: dict[Path, float] = field(default_factory=dict)

    # -- the set of paths -------------------------------------------------------------------
    def add(self, path: Path, sender: Sender, *, make_current: bool = False) -> PathState:
        """Add (or re-add with a new sender) a path; the first path ever added becomes current."""
        state = self.paths.get(path)
        if state is None:
            state = PathState(path, sender, self.clock())
            self.paths[path] = state
        else:
            state.sender = sender
        if self.current is None:
            # Not a *change*: the connection starts here. Recorded only if it replaces nothing
            # because everything was removed before (then it is a recovery, worth logging).
            if self.changes or make_current:
                self.switch_to(path, "path added")
            else:
                self.current = path
        elif make_current:
            self.switch_to(path, "path added")
        return state

    def remove(self, path: Path, reason: str) -> None:
        """Forget a path; if it was current, fall back to the best remaining path (or none)."""
        if self.paths.pop(path, None) is None:
            return
        self.mirrors.pop(path, None)
        if path == self.current:
            self.switch_to(self._fallback(), f"{path.kind} path removed: {reason}")

    def _fallback(self) -> Path | None:
        relays = [p for p in self.paths if p.kind == "relay"]
        if relays:
            return relays[0]
        return next(iter(self.paths), None)

    def switch_to(self, path: Path | None, reason: str) -> bool:
        """Make ``path`` current; returns False if it already was. Unknown paths are refused."""
        if path is not None and path not in self.paths:
            raise KeyError(f"{path} is not a known path")
        if path == self.current:
            return False
        change = PathChange(self.clock(), self.current, path, reason)
        self.changes.append(change)
        log.info("path %s -> %s (%s)", self.current, path, reason)
        self.current = path
        return True

    @property
    def kind(self) -> str:
        """``"relay"``, ``"direct"`` or ``"none"`` (no usable path right now)."""
        return self.current.kind if self.current is not None else "none"

    def has(self, path: Path) -> bool:
        return path in self.paths

    def mirror(self, path: Path, until: float) -> None:
        """Also send every packet on ``path`` until loop time ``until`` (``inf``: until
        :meth:`stop_mirror`). Ignored for the current path and unknown paths."""
        if path in self.paths and path != self.current:
            self.mirrors[path] = until

    def stop_mirror(self, path: Path | None = None) -> None:
        """Stop mirroring onto ``path`` (every path if ``None``)."""
        if path is None:
            self.mirrors.clear()
        else:
            self.mirrors.pop(path, None)

    # -- traffic ----------------------------------------------------------------------------
    def send(self, data: bytes) -> bool:
        """Send one packet on the current path (and on mirror paths); False (counted) if there
        is no current path or sending on it failed."""
        path = self.current
        if path is None:
            self.stats["dropped_no_path"] += 1
            return False
        ok = self._send_on(path, data)
        if self.mirrors:
            now = self.clock()
            for extra, until in list(self.mirrors.items()):
                if now >= until or extra == path or extra not in self.paths:
                    del self.mirrors[extra]
                    continue
                if self._send_on(extra, data):
                    self.stats["packets_mirrored"] += 1
        return ok

    def send_on(self, path: Path, data: bytes) -> bool:
        """Send one packet on a specific known path (not necessarily the current one)."""
        if path not in self.paths:
            self.stats["dropped_unknown_path"] += 1
            return False
        return self._send_on(path, data)

    def _send_on(self, path: Path, data: bytes) -> bool:
        state = self.paths[path]
        try:
            state.sender(data)
        except OSError as exc:  # a closed socket: the packet is lost as UDP would lose it
            state.send_errors += 1
            self.stats["send_errors"] += 1
            log.debug("send on %s failed: %s", path, exc)
            return False
        state.packets_sent += 1
        state.bytes_sent += len(data)
        state.last_sent = self.clock()
        self.stats["packets_sent"] += 1
        return True

    def received(self, path: Path, size: int) -> bool:
        """Account a packet that arrived on ``path``; False (counted) if the path is unknown."""
        state = self.paths.get(path)
        if state is None:
            self.stats["dropped_unknown_path"] += 1
            return False
        state.packets_received += 1
        state.bytes_received += size
        state.last_received = self.clock()
        self.stats["packets_received"] += 1
        return True

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per-path counters, keyed by the path's text form (for ``Connection.stats``)."""
        return {
            str(p): {
                "kind": p.kind,
                "current": p == self.current,
                "packets_sent": s.packets_sent,
                "packets_received": s.packets_received,
                "bytes_sent": s.bytes_sent,
                "bytes_received": s.bytes_received,
                "send_errors": s.send_errors,
            }
            for p, s in self.paths.items()
        }
