"""Every message peers and relays exchange, as one msgspec tagged union.

Rules that keep a hostile peer from hurting us: every struct is frozen and forbids unknown
fields; every string, bytes and list field has a length cap and every integer a range, so one
decoded message is small and bounded (checked by ``decode``, which also checks that a whole
message fits in :data:`~punchthrough.signal.codec.MAX_MESSAGE_SIZE`). ``omit_defaults`` means a
field added later with a default is not sent unless set, so it can be introduced behind a
``Hello.features`` flag without a version bump.

Times (``*_ms``) are milliseconds on the *sender's* clock (its event loop's clock); a receiver
maps them to its own clock with ``sent_at_ms`` and the round-trip time (``Ping``/``Pong``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from punchthrough.identity import PeerId

# --- bounds ---------------------------------------------------------------------------------

#: UDP ports on the wire: 0 is not a reachable port (RFC 768 source port 0 = "unused").
Port = Annotated[int, Meta(ge=1, le=65535)]
#: 32-bit unsigned (ICE priorities, RFC 8445 section 5.1.2; generations; nonces).
U32 = Annotated[int, Meta(ge=0, le=2**32 - 1)]
#: Milliseconds: non-negative and exact in a double (2**53), so JSON logs stay exact.
Millis = Annotated[int, Meta(ge=0, le=2**53)]
#: Call ids are chosen by the caller; restricted to a log-safe alphabet.
CallId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
#: IP literal text (validated by ``ipaddress`` in ``__post_init__``); 45 chars is the longest
#: IPv6 text (RFC 4291 section 2.2 with embedded IPv4), plus room for a zone id.
IpText = Annotated[str, Meta(min_length=2, max_length=64)]
#: A host name or IP literal (DNS names are at most 253 characters, RFC 1035 section 2.3.4).
HostText = Annotated[str, Meta(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:%-]+$")]
#: Free text meant for humans (reasons); capped.
Reason = Annotated[str, Meta(max_length=256)]
#: Ed25519 signature (RFC 8032 section 5.1.6).
Signature = Annotated[bytes, Meta(min_length=64, max_length=64)]
#: ICE foundation: 1-32 characters (RFC 8445 section 5.1.1.3).
Foundation = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9+/]+$")]
#: Signal protocol versions are small positive integers.
Version = Annotated[int, Meta(ge=1, le=65535)]
Feature = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$")]

#: Caps on list lengths (hostile peers must not make us allocate without bound).
MAX_VERSIONS: Final = 16
MAX_FEATURES: Final = 32
#: A host rarely has more than a handful of interfaces; ICE agents typically cap near this.
MAX_CANDIDATES: Final = 64
#: PRD: a HardNatProbe carries the recent port samples; 64 is far above the ~5-10 netcheck takes.
MAX_PORT_SEQUENCE: Final = 64
#: PRD birthday attack: the acceptor opens ~256 sockets; 1024 leaves room for tuning.
MAX_ACCEPTOR_PORTS: Final = 1024
MAX_RELAYS: Final = 16

CandidateKind = Literal["host", "srflx", "prflx", "mapped", "relay"]
#: Same strings as ``punchthrough.nat.Behavior`` values.
Behavior = Literal[
    "endpoint-independent", "address-dependent", "address-and-port-dependent", "unknown"
]
#: Same strings as ``punchthrough.nat.PortAllocation`` values.
AllocationKind = Literal["port-preserving", "sequential", "random", "unknown"]
PortMappingProtocol = Literal["nat-pmp", "pcp", "upnp"]
CheckStage = Literal["hole-punch", "port-prediction", "birthday"]
#: The PRD's allocation strings: "preserving", "random", "unknown" or "sequential:<delta>".
AllocationText = Annotated[
    str,
    Meta(max_length=20, pattern=r"^(preserving|random|unknown|sequential:[+-]?[1-9][0-9]{0,4})$"),
]
_SEQ = re.compile(r"^sequential:([+-]?[1-9][0-9]{0,4})$")
#: Port deltas cannot exceed the port space.
MAX_DELTA: Final = 65535

# Relay error codes (HTTP-like so they read naturally in logs).
RELAY_BAD_REQUEST: Final = 400
RELAY_UNAUTHORIZED: Final = 401  # bad signature / stale timestamp
RELAY_NOT_FOUND: Final = 404  # unknown peer id
RELAY_CONFLICT: Final = 409  # peer id registered by another connection
RELAY_UPGRADE_REQUIRED: Final = 426  # unsupported signal version
RELAY_RATE_LIMITED: Final = 429
RELAY_INTERNAL: Final = 500
RELAY_UNAVAILABLE: Final = 503  # the fleet directory cannot be reached (relay.directory)


def _check_ip(value: str | None, field: str) -> None:
    if value is None:
        return
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{field} {value!r} is not an IP address") from None


def format_allocation(kind: str, delta: int | None = None) -> str:
    """Netcheck's allocation kind (+ delta) -> the PRD's ``HardNatProbe.allocation`` string."""
    if kind == "sequential":
        if delta is None or delta == 0 or abs(delta) > MAX_DELTA:
            raise ValueError(f"sequential allocation needs a nonzero delta, got {delta}")
        return f"sequential:{delta}"
    if kind in ("port-preserving", "preserving"):
        return "preserving"
    if kind in ("random", "unknown"):
        return kind
    raise ValueError(f"unknown allocation kind {kind!r}")


def parse_allocation(text: str) -> tuple[AllocationKind, int | None]:
    """Inverse of :func:`format_allocation`: ``"sequential:-2"`` -> ``("sequential", -2)``."""
    m = _SEQ.match(text)
    if m:
        return "sequential", int(m.group(1))
    if text == "preserving":
        return "port-preserving", None
    if text == "random":
        return "random", None
    if text == "unknown":
        return "unknown", None
    raise ValueError(f"not an allocation string: {text!r}")


# --- structs --------------------------------------------------------------------------------


class _Struct(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True, kw_only=True
):
    """Plain (untagged) value inside a message."""


class Message(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
    kw_only=True,
    tag_field="type",
):
    """Base of every top-level signal message; the ``type`` field on the wire is its tag."""


class Candidate(_Struct, frozen=True, kw_only=True):
    """One transport address a peer can perhaps be reached at (RFC 8445 section 5.1.1)."""

    kind: CandidateKind
    address: IpText
    port: Port
    priority: U32
    foundation: Foundation

    def __post_init__(self) -> None:
        _check_ip(self.address, "candidate address")


class RelayAddress(_Struct, frozen=True, kw_only=True):
    host: HostText
    port: Port


CandidateTuple = Annotated[tuple[Candidate, ...], Meta(max_length=MAX_CANDIDATES)]


class Hello(Message, tag="hello", frozen=True, kw_only=True):
    """First message on a control stream (peer or relay): versions and features spoken.

    Both sides then use the highest common version (:func:`negotiate_version`).
    """

    versions: Annotated[tuple[Version, ...], Meta(min_length=1, max_length=MAX_VERSIONS)]
    software: Annotated[str, Meta(max_length=64)] = ""
    features: Annotated[tuple[Feature, ...], Meta(max_length=MAX_FEATURES)] = ()


class PeerAuth(Message, tag="peer-auth", frozen=True, kw_only=True):
    """Dialer -> acceptor: proof of identity, ``sign_exporter`` over the channel binding."""

    peer_id: PeerId
    signature: Signature


class Candidates(Message, tag="candidates", frozen=True, kw_only=True):
    """The initial candidate set (generation 0)."""

    candidates: CandidateTuple


class CandidateUpdate(Message, tag="candidate-update", frozen=True, kw_only=True):
    """A new candidate set after a network change; a higher generation replaces older ones."""

    generation: U32
    candidates: CandidateTuple


class NatReportSummary(Message, tag="nat-report", frozen=True, kw_only=True):
    """What netcheck learned, enough for the peer to choose waterfall stages."""

    udp: bool
    mapping: Behavior
    filtering: Behavior
    allocation: AllocationKind
    delta: Annotated[int, Meta(ge=-MAX_DELTA, le=MAX_DELTA)] | None = None
    port_range: tuple[Port, Port] | None = None
    public_ip: IpText | None = None
    preserves_port: bool | None = None
    hairpinning: bool | None = None
    port_mapping: Annotated[tuple[PortMappingProtocol, ...], Meta(max_length=3)] = ()
    binding_lifetime_ms: Millis | None = None

    def __post_init__(self) -> None:
        _check_ip(self.public_ip, "public_ip")
        if self.port_range is not None and self.port_range[0] > self.port_range[1]:
            raise ValueError(f"port_range {self.port_range} is reversed")
        if self.allocation == "sequential" and not self.delta:
            raise ValueError("sequential allocation needs a nonzero delta")


class HardNatProbe(Message, tag="hard-nat-probe", frozen=True, kw_only=True):
    """PRD phase B: fresh port samples so the peer can predict our next mapping."""

    call_id: CallId
    port_sequence: Annotated[tuple[Port, ...], Meta(min_length=1, max_length=MAX_PORT_SEQUENCE)]
    allocation: AllocationText
    probe_time_ms: Millis
    external_ip: IpText

    def __post_init__(self) -> None:
        _check_ip(self.external_ip, "external_ip")
        m = _SEQ.match(self.allocation)
        if m and abs(int(m.group(1))) > MAX_DELTA:
            raise ValueError(f"allocation delta in {self.allocation!r} exceeds {MAX_DELTA}")


class HardNatBirthdayStart(Message, tag="hard-nat-birthday-start", frozen=True, kw_only=True):
    """PRD phase C: the hard side has opened its sockets; the easy side starts at ``start_at_ms``.

    ``acceptor_ports`` may be shorter than ``acceptor_port_count`` (behind a random NAT the
    external ports are unknown; local ports are informational).
    """

    call_id: CallId
    acceptor_port_count: Annotated[int, Meta(ge=1, le=MAX_ACCEPTOR_PORTS)]
    acceptor_ports: Annotated[tuple[Port, ...], Meta(max_length=MAX_ACCEPTOR_PORTS)] = ()
    start_at_ms: Millis
    sent_at_ms: Millis | None = None

    def __post_init__(self) -> None:
        if len(self.acceptor_ports) > self.acceptor_port_count:
            raise ValueError(
                f"{len(self.acceptor_ports)} acceptor_ports but acceptor_port_count is "
                f"{self.acceptor_port_count}"
            )


class CheckStart(Message, tag="check-start", frozen=True, kw_only=True):
    """Agree when both sides start connectivity checks for a stage (simultaneous open).

    From the dialer: the moment both start. From the acceptor (it had the dialer's early offer):
    it started at ``start_at_ms`` already, so the dialer starts the moment it reads this."""

    call_id: CallId
    stage: CheckStage
    generation: U32 = 0
    start_at_ms: Millis
    sent_at_ms: Millis


class Ping(Message, tag="ping", frozen=True, kw_only=True):
    """Round-trip and clock-offset probe on a control stream."""

    nonce: U32
    sent_at_ms: Millis


class Pong(Message, tag="pong", frozen=True, kw_only=True):
    nonce: U32
    echo_sent_at_ms: Millis
    sent_at_ms: Millis


class Hangup(Message, tag="hangup", frozen=True, kw_only=True):
    """The sender ends the call; ``reason`` is for humans and logs."""

    reason: Reason = ""


class RelayRegister(Message, tag="relay-register", frozen=True, kw_only=True):
    """Client -> relay: register ``peer_id`` at the address this control connection uses.

    ``signature`` is ``sign_exporter(identity, channel_binding(conn),
    context=RELAY_REGISTER_CONTEXT)`` over the relay control connection, so it proves key
    possession for this connection only; ``timestamp_ms`` lets the relay order re-registrations.
    """

    peer_id: PeerId
    timestamp_ms: Millis
    signature: Signature
    #: A visit (relay fleet): reachable here for calls through this relay, but this is not our
    #: home, so the relay does not publish us in the fleet directory. Sent again on the same
    #: connection with ``False``, it makes this relay our home.
    visitor: bool = False


class RelayRegistered(Message, tag="relay-registered", frozen=True, kw_only=True):
    """Relay -> client: registered; what address the relay sees, how often to refresh."""

    peer_id: PeerId
    observed_ip: IpText
    observed_port: Port
    keepalive_ms: Annotated[int, Meta(ge=1, le=3_600_000)]
    #: What every SEND frame of this registration carries (``relay.frames``: 8 random bytes).
    frame_token: Annotated[bytes, Meta(min_length=8, max_length=8)]

    def __post_init__(self) -> None:
        _check_ip(self.observed_ip, "observed_ip")


class RelayError(Message, tag="relay-error", frozen=True, kw_only=True):
    """Relay -> client: a request failed (codes: ``RELAY_*`` constants)."""

    code: Annotated[int, Meta(ge=100, le=999)]
    reason: Reason = ""


class RelayLookup(Message, tag="relay-lookup", frozen=True, kw_only=True):
    """Where is ``peer_id`` registered? (Asked of a relay by a client or by another relay.)"""

    peer_id: PeerId


class RelayLookupResult(Message, tag="relay-lookup-result", frozen=True, kw_only=True):
    peer_id: PeerId
    found: bool
    relays: Annotated[tuple[RelayAddress, ...], Meta(max_length=MAX_RELAYS)] = ()


#: Everything that can be sent; decode returns one of these.
AnyMessage = (
    Hello
    | PeerAuth
    | Candidates
    | CandidateUpdate
    | NatReportSummary
    | HardNatProbe
    | HardNatBirthdayStart
    | CheckStart
    | Ping
    | Pong
    | Hangup
    | RelayRegister
    | RelayRegistered
    | RelayError
    | RelayLookup
    | RelayLookupResult
)

MESSAGE_TYPES: Final[tuple[type[Message], ...]] = (
    Hello,
    PeerAuth,
    Candidates,
    CandidateUpdate,
    NatReportSummary,
    HardNatProbe,
    HardNatBirthdayStart,
    CheckStart,
    Ping,
    Pong,
    Hangup,
    RelayRegister,
    RelayRegistered,
    RelayError,
    RelayLookup,
    RelayLookupResult,
)
