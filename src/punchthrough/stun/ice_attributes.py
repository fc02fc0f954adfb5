"""The ICE attributes of connectivity checks (RFC 8445 section 7.1).

Encoded like any attribute; decoded only on request (:func:`ice_attributes`), from the
:class:`~punchthrough.stun.attributes.RawAttribute` the codec keeps, so that a plain STUN server
still rejects PRIORITY (comprehension-required, not implemented there) with 420.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from punchthrough.stun.attribute_values import require_length
from punchthrough.stun.attributes import Attribute, RawAttribute
from punchthrough.stun.constants import (
    PRIORITY_VALUE_LENGTH,
    TIEBREAKER_VALUE_LENGTH,
    IceAttributeType,
)
from punchthrough.stun.errors import StunDecodeError


@dataclass(frozen=True)
class Priority(Attribute):
    """The priority the sender would give a peer-reflexive candidate (RFC 8445 section 7.1.1)."""

    TYPE: ClassVar[int] = IceAttributeType.PRIORITY
    value: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.to_bytes(PRIORITY_VALUE_LENGTH, "big")


@dataclass(frozen=True)
class UseCandidate(Attribute):
    """The controlling agent nominates this pair (RFC 8445 section 7.1.2)."""

    TYPE: ClassVar[int] = IceAttributeType.USE_CANDIDATE

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""


@dataclass(frozen=True)
class IceControlling(Attribute):
    """The sender is the controlling agent; ``tiebreaker`` resolves role conflicts (7.1.3)."""

    TYPE: ClassVar[int] = IceAttributeType.ICE_CONTROLLING
    tiebreaker: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.tiebreaker.to_bytes(TIEBREAKER_VALUE_LENGTH, "big")


@dataclass(frozen=True)
class IceControlled(Attribute):
    """The sender is the controlled agent (RFC 8445 section 7.1.3)."""

    TYPE: ClassVar[int] = IceAttributeType.ICE_CONTROLLED
    tiebreaker: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.tiebreaker.to_bytes(TIEBREAKER_VALUE_LENGTH, "big")


@dataclass(frozen=True)
class IceAttributes:
    """The ICE attributes of one message, interpreted (absent ones are ``None``/False)."""

    priority: int | None = None
    use_candidate: bool = False
    controlling: int | None = None
    controlled: int | None = None


def ice_attributes(attributes: list[Attribute]) -> IceAttributes:
    """Interpret the ICE attributes kept raw by the codec. Raises only :class:`StunDecodeError`.

    The first copy of each counts (the codec keeps duplicates of raw attributes in order).
    """
    values: dict[int, bytes] = {}
    for attr in attributes:
        if isinstance(attr, RawAttribute) and attr.type in IceAttributeType._value2member_map_:
            values.setdefault(attr.type, attr.value)
    priority = values.get(IceAttributeType.PRIORITY)
    if priority is not None:
        require_length(priority, "PRIORITY", PRIORITY_VALUE_LENGTH)
    use = values.get(IceAttributeType.USE_CANDIDATE)
    if use is not None and use:
        raise StunDecodeError(f"USE-CANDIDATE: value must be empty, got {len(use)} bytes")
    ties: dict[int, int] = {}
    for kind, name in (
        (IceAttributeType.ICE_CONTROLLING, "ICE-CONTROLLING"),
        (IceAttributeType.ICE_CONTROLLED, "ICE-CONTROLLED"),
    ):
        raw = values.get(kind)
        if raw is not None:
            require_length(raw, name, TIEBREAKER_VALUE_LENGTH)
            ties[kind] = int.from_bytes(raw, "big")
    return IceAttributes(
        priority=int.from_bytes(priority, "big") if priority is not None else None,
        use_candidate=use is not None,
        controlling=ties.get(IceAttributeType.ICE_CONTROLLING),
        controlled=ties.get(IceAttributeType.ICE_CONTROLLED),
    )
