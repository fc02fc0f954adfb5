"""Relay maps (JSON, TOML, --relay arguments) and peer addresses with a home-relay hint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from punchthrough.endpoint.relaymap import RelayMap, RelayMapError, parse_peer_address
from punchthrough.identity import Identity


def test_json_and_toml_maps_say_the_same(tmp_path: Path) -> None:
    key = Identity.generate().peer_id
    doc = {
        "relays": [
            {"id": "fra-1", "addresses": ["198.51.100.20:3478"], "key": str(key), "region": "eu"},
            {"id": "nyc-1", "addresses": ["203.0.113.7:3478", "[2001:db8::7]:3478"]},
        ]
    }
    (tmp_path / "m.json").write_text(json.dumps(doc))
    (tmp_path / "m.toml").write_text(
        f'[[relays]]\nid = "fra-1"\naddresses = ["198.51.100.20:3478"]\nkey = "{key}"\n'
        'region = "eu"\n\n[[relays]]\nid = "nyc-1"\n'
        'addresses = ["203.0.113.7:3478", "[2001:db8::7]:3478"]\n'
    )
    for name in ("m.json", "m.toml"):
        m = RelayMap.load(tmp_path / name)
        assert m.ids() == ["fra-1", "nyc-1"]
        fra = m.get("fra-1")
        assert fra is not None and fra.key == key and fra.region == "eu"
        nyc = m.by_address(("2001:db8::7", 3478))
        assert nyc is not None and nyc.id == "nyc-1" and nyc.address == ("203.0.113.7", 3478)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({}, "'relays' list"),
        ({"relays": [{"id": "a", "addresses": ["x:1"]}]}, r"relays\[0\].*not an IP"),
        ({"relays": [{"id": "a@b", "addresses": ["198.51.100.1:1"]}]}, "no '@'"),
        ({"relays": [{"id": "a", "addresses": []}]}, "no address"),
        ({"relays": [{"id": "a", "addresses": ["198.51.100.1:1"], "colour": 1}]}, "unknown"),
        (
            {"relays": [{"id": "a", "addresses": ["198.51.100.1:1"]}] * 2},
            "appears twice",
        ),
        ({"relays": [{"id": "a", "addresses": ["198.51.100.1:1"], "key": "pt1nope"}]}, "a"),
    ],
)
def test_bad_maps_say_where(doc: object, match: str) -> None:
    with pytest.raises(RelayMapError, match=match):
        RelayMap.from_dict(doc)


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(RelayMapError, match=r"nothing\.json"):
        RelayMap.load(tmp_path / "nothing.json")
    (tmp_path / "bad.toml").write_text("relays = [")
    with pytest.raises(RelayMapError, match=r"bad\.toml"):
        RelayMap.load(tmp_path / "bad.toml")


def test_specs_with_and_without_ids() -> None:
    m = RelayMap.from_specs(["198.51.100.1:3478", "b=198.51.100.2:3478", ("2001:db8::1", 9)])
    assert m.ids() == ["198.51.100.1:3478", "b", "[2001:db8::1]:9"]


def test_peer_address_with_and_without_hint() -> None:
    peer = Identity.generate().peer_id
    assert parse_peer_address(str(peer)) == (peer, None)
    assert parse_peer_address(f"{peer}@fra-1") == (peer, "fra-1")
    with pytest.raises(ValueError):
        parse_peer_address(f"{peer}@")
