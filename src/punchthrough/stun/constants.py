"""Protocol numbers for STUN (RFC 8489) and NAT behaviour discovery (RFC 5780).

Every number used by the codec, the transactions and the server lives here, next to the RFC
section that defines it, so that a reviewer can check each one against its source.
"""

from __future__ import annotations

from enum import IntEnum

#: Fixed value in every RFC 5389/8489 header; RFC 3489 messages lack it (RFC 8489 §5).
MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
#: Message header: type (2), length (2), cookie (4), transaction id (12) (RFC 8489 §5).
HEADER_LENGTH = 20
#: 96-bit transaction id (RFC 8489 §5).
TRANSACTION_ID_LENGTH = 12
#: The two most significant bits of every STUN message are zero (RFC 8489 §5).
HEADER_ZERO_BITS_MASK = 0xC0
#: Attributes are type (2) + length (2) + value padded to a multiple of 4 (RFC 8489 §14).
ATTRIBUTE_HEADER_LENGTH = 4
ATTRIBUTE_ALIGNMENT = 4
#: Types 0x0000-0x7FFF are comprehension-required, 0x8000-0xFFFF optional (RFC 8489 §14, §18.3).
COMPREHENSION_OPTIONAL_START = 0x8000

#: Most attributes one message may carry; the decoder refuses more before doing more work, so a
#: 1,500-byte datagram of 370 empty attributes costs the walk of 33, not 370 (issue 12). Not an
#: RFC number: the largest legitimate messages hold about a dozen. An ICE check (RFC 8445
#: §7.1) has USERNAME, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE, MESSAGE-INTEGRITY,
#: MESSAGE-INTEGRITY-SHA256, FINGERPRINT, maybe SOFTWARE (8), and browsers add a few vendor
#: attributes (GOOG-NETWORK-INFO, NOMINATION: ~11); an RFC 5780 answer has XOR-MAPPED-ADDRESS,
#: MAPPED-ADDRESS, OTHER-ADDRESS, RESPONSE-ORIGIN, PADDING, SOFTWARE, FINGERPRINT (7); a TURN
#: Allocate (RFC 8656) about 13. 32 leaves more than twice that.
MAX_ATTRIBUTES = 32

#: FINGERPRINT = CRC-32 of the message XORed with this constant ("STUN") (RFC 8489 §14.7).
FINGERPRINT_XOR = 0x5354554E
#: FINGERPRINT value length (RFC 8489 §14.7).
FINGERPRINT_VALUE_LENGTH = 4
#: MESSAGE-INTEGRITY is a 20-byte HMAC-SHA1 (RFC 8489 §14.5).
MESSAGE_INTEGRITY_VALUE_LENGTH = 20

#: Address families in (XOR-)MAPPED-ADDRESS and friends (RFC 8489 §14.1).
FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02
#: Value lengths: reserved(1) family(1) port(2) + 4 or 16 address bytes (RFC 8489 §14.1).
ADDRESS_IPV4_VALUE_LENGTH = 8
ADDRESS_IPV6_VALUE_LENGTH = 20

#: USERNAME is fewer than 513 bytes (RFC 5389 §15.3; RFC 8489 §14.3 lowers senders to 509).
MAX_USERNAME_BYTES = 512
#: SOFTWARE and the ERROR-CODE reason are at most 763 bytes (RFC 8489 §14.14, §14.8).
MAX_SOFTWARE_BYTES = 763
MAX_REASON_BYTES = 763
#: ERROR-CODE class (hundreds digit) is 3..6 and number 0..99 (RFC 8489 §14.8).
ERROR_CLASS_MIN = 3
ERROR_CLASS_MAX = 6
ERROR_NUMBER_MAX = 99
#: ERROR-CODE header: 21 reserved bits, 3-bit class, 8-bit number (RFC 8489 §14.8).
ERROR_CODE_HEADER_LENGTH = 4
ERROR_CLASS_MASK = 0x07

#: CHANGE-REQUEST flag bits in the 32-bit value (RFC 5780 §7.2).
CHANGE_IP_FLAG = 0x04
CHANGE_PORT_FLAG = 0x02
#: CHANGE-REQUEST and RESPONSE-PORT values are 4 bytes (RFC 5780 §7.2, §7.5).
CHANGE_REQUEST_VALUE_LENGTH = 4
RESPONSE_PORT_VALUE_LENGTH = 4

#: Client retransmission defaults (RFC 8489 §6.2.1): initial RTO 500 ms, Rc = 7 sends in total
#: (so 6 retransmissions), and a final wait of Rm = 16 times the initial RTO.
DEFAULT_RTO = 0.5
DEFAULT_MAX_RETRANSMITS = 6
DEFAULT_RM = 16

#: Anti-amplification factor for the server: a response is never more than this many times the
#: request's size, the bound QUIC uses towards unvalidated addresses (RFC 9000 §8.1).
AMPLIFICATION_FACTOR = 3.0


class AttributeType(IntEnum):
    """Attribute type codes this package interprets (RFC 8489 §18.3, RFC 5780 §9.1)."""

    MAPPED_ADDRESS = 0x0001  # RFC 8489 §14.1
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    USERNAME = 0x0006  # RFC 8489 §14.3
    MESSAGE_INTEGRITY = 0x0008  # RFC 8489 §14.5
    ERROR_CODE = 0x0009  # RFC 8489 §14.8
    UNKNOWN_ATTRIBUTES = 0x000A  # RFC 8489 §14.9
    XOR_MAPPED_ADDRESS = 0x0020  # RFC 8489 §14.2
    PADDING = 0x0026  # RFC 5780 §7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 §7.5
    SOFTWARE = 0x8022  # RFC 8489 §14.14
    FINGERPRINT = 0x8028  # RFC 8489 §14.7
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 §7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 §7.4


class ErrorCodes(IntEnum):
    """Error codes used here (RFC 8489 §14.8)."""

    BAD_REQUEST = 400
    UNKNOWN_ATTRIBUTE = 420


#: Reason phrases recommended by RFC 8489 §14.8.
REASON_PHRASES: dict[int, str] = {
    ErrorCodes.BAD_REQUEST: "Bad Request",
    ErrorCodes.UNKNOWN_ATTRIBUTE: "Unknown Attribute",
}


class IceAttributeType(IntEnum):
    """ICE connectivity-check attributes (RFC 8445 section 16.1).

    Kept apart from :class:`AttributeType` on purpose: the codec keeps these as
    :class:`~punchthrough.stun.attributes.RawAttribute` (so a plain STUN server still rejects
    PRIORITY, a comprehension-required type it does not implement, with 420), and only the
    connectivity-check engine interprets them, with :func:`~punchthrough.stun.ice_attributes.
    ice_attributes`.
    """

    PRIORITY = 0x0024  # RFC 8445 section 16.1
    USE_CANDIDATE = 0x0025  # RFC 8445 section 16.1
    ICE_CONTROLLED = 0x8029  # RFC 8445 section 16.1
    ICE_CONTROLLING = 0x802A  # RFC 8445 section 16.1


#: PRIORITY is a 32-bit value; ICE-CONTROLLED/-CONTROLLING carry a 64-bit tie-breaker and
#: USE-CANDIDATE is empty (RFC 8445 section 7.1.1, 7.1.2, 7.1.3).
PRIORITY_VALUE_LENGTH = 4
TIEBREAKER_VALUE_LENGTH = 8
