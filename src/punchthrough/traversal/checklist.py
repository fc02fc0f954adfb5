"""The checklist half of the check engine: pairs, rounds, pacing, and the checks we send.

RFC 8445 section 6.1: which pairs exist, when each one is checked (paced first checks, the
retransmit schedule, the round deadline), the outstanding transactions, and when the
controlling side nominates. What arrives (verification, answers, triggered checks, accepting a
nomination) is :class:`punchthrough.traversal.checks.CheckEngine`, built on this class.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from punchthrough.netio import Address
from punchthrough.stun import Attribute as StunAttribute
from punchthrough.stun import (
    IceControlled,
    IceControlling,
    Message,
    MessageClass,
    Method,
    Priority,
    UseCandidate,
    Username,
    encode,
    new_transaction_id,
)
from punchthrough.traversal.candidates import RemoteCandidate, candidate_priority, pair_priority
from punchthrough.traversal.check_actions import Action, RoundFailed, Transmit
from punchthrough.traversal.keys import CheckCredentials
from punchthrough.traversal.pairs import CandidatePair, PairState
from punchthrough.traversal.pathchoice import first_check_order, preferred_pair

#: Gap between the first checks of two pairs (RFC 8445 section 14.2 "Ta"; 50 ms there, for
#: media sessions with dozens of pairs. We have a handful and want the punch fast).
PACING: Final = 0.010
#: Retransmission gaps of one check (seconds), the last repeated until the round deadline.
#: RFC 8489's 500 ms RTO is for servers that answer at once; here the first checks are
#: expected to be dropped by the peer's NAT until its own checks open a pinhole.
RETRANSMIT_SCHEDULE: Final = (0.05, 0.1, 0.1, 0.2, 0.2, 0.3, 0.5)
#: How long a round checks before giving up on every pair still unanswered.
ROUND_TIMEOUT: Final = 5.0
#: A triggered check (a peer-reflexive address, or a re-check) gets at least this long.
TRIGGERED_TIMEOUT: Final = 2.0
#: The controlling side waits this long after the first success for better pairs to succeed
#: before nominating (RFC 8445 section 8.1.1 leaves the wait to the agent).
NOMINATION_WAIT: Final = 0.05
#: A single consent/keepalive check expires after this long (RFC 7675 section 5.1 uses 30 s
#: for consent; we only need to know the response is late, the monitor decides).
CONSENT_TIMEOUT: Final = 2.0
#: Pairs per engine: the peer's candidates are capped at 64, prflx ones are bounded too.
MAX_PAIRS: Final = 128
#: Outstanding transactions kept (bounded memory whatever the peer does).
MAX_TRANSACTIONS: Final = 512
#: Ceilings of :meth:`Checklist.raise_limits`: a birthday attack's 4096 probes (the
#: planner's cap) plus 1024 pinholes, each of which may become a pair.
MAX_PAIRS_CAP: Final = 8192
MAX_TRANSACTIONS_CAP: Final = 8192


@dataclass(slots=True)
class _Tx:
    pair: CandidatePair
    purpose: str  # "check", "nominate", "consent"
    sent_at: float
    expires: float


@dataclass
class Checklist:
    """Pairs and the checks sent on them for one peer connection (base of ``CheckEngine``)."""

    credentials: CheckCredentials
    controlling: bool
    #: RFC 8445 section 7.3.1.1 tie-breaker; roles are fixed here (dialer controls), it is sent
    #: for wire compatibility and a peer claiming our role is refused with 487.
    tiebreaker: int = field(default_factory=lambda: int.from_bytes(os.urandom(8), "big"))
    software: str = ""
    pairs: dict[tuple[Address, Address], CandidatePair] = field(default_factory=dict)
    bases: list[Address] = field(default_factory=list)
    remote: list[RemoteCandidate] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    round: int = 0
    running: bool = False
    round_deadline: float = 0.0
    nominated: CandidatePair | None = None
    _tx: dict[bytes, _Tx] = field(default_factory=dict)
    _nominate_at: float | None = None
    _nominating: CandidatePair | None = None
    _round_failed_reported: bool = True
    _next_first_send: float = 0.0
    #: Bounds (raised, still bounded, while a birthday attack runs: :meth:`raise_limits`).
    max_pairs: int = MAX_PAIRS
    max_transactions: int = MAX_TRANSACTIONS
    #: Sockets that accept checks but are never paired with every remote candidate (the hard
    #: stages' extra sockets: a verified request there still gets a triggered check back).
    probe_bases: set[Address] = field(default_factory=set)
    #: (local, remote) -> kind of the hard-stage probes sent there: the peer's triggered check
    #: from a probed address is that stage's success, not a peer-reflexive hole punch (bounded
    #: like the pairs: MAX_PAIRS_CAP).
    probed: dict[tuple[Address, Address], str] = field(default_factory=dict)

    # -- configuration -----------------------------------------------------------------------
    def add_base(self, local: Address) -> None:
        """A local socket checks may be sent from (pairs are formed with every remote address)."""
        if local not in self.bases:
            self.bases.append(local)
            for rc in self.remote:
                self._pair(local, rc)

    def add_probe_base(self, local: Address) -> None:
        """An extra socket (birthday / prediction) checks may arrive on; no automatic pairs."""
        self.probe_bases.add(local)

    def remove_base(self, local: Address) -> None:
        """A socket closed: forget its pairs and transactions (nothing can arrive there now)."""
        self.probe_bases.discard(local)
        if local in self.bases:
            self.bases.remove(local)
        for key in [k for k in self.probed if k[0] == local]:
            del self.probed[key]
        for key in [k for k in self.pairs if k[0] == local]:
            pair = self.pairs.pop(key)
            if self.nominated is pair:
                self.nominated = None
        for txid in [t for t, tx in self._tx.items() if tx.pair.local == local]:
            del self._tx[txid]

    def raise_limits(self, pairs: int, transactions: int) -> None:
        """Allow more pairs / outstanding transactions (a birthday attack sends ~1000 probes),
        never less than the defaults."""
        self.max_pairs = max(MAX_PAIRS, min(pairs, MAX_PAIRS_CAP))
        self.max_transactions = max(MAX_TRANSACTIONS, min(transactions, MAX_TRANSACTIONS_CAP))

    def probe(self, local: Address, remote: Address, now: float, kind: str) -> Transmit:
        """One check to an address nobody offered (a predicted port, a birthday probe or a
        pinhole opener), sent once and not retransmitted; a verified answer makes it a
        succeeded pair like any other (``remote_kind`` = ``kind``)."""
        pair = self.pairs.get((local, remote))
        if pair is None:
            prio = pair_priority(candidate_priority("prflx"), candidate_priority("prflx"))
            pair = CandidatePair(local, remote, kind, prio)
        if len(self.probed) < MAX_PAIRS_CAP:
            self.probed[(local, remote)] = kind
        txid, msg = self._request(use_candidate=False)
        self._track(txid, _Tx(pair, "probe", now, now + CONSENT_TIMEOUT))
        pair.last_sent_at = now
        self.stats[f"sent_{kind}"] += 1
        data = encode(msg, integrity_key=self.credentials.key, fingerprint=True)
        return Transmit(local, remote, data)

    def set_remote_candidates(self, cands: Iterable[RemoteCandidate], now: float) -> None:
        """The peer's (new) candidate set; pairs are added for new addresses.

        Pairs for addresses no longer offered are kept: a peer-reflexive or older address that
        still answers is still a path (the peer's network change re-runs the round anyway).
        """
        self.remote = list(cands)
        for rc in self.remote:
            for base in self.bases:
                pair = self._pair(base, rc)
                if pair is not None and self.running and pair.state is PairState.WAITING:
                    self._schedule_first(pair, now)

    def _pair(self, local: Address, rc: RemoteCandidate) -> CandidatePair | None:
        pair = self.pairs.get((local, rc.address))
        if pair is not None:
            return pair
        if len(self.pairs) >= self.max_pairs:
            self.stats["pairs_capped"] += 1
            return None
        mine = candidate_priority("host")
        prio = (
            pair_priority(mine, rc.priority)
            if self.controlling
            else pair_priority(rc.priority, mine)
        )
        pair = CandidatePair(local, rc.address, rc.kind, prio)
        self.pairs[pair.key] = pair
        return pair

    # -- rounds --------------------------------------------------------------------------------
    def start_round(self, now: float, timeout: float = ROUND_TIMEOUT) -> int:
        """Check every pair that has not succeeded, paced, until ``now + timeout``.

        Returns the round number. Succeeded pairs are kept (they still work, as far as we know).
        """
        self.round += 1
        self.running = True
        self.round_deadline = now + timeout
        self._round_failed_reported = False
        self._next_first_send = now
        for pair in sorted(self.pairs.values(), key=first_check_order):
            if pair.state is not PairState.SUCCEEDED:
                pair.state = PairState.WAITING
                pair.txid = None
                pair.sends = 0
                self._schedule_first(pair, now)
        self.stats["rounds"] += 1
        return self.round

    def reset(self) -> None:
        """Forget every pair's success (the direct path died): the next round starts afresh."""
        for pair in self.pairs.values():
            pair.state = PairState.WAITING
            pair.txid = None
            pair.nominated = pair.nomination_pending = False
        self.nominated = self._nominating = None
        self._nominate_at = None
        self.running = False
        self._tx.clear()

    def _schedule_first(self, pair: CandidatePair, now: float) -> None:
        at = max(now, self._next_first_send)
        self._next_first_send = at + PACING
        pair.next_at = at
        pair.deadline = max(self.round_deadline, now + TRIGGERED_TIMEOUT)
        pair.state = PairState.IN_PROGRESS
        pair.txid = None
        pair.sends = 0

    @property
    def succeeded(self) -> list[CandidatePair]:
        """Succeeded pairs, best first."""
        ok = [p for p in self.pairs.values() if p.state is PairState.SUCCEEDED]
        return sorted(ok, key=lambda p: -p.priority)

    def owns(self, txid: bytes) -> bool:
        return txid in self._tx

    # -- time ----------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        times = [p.next_at for p in self.pairs.values() if p.state is PairState.IN_PROGRESS]
        if self.running and not self._round_failed_reported:
            times.append(self.round_deadline)
        if self._nominate_at is not None:
            times.append(self._nominate_at)
        return min(times) if times else None

    def poll(self, now: float) -> list[Action]:
        """Send what is due, expire what is late."""
        out: list[Action] = []
        for pair in sorted(self.pairs.values(), key=lambda p: p.next_at):
            if pair.state is not PairState.IN_PROGRESS or pair.next_at > now:
                continue
            if now >= pair.deadline:
                pair.state = PairState.FAILED
                pair.txid = None
                self.stats["pairs_failed"] += 1
                continue
            out.append(self._send_check(pair, now, purpose="check"))
        if self._nominate_at is not None and now >= self._nominate_at:
            self._nominate_at = None
            out += self._nominate(now)
        self._expire_transactions(now)
        if self.running and not self._round_failed_reported and now >= self.round_deadline:
            self._round_failed_reported = True
            self.running = False
            if not self.succeeded:
                n = len(self.pairs)
                out.append(
                    RoundFailed(
                        self.round,
                        n,
                        f"no answer on any of {n} candidate pairs within {ROUND_TIMEOUT:g} s"
                        if n
                        else "the peer offered no usable candidate",
                    )
                )
        return out

    def _expire_transactions(self, now: float) -> None:
        for txid in [t for t, tx in self._tx.items() if tx.expires <= now]:
            tx = self._tx.pop(txid)
            if tx.purpose == "nominate" and self._nominating is tx.pair:
                # The nomination was not answered: try again (next best pair) soon.
                self._nominating = None
                self._nominate_at = now

    # -- sending -------------------------------------------------------------------------------
    def _request(self, *, use_candidate: bool) -> tuple[bytes, Message]:
        attrs: list[StunAttribute] = [
            Username(self.credentials.request_username),
            Priority(candidate_priority("prflx")),
            IceControlling(self.tiebreaker) if self.controlling else IceControlled(self.tiebreaker),
        ]
        if use_candidate:
            attrs.append(UseCandidate())
        msg = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id(), attrs)
        return msg.transaction_id, msg

    def _send_check(self, pair: CandidatePair, now: float, *, purpose: str) -> Transmit:
        # A retransmission reuses the transaction id (RFC 8489 section 6.2.1), so a late
        # answer to an earlier copy still counts.
        nominate = purpose == "nominate"
        if purpose == "check" and pair.txid is not None and pair.txid in self._tx:
            txid = pair.txid
            _, msg = self._request(use_candidate=False)
            msg.transaction_id = txid
        else:
            txid, msg = self._request(use_candidate=nominate)
            self._track(txid, _Tx(pair, purpose, now, now + CONSENT_TIMEOUT))
            if purpose == "check":
                pair.txid = txid
        if purpose == "check":
            gap = RETRANSMIT_SCHEDULE[min(pair.sends, len(RETRANSMIT_SCHEDULE) - 1)]
            pair.sends += 1
            pair.next_at = now + gap
            pair.first_sent_at = pair.first_sent_at or now
            tx = self._tx.get(txid)
            if tx is not None:
                tx.expires = pair.deadline + 1.0
        pair.last_sent_at = now
        self.stats[f"sent_{purpose}"] += 1
        data = encode(msg, integrity_key=self.credentials.key, fingerprint=True)
        return Transmit(pair.local, pair.remote, data)

    def _track(self, txid: bytes, tx: _Tx) -> None:
        if len(self._tx) >= self.max_transactions:
            oldest = min(self._tx, key=lambda t: self._tx[t].sent_at)
            del self._tx[oldest]
            self.stats["transactions_evicted"] += 1
        self._tx[txid] = tx

    def consent(self, pair: CandidatePair, now: float) -> Transmit:
        """One liveness/keepalive check on a succeeded pair (RFC 7675 consent freshness)."""
        return self._send_check(pair, now, purpose="consent")

    def _nominate(self, now: float) -> list[Action]:
        if not self.controlling or self.nominated is not None or self._nominating is not None:
            return []
        best = self.succeeded
        if not best:
            return []
        pair = preferred_pair(best)
        self._nominating = pair
        self.stats["nominations"] += 1
        return [self._send_check(pair, now, purpose="nominate")]
