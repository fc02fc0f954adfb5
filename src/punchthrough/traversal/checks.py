"""The connectivity-check engine: ICE-style STUN Binding checks between two peers, sans-IO.

Both peers check every candidate pair at once (a "round", started at a moment agreed on the
control stream): that simultaneous exchange is the hole punch. A check is a STUN Binding request
with USERNAME and MESSAGE-INTEGRITY under a key only the two peers hold
(:mod:`punchthrough.traversal.keys`); the answer is a success response carrying
XOR-MAPPED-ADDRESS, under the same key. Rules (RFC 8445 section 7 unless noted):

- Pacing: a new pair's first check goes out :data:`PACING` after the previous one; retransmits
  follow :data:`RETRANSMIT_SCHEDULE` (fast at first: early checks are expected to die at the
  peer's NAT until the peer's own checks open it) until the round deadline.
- A response counts only if it verifies, matches an outstanding transaction and comes from the
  address the request went to (7.2.5.2.1, symmetric). The first one on a pair makes the pair
  *succeeded*: the adapter may move the call onto it at once.
- A verified request from an address we have no pair for creates a peer-reflexive pair and a
  triggered check to it (7.3.1.4): that is how a peer behind an address-dependent NAT is reached.
- Nomination: the dialer is the controlling agent. Shortly after its first success it nominates
  the best succeeded pair with a USE-CANDIDATE check; the controlled side accepts a nomination
  only on a pair that succeeded for it too (else it checks that pair first). Both then use it.
- Anything that does not verify (unknown USERNAME, bad MESSAGE-INTEGRITY, stray transaction)
  is dropped and counted in :attr:`CheckEngine.stats`; the engine never raises on input.

The engine never sees sockets or clocks: methods take ``now`` and return :data:`Action` lists
(transmissions and events) that the asyncio adapter carries out. This module is the receiving
half; pairs (:mod:`.pairs`), actions (:mod:`.check_actions`) and the sending half
(:mod:`.checklist`) are siblings, re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from punchthrough.netio import Address
from punchthrough.stun import Attribute as StunAttribute
from punchthrough.stun import (
    ErrorCode,
    Fingerprint,
    Message,
    MessageClass,
    MessageIntegrity,
    Method,
    StunDecodeError,
    Username,
    XorMappedAddress,
    decode_message,
    encode,
    ice_attributes,
)
from punchthrough.traversal.candidates import RemoteCandidate, candidate_priority
from punchthrough.traversal.check_actions import (
    Action,
    ConsentResponse,
    PairNominated,
    PairSucceeded,
    PeerSeen,
    RoundFailed,
    Transmit,
)
from punchthrough.traversal.checklist import (
    CONSENT_TIMEOUT,
    MAX_PAIRS,
    MAX_PAIRS_CAP,
    MAX_TRANSACTIONS,
    MAX_TRANSACTIONS_CAP,
    NOMINATION_WAIT,
    PACING,
    RETRANSMIT_SCHEDULE,
    ROUND_TIMEOUT,
    TRIGGERED_TIMEOUT,
    Checklist,
)
from punchthrough.traversal.pairs import CandidatePair, PairState

__all__ = [
    "CONSENT_TIMEOUT",
    "MAX_PAIRS",
    "MAX_PAIRS_CAP",
    "MAX_TRANSACTIONS",
    "MAX_TRANSACTIONS_CAP",
    "NOMINATION_WAIT",
    "PACING",
    "RETRANSMIT_SCHEDULE",
    "ROLE_CONFLICT",
    "ROUND_TIMEOUT",
    "TRIGGERED_TIMEOUT",
    "Action",
    "CandidatePair",
    "CheckEngine",
    "ConsentResponse",
    "PairNominated",
    "PairState",
    "PairSucceeded",
    "PeerSeen",
    "RoundFailed",
    "Transmit",
    "has_fingerprint",
    "is_check_request_for",
]

#: 487 Role Conflict (RFC 8445 section 7.3.1.1).
ROLE_CONFLICT: Final = 487


@dataclass
class CheckEngine(Checklist):
    """Checks for one peer connection. Not thread-safe; no I/O; every method takes ``now``."""

    # -- receiving -----------------------------------------------------------------------------
    def handle_datagram(
        self, data: bytes, local: Address, remote: Address, now: float
    ) -> list[Action]:
        """A STUN datagram from ``remote`` on the base ``local``. Never raises."""
        try:
            msg = decode_message(data)
        except StunDecodeError:
            self.stats["dropped_malformed"] += 1
            return []
        return self.handle_message(msg, local, remote, now)

    def handle_message(
        self, msg: Message, local: Address, remote: Address, now: float
    ) -> list[Action]:
        if msg.method != Method.BINDING:
            self.stats["dropped_not_binding"] += 1
            return []
        if msg.message_class is MessageClass.REQUEST:
            return self._on_request(msg, local, remote, now)
        if msg.message_class in (MessageClass.SUCCESS_RESPONSE, MessageClass.ERROR_RESPONSE):
            return self._on_response(msg, local, remote, now)
        self.stats["dropped_indication"] += 1
        return []

    def _verify(self, msg: Message) -> bool:
        if msg.get(MessageIntegrity) is None:
            self.stats["dropped_no_integrity"] += 1
            return False
        if not msg.check_integrity(self.credentials.key):
            self.stats["dropped_bad_integrity"] += 1
            return False
        return True

    def _on_request(
        self, msg: Message, local: Address, remote: Address, now: float
    ) -> list[Action]:
        user = msg.get(Username)
        if user is None or user.value != self.credentials.expected_username:
            self.stats["dropped_unknown_username"] += 1
            return []
        if not self._verify(msg):
            return []
        try:
            ice = ice_attributes(msg.attributes)
        except StunDecodeError:
            self.stats["dropped_malformed"] += 1
            return []
        peer_controlling = ice.controlling is not None
        if peer_controlling == self.controlling:
            self.stats["role_conflicts"] += 1
            err = Message(
                Method.BINDING,
                MessageClass.ERROR_RESPONSE,
                msg.transaction_id,
                [ErrorCode(ROLE_CONFLICT, "Role Conflict")],
            )
            data = encode(err, integrity_key=self.credentials.key, fingerprint=True)
            return [Transmit(local, remote, data)]
        self.stats["requests_verified"] += 1
        out: list[Action] = [
            Transmit(local, remote, self._success_response(msg.transaction_id, remote)),
            PeerSeen(local, remote),
        ]
        if local not in self.bases and local not in self.probe_bases:
            self.stats["requests_unknown_base"] += 1
            return out
        pair = self.pairs.get((local, remote))
        if pair is None:
            prio = ice.priority if ice.priority is not None else candidate_priority("prflx")
            kind = self.probed.get((local, remote), "prflx")
            pair = self._pair(local, RemoteCandidate(remote, kind, prio))
            if pair is None:
                return out
            self.stats["prflx_learned"] += 1
        if pair.state in (PairState.WAITING, PairState.FAILED):
            # Triggered check (RFC 8445 section 7.3.1.4): the peer can reach us from there, so
            # our answer's way back is open; check it from our side now.
            pair.state = PairState.IN_PROGRESS
            pair.txid = None
            pair.sends = 0
            pair.next_at = now
            pair.deadline = max(self.round_deadline, now + TRIGGERED_TIMEOUT)
            self.stats["triggered"] += 1
        elif pair.state is PairState.IN_PROGRESS and pair.sends and pair.next_at > now + PACING:
            pair.next_at = now  # their check got through: ours will too, right now
        if ice.use_candidate and not self.controlling:
            if pair.state is PairState.SUCCEEDED:
                out += self._accept_nomination(pair)
            else:
                pair.nomination_pending = True
        out += self.poll(now)
        return out

    def _success_response(self, txid: bytes, remote: Address) -> bytes:
        attrs: list[StunAttribute] = [XorMappedAddress(remote)]
        resp = Message(Method.BINDING, MessageClass.SUCCESS_RESPONSE, txid, attrs)
        return encode(resp, integrity_key=self.credentials.key, fingerprint=True)

    def _accept_nomination(self, pair: CandidatePair) -> list[Action]:
        if self.nominated is pair:
            return []
        if self.nominated is not None:
            self.nominated.nominated = False
        pair.nominated = True
        pair.nomination_pending = False
        self.nominated = pair
        self._stop_others(pair)
        return [PairNominated(pair)]

    def _stop_others(self, keep: CandidatePair) -> None:
        """After nomination, checks on other pairs are pointless (RFC 8445 section 8.1.2)."""
        for pair in self.pairs.values():
            if pair is not keep and pair.state is PairState.IN_PROGRESS:
                pair.state = PairState.FAILED
                pair.txid = None
        self.running = False
        self._round_failed_reported = True

    def _on_response(
        self, msg: Message, local: Address, remote: Address, now: float
    ) -> list[Action]:
        tx = self._tx.get(msg.transaction_id)
        if tx is None:
            self.stats["dropped_unknown_transaction"] += 1
            return []
        if not self._verify(msg):
            return []
        pair = tx.pair
        if (pair.local, pair.remote) != (local, remote):
            # Not from where the request went (RFC 8445 section 7.2.5.2.1): not this path.
            self.stats["dropped_asymmetric"] += 1
            return []
        if tx.purpose == "probe":
            # A probe's pair joins the engine only once it is answered (bounded: one per
            # outstanding transaction).
            pair = self.pairs.setdefault(pair.key, pair)
        del self._tx[msg.transaction_id]
        if msg.message_class is MessageClass.ERROR_RESPONSE:
            self.stats["error_responses"] += 1
            if pair.state is PairState.IN_PROGRESS:
                pair.state = PairState.FAILED
            return []
        xma = msg.get(XorMappedAddress)
        rtt = now - tx.sent_at
        self.stats["responses_verified"] += 1
        out: list[Action] = []
        if xma is not None:
            pair.mapped = xma.address
        if pair.state is not PairState.SUCCEEDED:
            pair.state = PairState.SUCCEEDED
            pair.succeeded_at = now
            pair.rtt = rtt
            pair.txid = None
            self.stats["pairs_succeeded"] += 1
            out.append(PairSucceeded(pair))
            if (
                self.controlling
                and self.nominated is None
                and self._nominating is None
                and self._nominate_at is None
            ):
                self._nominate_at = now + NOMINATION_WAIT
            if pair.nomination_pending and not self.controlling:
                out += self._accept_nomination(pair)
        else:
            pair.rtt = rtt
            out.append(ConsentResponse(pair, rtt))
        if tx.purpose == "nominate" and self.controlling:
            self._nominating = None
            out += self._accept_nomination(pair)
        return out


def is_check_request_for(msg: Message) -> str | None:
    """The USERNAME of a Binding request (what the endpoint routes checks by), else ``None``."""
    if msg.method != Method.BINDING or msg.message_class is not MessageClass.REQUEST:
        return None
    user = msg.get(Username)
    return user.value if user is not None else None


def has_fingerprint(msg: Message) -> bool:
    return msg.get(Fingerprint) is not None
