"""Reason codes of the waterfall: what code decides on (the prose beside them is for people).

One enum for the planner (why a stage runs or is skipped), the race (why a stage ended) and the
stage executors (why an attempt failed), so a report row and a test name the same fact.
"""

from __future__ import annotations

import enum


class Why(enum.StrEnum):
    NONE = "none"
    # -- the planner (traversal.hardnat.plan) --
    UDP_BLOCKED = "udp-blocked"
    PORT_MAPPING_OFFERED = "port-mapping-offered"
    NO_PORT_MAPPING = "no-port-mapping"
    PUNCH_EXPECTED = "punch-expected"
    PUNCH_NOT_EXPECTED = "punch-not-expected"
    PUNCH_MAY_WORK = "punch-may-work"
    #: A hard stage is not needed: the hole punch suffices for this pair.
    PUNCH_SUFFICES = "punch-suffices"
    #: Birthday skipped: the hard side is sequential, port prediction is cheaper.
    PREDICTION_CHEAPER = "prediction-cheaper"
    NOTHING_TO_PREDICT = "nothing-to-predict"
    MAPPING_UNKNOWN = "mapping-unknown"
    #: Both sides endpoint-dependent: the birthday attack cannot work (mutual prediction may).
    BOTH_DEPENDENT = "both-dependent"
    #: No direct stage can work for this pair: the call stays on the relay.
    STAYS_ON_RELAY = "stays-on-relay"
    #: The peers have no address family in common (IPv6-only and IPv4-only): relay only.
    NO_COMMON_FAMILY = "no-common-family"
    DISABLED = "disabled"
    UNLIKELY = "unlikely"
    STAGE_RUNS = "stage-runs"
    RELAY_FIRST = "relay-first"
    # -- the race (traversal.race) --
    #: Skipped once a direct path was found (the stage was still pending).
    DIRECT_FOUND = "direct-found"
    #: Skipped because another hard stage found the path.
    OTHER_STAGE_FOUND = "other-stage-found"
    #: Skipped: a port-mapped pair answered first.
    PORT_MAPPING_FIRST = "port-mapping-first"
    BEATEN = "beaten"
    ROUND_UNANSWERED = "round-unanswered"
    NO_MAPPED_ANSWER = "no-mapped-answer"
    # -- the stage executors (traversal.hard) --
    NO_SOCKETS = "no-sockets"
    TOO_FEW_SAMPLES = "too-few-samples"
    NO_PEER_PROBE = "no-peer-probe"
    UNANSWERED = "unanswered"
