"""STUN (RFC 8489) with RFC 5780 NAT behaviour discovery: codec, transactions, client, server.

Layers, bottom up: :mod:`.attributes` (with :mod:`.attribute_values` and the ICE ones in
:mod:`.ice_attributes`) and :mod:`.message` (pure codec), :mod:`.transaction`
(sans-IO retransmission), :mod:`.client` and :mod:`.server` (asyncio adapters over
:mod:`punchthrough.netio`). The server's decision logic is the sans-IO :class:`StunServerCore`.
"""

from punchthrough.stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    MessageIntegrity,
    OtherAddress,
    Padding,
    RawAttribute,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttributes,
    Username,
    XorMappedAddress,
)
from punchthrough.stun.client import BindingResult, StunClient
from punchthrough.stun.constants import AttributeType, IceAttributeType
from punchthrough.stun.errors import (
    StunDecodeError,
    StunError,
    StunErrorResponse,
    StunFamilyMismatch,
    StunTimeout,
)
from punchthrough.stun.ice_attributes import (
    IceAttributes,
    IceControlled,
    IceControlling,
    Priority,
    UseCandidate,
    ice_attributes,
)
from punchthrough.stun.message import (
    Message,
    MessageClass,
    Method,
    decode_message,
    encode,
    long_term_key,
    looks_like_stun,
    new_transaction_id,
    short_term_key,
)
from punchthrough.stun.ratelimit import RateLimit, SourceRateLimiter
from punchthrough.stun.server import ServerAction, StunServer, StunServerCore
from punchthrough.stun.transaction import (
    ClientTransaction,
    RetransmissionPolicy,
    TransactionState,
    TransactionTable,
    Transmit,
)

__all__ = [
    "Attribute",
    "AttributeType",
    "BindingResult",
    "ChangeRequest",
    "ClientTransaction",
    "ErrorCode",
    "Fingerprint",
    "IceAttributeType",
    "IceAttributes",
    "IceControlled",
    "IceControlling",
    "MappedAddress",
    "Message",
    "MessageClass",
    "MessageIntegrity",
    "Method",
    "OtherAddress",
    "Padding",
    "Priority",
    "RateLimit",
    "RawAttribute",
    "ResponseOrigin",
    "ResponsePort",
    "RetransmissionPolicy",
    "ServerAction",
    "Software",
    "SourceRateLimiter",
    "StunClient",
    "StunDecodeError",
    "StunError",
    "StunErrorResponse",
    "StunFamilyMismatch",
    "StunServer",
    "StunServerCore",
    "StunTimeout",
    "TransactionState",
    "TransactionTable",
    "Transmit",
    "UnknownAttributes",
    "UseCandidate",
    "Username",
    "XorMappedAddress",
    "decode_message",
    "encode",
    "ice_attributes",
    "long_term_key",
    "looks_like_stun",
    "new_transaction_id",
    "short_term_key",
]
