"""STUN Binding server: a sans-IO core plus a thin asyncio adapter.

Behaviour, with the choices the RFCs leave open:

* Only Binding requests are answered. Indications and responses are dropped (RFC 8489 §6.3.2,
  §6.3.3 do not answer them); a request for another method gets 400; malformed datagrams are
  dropped and counted, never answered (answering garbage only helps reflection attacks).
* Unknown comprehension-required attributes get 420 with UNKNOWN-ATTRIBUTES (RFC 8489 §6.3.1).
* RFC 5780 mode (given an alternate IP): the server owns {primary IP, alt IP} x {port, alt port},
  honours CHANGE-REQUEST by answering from the other IP and/or port, and sends OTHER-ADDRESS,
  RESPONSE-ORIGIN and MAPPED-ADDRESS (RFC 5780 §6.1). Without an alternate address it never sends
  OTHER-ADDRESS and answers any CHANGE-REQUEST with 420 (RFC 5780 §6.1, "MUST").
* RESPONSE-PORT is supported: the response goes to that port on the request's source IP
  (RFC 5780 §6.1); with PADDING as well, 400 (same section). Port 0 is refused with 400.
* No amplification: a response is at most ``amplification_factor`` (3, RFC 9000 §8.1's bound)
  times the request's size. Attributes go in by priority (XOR-MAPPED-ADDRESS or ERROR-CODE and
  UNKNOWN-ATTRIBUTES are mandatory; then PADDING, FINGERPRINT if the request had one,
  OTHER-ADDRESS, RESPONSE-ORIGIN, MAPPED-ADDRESS, SOFTWARE); optional ones that do not fit are
  left out (``trimmed``), and a response whose mandatory part does not fit is not sent
  (``refused``). A bare 20-byte request over IPv4 thus still gets XOR-MAPPED-ADDRESS,
  OTHER-ADDRESS and RESPONSE-ORIGIN (56 bytes <= 60).
* Per-source rate limit (:mod:`.ratelimit`, on by default): a datagram from a source over its
  budget is dropped before it is decoded (``rate_limited``), which bounds both the CPU one
  source can take and the answers one address can be sent. It lives in the core so that every
  user of the core (:class:`StunServer`, the relay's STUN answers) gets it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from punchthrough.netio import Address, DatagramSocket, Network
from punchthrough.stun.attributes import (
    Attribute,
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    OtherAddress,
    Padding,
    ResponseOrigin,
    ResponsePort,
    Software,
    UnknownAttributes,
    XorMappedAddress,
)
from punchthrough.stun.constants import (
    AMPLIFICATION_FACTOR,
    ATTRIBUTE_HEADER_LENGTH,
    HEADER_LENGTH,
    REASON_PHRASES,
    AttributeType,
    ErrorCodes,
)
from punchthrough.stun.errors import StunDecodeError
from punchthrough.stun.families import split_by_family
from punchthrough.stun.message import Message, MessageClass, Method, decode_message, encode
from punchthrough.stun.ratelimit import (
    DEFAULT_RATE_LIMIT,
    RateLimit,
    SourceRateLimiter,
    event_loop_time,
)

log = logging.getLogger(__name__)

#: (payload, local address to send it from, destination)
ServerAction = tuple[bytes, Address, Address]

#: How many times :meth:`StunServer.start` retries when an ephemeral port's neighbour is taken.
MAX_BIND_ATTEMPTS = 32
MAX_PORT = 0xFFFF

STAT_KEYS = (
    "requests",  # well-formed STUN requests (any method)
    "responses",  # success responses sent
    "errors_sent",  # error responses sent
    "malformed",  # datagrams that failed to decode
    "dropped",  # datagrams not answered: malformed, non-requests, refused, rate-limited
    "rate_limited",  # datagrams dropped undecoded: their source was over its rate limit
    "sources_evicted",  # rate-limit buckets forgotten to keep the table bounded
    "trimmed",  # responses sent without some optional attributes (amplification budget)
    "refused",  # responses not sent because even their mandatory part exceeded the budget
)


def _norm_ip(ip: str) -> str:
    try:
        return ipaddress.ip_address(ip).compressed
    except ValueError:
        return ip


def _norm(addr: Address) -> Address:
    return (_norm_ip(addr[0]), addr[1])


def _encoded_size(attr: Attribute, txid: bytes) -> int:
    if isinstance(attr, Fingerprint):
        return ATTRIBUTE_HEADER_LENGTH + 4
    length = len(attr.encode_value(txid))
    return ATTRIBUTE_HEADER_LENGTH + ((length + 3) & ~3)


class StunServerCore:
    """Decides what to answer to one datagram. No sockets, no clock.

    ``listen`` are the primary addresses. With ``alt_ip``, ``alt_ports`` maps each primary port
    to its alternate port (default: port + 1) and the server runs RFC 5780 on the four-address
    set per port; RFC 5780 needs one primary IP (ValueError otherwise). A dual-stack server
    adds listen addresses of the other family, which answer plain STUN (no OTHER-ADDRESS).

    ``rate_limit`` (None: no limit) is per source; ``clock`` is its time source, by default the
    running event loop's (virtual in the simulator), else ``time.monotonic``.
    """

    def __init__(
        self,
        listen: Sequence[Address],
        alt_ip: str | None = None,
        alt_ports: Mapping[int, int] | None = None,
        *,
        software: str | None = None,
        amplification_factor: float = AMPLIFICATION_FACTOR,
        rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
        clock: Callable[[], float] = event_loop_time,
    ) -> None:
        if not listen:
            raise ValueError("a STUN server needs at least one listen address")
        if amplification_factor < 1:
            raise ValueError("amplification_factor below 1 would refuse every response")
        self.software = software
        self.amplification_factor = amplification_factor
        self.stats: dict[str, int] = dict.fromkeys(STAT_KEYS, 0)
        self.rate_limiter = SourceRateLimiter(rate_limit, clock) if rate_limit else None
        self._listen = [_norm(a) for a in listen]
        self._alt_ip = _norm_ip(alt_ip) if alt_ip is not None else None
        self._primary_ip: str | None = None
        self._other_port: dict[int, int] = {}
        #: Dual stack: listen addresses of the other family than ``alt_ip`` answer plain STUN.
        self._plain: list[Address] = []
        if self._alt_ip is not None:
            rfc5780, self._plain = split_by_family(self._listen, self._alt_ip)
            ips = {ip for ip, _ in rfc5780} or {ip for ip, _ in self._listen}
            if len(ips) != 1:
                raise ValueError("RFC 5780 mode needs exactly one primary IP among listen addrs")
            self._primary_ip = ips.pop()
            if ipaddress.ip_address(self._primary_ip).is_unspecified:
                raise ValueError("RFC 5780 mode needs a concrete primary IP, not a wildcard")
            if (
                ipaddress.ip_address(self._primary_ip).version
                != ipaddress.ip_address(self._alt_ip).version
            ):
                raise ValueError("primary and alternate IP must be the same family")
            if self._alt_ip == self._primary_ip:
                raise ValueError("alternate IP must differ from the primary IP")
            for _, port in rfc5780:
                alt = (alt_ports or {}).get(port, port + 1)
                if port == 0 or not 0 < alt <= MAX_PORT or alt == port:
                    raise ValueError(f"invalid port pair {port}/{alt}")
                if port in self._other_port or alt in self._other_port:
                    raise ValueError(f"port pairs overlap at {port}/{alt}")
                self._other_port[port] = alt
                self._other_port[alt] = port

    @property
    def rfc5780(self) -> bool:
        return self._alt_ip is not None

    @property
    def addresses(self) -> list[Address]:
        """Every local address the server answers on (and must be bound)."""
        if self._alt_ip is None or self._primary_ip is None:
            return list(self._listen)
        out: list[Address] = []
        for ip, port in self._listen:
            if (ip, port) in self._plain:
                out.append((ip, port))
                continue
            alt = self._other_port[port]
            for ip in (self._primary_ip, self._alt_ip):
                out.extend([(ip, port), (ip, alt)])
        return out

    def _other_ip(self, ip: str) -> str | None:
        if ip == self._primary_ip:
            return self._alt_ip
        if ip == self._alt_ip:
            return self._primary_ip
        return None

    def _alternate_of(self, local: Address) -> Address | None:
        """OTHER-ADDRESS for a request received on ``local`` (Ca:Cp), None outside RFC 5780."""
        other_ip = self._other_ip(local[0])
        other_port = self._other_port.get(local[1])
        if other_ip is None or other_port is None:
            return None
        return (other_ip, other_port)

    # --- the decision --------------------------------------------------------------------------

    def handle(self, data: bytes, src: Address, local: Address) -> list[ServerAction]:
        """Answer one datagram received on ``local`` from ``src``. Never raises on bad input."""
        local = _norm(local)
        limiter = self.rate_limiter
        if limiter is not None:
            allowed = limiter.allow(src[0])
            self.stats["sources_evicted"] = limiter.evictions
            if not allowed:
                self.stats["rate_limited"] += 1
                self.stats["dropped"] += 1
                return []
        try:
            request = decode_message(data)
        except StunDecodeError as exc:
            self.stats["malformed"] += 1
            self.stats["dropped"] += 1
            log.debug("malformed STUN from %s:%d: %s", src[0], src[1], exc)
            return []
        if request.message_class is not MessageClass.REQUEST:
            self.stats["dropped"] += 1
            return []
        self.stats["requests"] += 1
        budget = int(self.amplification_factor * len(data))
        if request.method != Method.BINDING:
            return self._error(request, ErrorCodes.BAD_REQUEST, (), src, local, budget)
        unknown = request.unknown_comprehension_required()
        if unknown:
            return self._error(request, ErrorCodes.UNKNOWN_ATTRIBUTE, unknown, src, local, budget)
        alternate = self._alternate_of(local)
        change = request.get(ChangeRequest)
        if change is not None and alternate is None:
            # No alternate address: MUST answer 420 (RFC 5780 §6.1).
            return self._error(
                request,
                ErrorCodes.UNKNOWN_ATTRIBUTE,
                [AttributeType.CHANGE_REQUEST],
                src,
                local,
                budget,
            )
        response_port = request.get(ResponsePort)
        padding = request.get(Padding)
        if response_port is not None and (padding is not None or response_port.port == 0):
            # PADDING with RESPONSE-PORT: MUST be 400 (RFC 5780 §6.1); port 0 is unreachable.
            return self._error(request, ErrorCodes.BAD_REQUEST, (), src, local, budget)

        origin = local
        if change is not None and alternate is not None:
            origin = (
                alternate[0] if change.change_ip else local[0],
                alternate[1] if change.change_port else local[1],
            )
        dest = (src[0], response_port.port) if response_port is not None else src

        mandatory: list[Attribute] = [XorMappedAddress(src)]
        if padding is not None:
            # Same length as the request's PADDING (RFC 5780 §6.1).
            mandatory.append(Padding(padding.length))
        optional: list[Attribute] = []
        if request.get(Fingerprint) is not None:
            optional.append(Fingerprint(0))
        if alternate is not None:
            optional += [OtherAddress(alternate), ResponseOrigin(origin), MappedAddress(src)]
        if self.software is not None:
            optional.append(Software(self.software))
        payload = self._build(request, MessageClass.SUCCESS_RESPONSE, mandatory, optional, budget)
        if payload is None:
            return []
        self.stats["responses"] += 1
        return [(payload, origin, dest)]

    def _error(
        self,
        request: Message,
        code: int,
        unknown: Iterable[int],
        src: Address,
        local: Address,
        budget: int,
    ) -> list[ServerAction]:
        mandatory: list[Attribute] = [ErrorCode(code, REASON_PHRASES.get(code, ""))]
        if code == ErrorCodes.UNKNOWN_ATTRIBUTE:
            mandatory.append(UnknownAttributes(tuple(unknown)))
        optional: list[Attribute] = []
        if request.get(Fingerprint) is not None:
            optional.append(Fingerprint(0))
        if self.software is not None:
            optional.append(Software(self.software))
        payload = self._build(request, MessageClass.ERROR_RESPONSE, mandatory, optional, budget)
        if payload is None:
            return []
        self.stats["errors_sent"] += 1
        return [(payload, local, src)]

    def _build(
        self,
        request: Message,
        klass: MessageClass,
        mandatory: list[Attribute],
        optional: list[Attribute],
        budget: int,
    ) -> bytes | None:
        txid = request.transaction_id
        size = HEADER_LENGTH + sum(_encoded_size(a, txid) for a in mandatory)
        if size > budget:
            self.stats["refused"] += 1
            self.stats["dropped"] += 1
            return None
        chosen = list(mandatory)
        trimmed = False
        for attr in optional:
            cost = _encoded_size(attr, txid)
            if size + cost <= budget:
                chosen.append(attr)
                size += cost
            else:
                trimmed = True
        if trimmed:
            self.stats["trimmed"] += 1
        fingerprint = any(isinstance(a, Fingerprint) for a in chosen)
        response = Message(request.method, klass, txid, chosen)
        return encode(response, fingerprint=fingerprint)


class StunServer:
    """Binds the core's addresses through a :class:`Network` and answers on them."""

    def __init__(self, core: StunServerCore, sockets: dict[Address, DatagramSocket]) -> None:
        self.core = core
        self._sockets = sockets
        self._closed = False
        self.send_failures = 0
        for addr, sock in sockets.items():
            sock.set_receiver(functools.partial(self._on_datagram, local=addr))

    @classmethod
    async def start(
        cls,
        network: Network,
        listen: Sequence[Address],
        alt_ip: str | None = None,
        alt_port: int | None = None,
        *,
        software: str | None = None,
        amplification_factor: float = AMPLIFICATION_FACTOR,
        rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    ) -> StunServer:
        """Bind and start serving. ``alt_port`` (RFC 5780 mode only) defaults to each listen
        port + 1 and may only be given with a single listen address. Port 0 picks free ports
        (for the alternate port too: the pair is retried until both IPs can bind it).
        ``rate_limit`` is per source (None: unlimited), see :class:`StunServerCore`."""
        listen = [_norm(a) for a in listen]
        if not listen:
            raise ValueError("a STUN server needs at least one listen address")
        if alt_ip is None:
            sockets: dict[Address, DatagramSocket] = {}
            try:
                for host, port in listen:
                    sock = await network.bind(host, port)
                    sockets[_norm(sock.local_address)] = sock
            except BaseException:
                for sock in sockets.values():
                    sock.close()
                raise
            core = StunServerCore(
                list(sockets),
                software=software,
                amplification_factor=amplification_factor,
                rate_limit=rate_limit,
            )
            return cls(core, sockets)

        same, plain = split_by_family(listen, alt_ip)  # dual stack: `plain` answer plain STUN
        listen, plain = (same, plain) if same else (listen, [])
        if alt_port is not None and len(listen) != 1:
            raise ValueError("alt_port can only be given with a single listen address")
        if len({ip for ip, _ in listen}) != 1:
            raise ValueError("RFC 5780 mode needs exactly one primary IP among listen addresses")
        ephemeral = any(port == 0 for _, port in listen) or alt_port == 0
        attempts = MAX_BIND_ATTEMPTS if ephemeral else 1
        last_error: OSError | None = None
        for _ in range(attempts):
            sockets = {}
            try:
                for host, port in plain:
                    sock = await network.bind(host, port)
                    sockets[_norm(sock.local_address)] = sock
                core = await cls._bind_rfc5780(
                    network,
                    listen,
                    alt_ip,
                    alt_port,
                    sockets,
                    software,
                    amplification_factor,
                    rate_limit,
                    plain=[a for a in sockets if a[0] in {ip for ip, _ in plain}],
                )
            except OSError as exc:
                last_error = exc
                for sock in sockets.values():
                    sock.close()
                continue
            except BaseException:
                for sock in sockets.values():
                    sock.close()
                raise
            return cls(core, sockets)
        assert last_error is not None
        raise last_error

    @staticmethod
    async def _bind_rfc5780(
        network: Network,
        listen: Sequence[Address],
        alt_ip: str,
        alt_port: int | None,
        sockets: dict[Address, DatagramSocket],
        software: str | None,
        amplification_factor: float,
        rate_limit: RateLimit | None,
        *,
        plain: Sequence[Address] = (),
    ) -> StunServerCore:
        primary_ip = listen[0][0]
        alt_ip = _norm_ip(alt_ip)
        ports: list[int] = []
        alt_ports: dict[int, int] = {}
        for _, port in listen:
            sock = await network.bind(primary_ip, port)
            bound = sock.local_address[1]
            sockets[(primary_ip, bound)] = sock
            alt = alt_port if alt_port else bound + 1
            if alt > MAX_PORT or alt == bound:
                raise OSError(f"no usable alternate port for {bound}")
            for addr in ((primary_ip, alt), (alt_ip, bound), (alt_ip, alt)):
                sockets[addr] = await network.bind(*addr)
            ports.append(bound)
            alt_ports[bound] = alt
        return StunServerCore(
            [*((primary_ip, p) for p in ports), *plain],
            alt_ip,
            alt_ports,
            software=software,
            amplification_factor=amplification_factor,
            rate_limit=rate_limit,
        )

    def _on_datagram(self, data: bytes, addr: Address, *, local: Address) -> None:
        try:
            actions = self.core.handle(data, addr, local)
        except Exception:  # a bug must cost one datagram, not the server
            log.exception("STUN server failed on %d bytes from %s:%d", len(data), *addr)
            self.core.stats["dropped"] += 1
            return
        for payload, from_addr, dest in actions:
            sock = self._sockets.get(from_addr)
            if sock is None or sock.closed:
                self.send_failures += 1
                continue
            try:
                sock.sendto(payload, dest)
            except OSError:
                self.send_failures += 1

    @property
    def addresses(self) -> list[Address]:
        """Bound addresses; per listen port: (P, p), (P, alt), (A, p), (A, alt) in RFC 5780 mode."""
        return self.core.addresses

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.core.stats)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in self._sockets.values():
            sock.set_receiver(None)
            sock.close()

    async def __aenter__(self) -> StunServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
