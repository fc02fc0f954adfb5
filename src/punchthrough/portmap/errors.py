"""Typed port-mapping errors: every gateway refusal maps to one class the caller can act on.

The protocols' result codes (RFC 6886 section 3.5, RFC 6887 section 7.4) are mapped by
:func:`natpmp_error` and :func:`pcp_error`; UPnP SOAP faults become :class:`PortMapRefused`.
"""

from __future__ import annotations

from typing import Final

from punchthrough.portmap import natpmp_wire as pmp
from punchthrough.portmap import pcp_wire as pcp

#: Protocol names used in errors, reports and JSON.
NAT_PMP: Final = "nat-pmp"
PCP: Final = "pcp"
UPNP: Final = "upnp"


class PortMapError(Exception):
    """Base class. ``protocol`` is ``nat-pmp``, ``pcp``, ``upnp`` or ``""`` (no protocol)."""

    def __init__(
        self, message: str, *, protocol: str = "", code: int | None = None, lifetime: int = 0
    ) -> None:
        super().__init__(message)
        self.protocol = protocol
        #: The protocol's result code (UPnP: the SOAP error code), when the gateway sent one.
        self.code = code
        #: PCP: how long the gateway says the error holds (RFC 6887 section 7.2), else 0.
        self.lifetime = lifetime


class PortMapTimeout(PortMapError, TimeoutError):
    """No answer from the gateway within the retransmission schedule or the time cap."""


class PortMapUnsupported(PortMapError):
    """The gateway does not speak this protocol, version or opcode."""


class PortMapNotAuthorized(PortMapError):
    """Policy refusal (NAT-PMP 2, PCP NOT_AUTHORIZED; also a PCP nonce mismatch on the server)."""


class PortMapNetworkFailure(PortMapError):
    """The gateway has no usable external address right now (NAT-PMP 3, PCP NETWORK_FAILURE)."""


class PortMapNoResources(PortMapError):
    """Mapping table full or quota exceeded (NAT-PMP 4, PCP NO_RESOURCES / USER_EX_QUOTA)."""


class PortMapAddressMismatch(PortMapError):
    """PCP ADDRESS_MISMATCH: the client IP in our request is not the address the server saw."""


class PortMapRefused(PortMapError):
    """Any other refusal: malformed request or option, unsupported option or protocol, ..."""


def natpmp_error(result: int) -> PortMapError:
    """The typed error for a NAT-PMP result code (RFC 6886 section 3.5)."""
    names = {
        pmp.RESULT_UNSUPPORTED_VERSION: (PortMapUnsupported, "unsupported version"),
        pmp.RESULT_NOT_AUTHORIZED: (PortMapNotAuthorized, "not authorized/refused"),
        pmp.RESULT_NETWORK_FAILURE: (PortMapNetworkFailure, "network failure"),
        pmp.RESULT_OUT_OF_RESOURCES: (PortMapNoResources, "out of resources"),
        pmp.RESULT_UNSUPPORTED_OPCODE: (PortMapUnsupported, "unsupported opcode"),
    }
    cls, name = names.get(result, (PortMapRefused, "unknown result code"))
    return cls(f"NAT-PMP result {result} ({name})", protocol=NAT_PMP, code=result)


_PCP_ERRORS: Final[dict[int, tuple[type[PortMapError], str]]] = {
    pcp.UNSUPP_VERSION: (PortMapUnsupported, "UNSUPP_VERSION"),
    pcp.NOT_AUTHORIZED: (PortMapNotAuthorized, "NOT_AUTHORIZED"),
    pcp.MALFORMED_REQUEST: (PortMapRefused, "MALFORMED_REQUEST"),
    pcp.UNSUPP_OPCODE: (PortMapUnsupported, "UNSUPP_OPCODE"),
    pcp.UNSUPP_OPTION: (PortMapRefused, "UNSUPP_OPTION"),
    pcp.MALFORMED_OPTION: (PortMapRefused, "MALFORMED_OPTION"),
    pcp.NETWORK_FAILURE: (PortMapNetworkFailure, "NETWORK_FAILURE"),
    pcp.NO_RESOURCES: (PortMapNoResources, "NO_RESOURCES"),
    pcp.UNSUPP_PROTOCOL: (PortMapRefused, "UNSUPP_PROTOCOL"),
    pcp.USER_EX_QUOTA: (PortMapNoResources, "USER_EX_QUOTA"),
    pcp.CANNOT_PROVIDE_EXTERNAL: (PortMapRefused, "CANNOT_PROVIDE_EXTERNAL"),
    pcp.ADDRESS_MISMATCH: (PortMapAddressMismatch, "ADDRESS_MISMATCH"),
    pcp.EXCESSIVE_REMOTE_PEERS: (PortMapRefused, "EXCESSIVE_REMOTE_PEERS"),
}


def pcp_error(result: int, lifetime: int = 0) -> PortMapError:
    """The typed error for a PCP result code (RFC 6887 section 7.4)."""
    cls, name = _PCP_ERRORS.get(result, (PortMapRefused, "unknown result code"))
    return cls(f"PCP result {result} ({name})", protocol=PCP, code=result, lifetime=lifetime)
