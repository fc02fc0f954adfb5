"""The relay map of a fleet: which relays exist (id, addresses, key, region), from code, a
JSON or TOML file, or ``--relay`` arguments; and peer addresses with a home-relay hint.

File format (JSON; TOML is the same with ``[[relays]]`` tables)::

    {"relays": [
      {"id": "fra-1", "addresses": ["198.51.100.20:3478"], "key": "pt1...", "region": "eu"},
      {"id": "nyc-1", "addresses": ["203.0.113.7:3478", "[2001:db8::7]:3478"]}
    ]}

``key`` (optional) pins the relay's identity (its certificate's peer id). A peer address is
``pt1...@fra-1``: the peer id and its home relay's id, as iroh's node address carries its home
relay, so a dialer can skip the directory lookup.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from punchthrough.endpoint.relays import RelaySpec, parse_relay
from punchthrough.identity import PeerId
from punchthrough.netio import Address

#: Relay ids: short, printable, no '@' (it separates a peer id from its hint).
MAX_RELAY_ID = 64


class RelayMapError(ValueError):
    """A relay map (file or arguments) is not valid; the message says where."""


def check_relay_id(relay_id: str) -> str:
    if (
        not relay_id
        or len(relay_id) > MAX_RELAY_ID
        or "@" in relay_id
        or not relay_id.isprintable()
    ):
        raise RelayMapError(f"relay id {relay_id!r}: 1-{MAX_RELAY_ID} printable characters, no '@'")
    return relay_id


@dataclass(frozen=True, slots=True)
class RelayInfo:
    id: str
    addresses: tuple[Address, ...]
    key: PeerId | None = None
    region: str = ""

    @property
    def address(self) -> Address:
        """The address we register at (the first one)."""
        return self.addresses[0]


class RelayMap:
    """Relays by id, in the order given (the order breaks RTT ties)."""

    def __init__(self, relays: Iterable[RelayInfo]) -> None:
        self._by_id: dict[str, RelayInfo] = {}
        self._by_addr: dict[Address, RelayInfo] = {}
        for r in relays:
            if r.id in self._by_id:
                raise RelayMapError(f"relay id {r.id!r} appears twice")
            if not r.addresses:
                raise RelayMapError(f"relay {r.id!r} has no address")
            self._by_id[r.id] = r
            for a in r.addresses:
                if a in self._by_addr:
                    raise RelayMapError(f"address {a[0]}:{a[1]} belongs to two relays")
                self._by_addr[a] = r
        if not self._by_id:
            raise RelayMapError("a relay map needs at least one relay")

    @classmethod
    def from_specs(cls, specs: Sequence[RelaySpec | RelayInfo]) -> RelayMap:
        """``["198.51.100.20:3478", "fra-1=198.51.100.21:3478", RelayInfo(...)]``; a relay
        without an id is known by its ``IP:PORT``."""
        out: list[RelayInfo] = []
        for spec in specs:
            if isinstance(spec, RelayInfo):
                out.append(spec)
                continue
            name = None
            if isinstance(spec, str) and "=" in spec:
                name, _, spec = spec.partition("=")
            try:
                addr = parse_relay(spec)
            except ValueError as exc:
                raise RelayMapError(str(exc)) from None
            rid = check_relay_id(name.strip()) if name is not None else _addr_id(addr)
            out.append(RelayInfo(rid, (addr,)))
        return cls(out)

    @classmethod
    def from_dict(cls, doc: Any, where: str = "relay map") -> RelayMap:
        if not isinstance(doc, dict) or not isinstance(doc.get("relays"), list):
            raise RelayMapError(f"{where}: expected a 'relays' list")
        out: list[RelayInfo] = []
        for i, item in enumerate(doc["relays"]):
            at = f"{where}: relays[{i}]"
            if not isinstance(item, dict):
                raise RelayMapError(f"{at}: expected a table/object")
            unknown = set(item) - {"id", "addresses", "key", "region"}
            if unknown:
                raise RelayMapError(f"{at}: unknown field(s) {sorted(unknown)}")
            addrs = item.get("addresses")
            if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
                raise RelayMapError(f"{at}: 'addresses' must be a list of 'IP:PORT' strings")
            try:
                rid = check_relay_id(str(item.get("id", "")))
                parsed = tuple(parse_relay(a) for a in addrs)
                key = PeerId.parse(item["key"]) if item.get("key") else None
            except ValueError as exc:
                raise RelayMapError(f"{at}: {exc}") from None
            region = item.get("region", "")
            if not isinstance(region, str):
                raise RelayMapError(f"{at}: 'region' must be a string")
            out.append(RelayInfo(rid, parsed, key, region))
        try:
            return cls(out)
        except RelayMapError as exc:
            raise RelayMapError(f"{where}: {exc}") from None

    @classmethod
    def load(cls, path: Path | str) -> RelayMap:
        """A JSON (``.json``) or TOML (any other suffix) relay map file."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise RelayMapError(f"{p}: {exc.strerror or exc}") from None
        try:
            doc = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise RelayMapError(f"{p}: {exc}") from None
        return cls.from_dict(doc, str(p))

    def __iter__(self) -> Iterator[RelayInfo]:
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def ids(self) -> list[str]:
        return list(self._by_id)

    def get(self, relay_id: str) -> RelayInfo | None:
        return self._by_id.get(relay_id)

    def by_address(self, addr: Address) -> RelayInfo | None:
        return self._by_addr.get(addr)


def _addr_id(addr: Address) -> str:
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"


def fleet_map(specs: Sequence[RelaySpec]) -> RelayMap | None:
    """A relay map when every relay is given with an id (``"r1=IP:PORT"``), else None."""
    if specs and all(isinstance(r, str) and "=" in r for r in specs):
        return RelayMap.from_specs(list(specs))
    return None


def parse_peer_address(text: str) -> tuple[PeerId, str | None]:
    """``pt1...`` or ``pt1...@relay-id`` -> (peer id, relay id hint or None)."""
    peer_text, sep, hint = text.strip().partition("@")
    peer = PeerId.parse(peer_text)
    return peer, (check_relay_id(hint) if sep else None)
