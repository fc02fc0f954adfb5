"""The path manager state machine, the echo frame codec and the QUIC size budget (no I/O)."""

from __future__ import annotations

import pytest

from punchthrough.apps.echo import make_frame, parse_frame
from punchthrough.endpoint.config import (
    MAX_DATAGRAM_PAYLOAD,
    QUIC_MAX_DATAGRAM_SIZE,
    EndpointConfig,
    quic_configuration,
)
from punchthrough.identity import Identity
from punchthrough.relay.frames import DATA_HEADER_LENGTH, MAX_RELAY_PAYLOAD
from punchthrough.transport.path import VIRTUAL_PEER_ADDRESS, Path, PathManager

RELAY = Path.relay(("198.51.100.20", 3478))
RELAY2 = Path.relay(("198.51.100.30", 3478))
DIRECT = Path.direct(("10.0.1.2", 5000), ("203.0.113.2", 40000))


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_first_path_is_current_without_a_change() -> None:
    pm = PathManager(clock=Clock())
    sent: list[bytes] = []
    pm.add(RELAY, sent.append)
    assert pm.current == RELAY and pm.kind == "relay" and pm.changes == []
    assert pm.send(b"x") and sent == [b"x"]
    assert pm.paths[RELAY].packets_sent == 1 and pm.paths[RELAY].bytes_sent == 1


def test_switch_records_time_and_reason_and_routes() -> None:
    clock = Clock()
    pm = PathManager(clock=clock)
    relay_out: list[bytes] = []
    direct_out: list[bytes] = []
    pm.add(RELAY, relay_out.append)
    pm.add(DIRECT, direct_out.append)
    assert pm.current == RELAY  # adding a path does not switch to it
    clock.t = 101.5
    assert pm.switch_to(DIRECT, "check succeeded")
    assert not pm.switch_to(DIRECT, "again")  # no-op, not recorded
    pm.send(b"d")
    assert direct_out == [b"d"] and relay_out == []
    (change,) = pm.changes
    assert change.to_json(origin=100.0) == {
        "t_ms": 1500.0,
        "from": "relay",
        "to": "direct",
        "from_path": str(RELAY),
        "to_path": str(DIRECT),
        "reason": "check succeeded",
    }


def test_removing_current_falls_back_to_a_relay_then_to_none() -> None:
    pm = PathManager(clock=Clock())
    pm.add(DIRECT, lambda d: None)
    pm.add(RELAY, lambda d: None)
    pm.switch_to(DIRECT, "x")
    pm.remove(DIRECT, "no answer")
    assert pm.current == RELAY and "no answer" in pm.changes[-1].reason
    pm.remove(RELAY, "registration lost")
    assert pm.current is None and pm.kind == "none"
    assert not pm.send(b"x") and pm.stats["dropped_no_path"] == 1
    pm.add(RELAY2, lambda d: None)  # recovery after losing every path is recorded
    assert pm.current == RELAY2 and pm.changes[-1].to == RELAY2
    pm.remove(DIRECT, "unknown: ignored")


def test_unknown_paths_are_refused_and_counted() -> None:
    pm = PathManager(clock=Clock())
    pm.add(RELAY, lambda d: None)
    with pytest.raises(KeyError):
        pm.switch_to(DIRECT, "not added")
    assert not pm.received(DIRECT, 10) and pm.stats["dropped_unknown_path"] == 1
    assert pm.received(RELAY, 10) and pm.paths[RELAY].last_received == 100.0


def test_send_error_is_counted_not_raised() -> None:
    def broken(data: bytes) -> None:
        raise OSError("socket closed")

    pm = PathManager(clock=Clock())
    pm.add(RELAY, broken)
    assert not pm.send(b"x")
    assert pm.stats["send_errors"] == 1 and pm.paths[RELAY].send_errors == 1


def test_path_text_forms_and_virtual_address() -> None:
    assert str(RELAY) == "relay 198.51.100.20:3478"
    assert str(DIRECT) == "direct 10.0.1.2:5000 -> 203.0.113.2:40000"
    assert VIRTUAL_PEER_ADDRESS[1] == 0  # unsendable on purpose


def test_echo_frames_detect_any_alteration() -> None:
    frame = make_frame(7, 123456, 160)
    assert len(frame) == 160 and parse_frame(frame) == (7, 123456)
    for i in range(len(frame)):
        bad = frame[:i] + bytes([frame[i] ^ 1]) + frame[i + 1 :]
        assert parse_frame(bad) is None
    assert parse_frame(frame[:10]) is None
    with pytest.raises(ValueError):
        make_frame(1, 1, 8)


def test_quic_packets_fit_relay_frames() -> None:
    cfg = quic_configuration(Identity.generate(), is_client=True, config=EndpointConfig())
    assert cfg.max_datagram_size == QUIC_MAX_DATAGRAM_SIZE <= MAX_RELAY_PAYLOAD
    assert DATA_HEADER_LENGTH + QUIC_MAX_DATAGRAM_SIZE <= DATA_HEADER_LENGTH + MAX_RELAY_PAYLOAD
    assert cfg.alpn_protocols == ["punchthrough/1"] and cfg.max_datagram_frame_size
    assert 1100 < MAX_DATAGRAM_PAYLOAD < QUIC_MAX_DATAGRAM_SIZE


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        EndpointConfig(idle_timeout=5, keepalive_interval=5)
    with pytest.raises(ValueError):
        EndpointConfig(accept_backlog=0)
