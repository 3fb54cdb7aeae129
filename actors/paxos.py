"""Single-decree Paxos per key, as Cassandra's lightweight transactions run it: pure rules, no I/O.

A serial request (``put(..., serial=True)``, ``get(..., serial=True)``) runs among the key's
N primaries (never a sloppy quorum; a majority must answer):

1. **prepare**: the coordinator sends a ballot; each acceptor promises (durably) to accept no
   lower ballot, and answers with the proposal it last accepted, the ballot it last committed
   and its current object.
2. **finish**: if a promise shows an accepted proposal newer than every commit seen, that
   proposal may have been chosen: the coordinator proposes and commits it under its own
   ballot, then starts again (a chosen value is never skipped, so a read never misses one).
3. **read and check**: the current object is the merge of the majority's objects (it holds
   the last commit, which a majority applied); a read answers with it; a write checks its
   condition (``VersionMismatch`` if it fails: nothing written) and builds the new object.
4. **propose**, then **commit**: a majority accepts the object (it is chosen), then a majority
   merges it into its store; the client hears of success after that.

Outcomes are never a false success nor a false definite failure: contention before the
propose retries with a higher ballot; a proposal that no acceptor took (every one refused
it) retries too; one that some acceptor may have taken fails as indeterminate (it may yet be
committed by whoever finishes it), as Cassandra's ``WriteTimeoutException`` of type CAS.

A serial write's new object gets its dot from the actor `PAXOS_ACTOR`, counted from the
current object: Paxos commits one value per round on top of every earlier one, so no two
committed values share a dot, and ordinary replicas' dots are never reused. Plain writes to
the same key bypass Paxos: they become siblings of the serial value (a serial read returns
them all, merged as any read does), and a later serial write replaces them.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from storage import objects
from storage.codec import decode_object, encode_object
from storage.objects import Obj

from .errors import LeaderlessError, QuorumFailed, RequestTimeout, VersionMismatch
from .messages import (GetResult, PaxosAccepted, PaxosCommit, PaxosCommitted, PaxosPrepare, PaxosPromise,
                       PaxosPropose)

Ballot = tuple[int, str]            # (a hybrid-clock reading, packed; the proposing node): unique, ordered
NO_BALLOT: Ballot = (0, "")
PAXOS_ACTOR = "~paxos"
"""The actor of serial writes' dots (sorts after every node's actor id)."""
RETRY_BASE = 0.002                  # seconds: the first backoff after contention; doubles, randomised
RETRY_MAX = 0.05


# --- the acceptor: what each primary keeps per key, durably --------------------------------------

class AcceptorState(NamedTuple):
    """One key's Paxos state on one acceptor."""
    promised: Ballot = NO_BALLOT
    accepted: Ballot = NO_BALLOT
    accepted_obj: bytes | None = None       # the accepted proposal's object, as its record
    committed: Ballot = NO_BALLOT

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(tuple(self))

    @classmethod
    def decode(cls, data: bytes | None) -> AcceptorState:
        if data is None:
            return cls()
        promised, accepted, obj, committed = _STATE.decode(data)
        return cls(promised, accepted, obj, committed)


_STATE = msgspec.msgpack.Decoder(tuple[tuple[int, str], tuple[int, str], bytes | None, tuple[int, str]])


def on_prepare(state: AcceptorState, ballot: Ballot) -> tuple[AcceptorState | None, bool]:
    """Promise ``ballot`` if it is higher than every ballot promised: ``(the new state to keep
    durably, True)``; else ``(None, False)`` and nothing changes."""
    if ballot > state.promised:
        return state._replace(promised=ballot), True
    return None, False


def on_propose(state: AcceptorState, ballot: Ballot, record: bytes) -> tuple[AcceptorState | None, bool]:
    """Accept the proposal unless a higher ballot was promised."""
    if ballot >= state.promised:
        return state._replace(promised=ballot, accepted=ballot, accepted_obj=record), True
    return None, False


def on_commit(state: AcceptorState, ballot: Ballot) -> AcceptorState:
    """A chosen proposal is applied: remember the newest commit; an accepted proposal no newer is done."""
    committed = max(state.committed, ballot)
    if state.accepted <= committed:
        return state._replace(committed=committed, accepted=NO_BALLOT, accepted_obj=None)
    return state._replace(committed=committed)


# --- the proposer: one serial request, a state machine of events in, effects out ---------------------

class State(enum.Enum):
    PREPARING = "preparing"
    FINISHING = "finishing"             # proposing another's proposal found in flight
    COMMITTING_FOUND = "committing found"
    PROPOSING = "proposing"             # our own value
    COMMITTING = "committing"
    WAITING = "waiting"                 # backing off before the next round
    DONE = "done"


_PHASE = {State.PREPARING: "prepare", State.FINISHING: "propose", State.PROPOSING: "propose",
          State.COMMITTING_FOUND: "commit", State.COMMITTING: "commit"}


class Send(NamedTuple):
    node: str
    message: Any


class Answer(NamedTuple):
    ok: bool
    result: Any


class Arm(NamedTuple):
    at: float


Effect = Send | Answer | Arm


@dataclass
class SerialRequest:
    """One serial read (``value`` unused) or write of ``key`` among its primaries ``targets``.

    ``build(current)`` makes the object a write proposes from the current one; ``check(current)``
    raises ``VersionMismatch`` when the write's condition does not hold. ``new_ballot(above)`` gives
    a ballot higher than ``above``; ``clock()`` the time. Feed it ``start``, replies and ``on_timer``;
    it returns the effects to carry out and ends (``state is DONE``) with exactly one ``Answer``.
    """
    req_id: int
    coordinator: str
    key: str
    targets: list[str]
    deadline: float
    write: bool
    build: Callable[[Obj | None], Obj]
    check: Callable[[Obj | None], None]
    new_ballot: Callable[[Ballot], Ballot]
    clock: Callable[[], float]
    rng: random.Random = field(default_factory=random.Random)
    state: State = State.PREPARING
    ballot: Ballot = NO_BALLOT
    highest_seen: Ballot = NO_BALLOT
    attempts: int = 0
    retry_at: float | None = None
    promises: dict[str, PaxosPromise] = field(default_factory=dict)
    accepted: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    committed: set[str] = field(default_factory=set)
    proposal: Obj | None = None         # what the round at hand proposes (ours, or one found in flight)
    proposed_ours: bool = False         # an acceptor may hold our own value: no retry from here on

    @property
    def majority(self) -> int:
        return len(self.targets) // 2 + 1

    # --- events ------------------------------------------------------------------------------------

    def start(self) -> list[Effect]:
        return self._prepare()

    def on_promise(self, message: PaxosPromise) -> list[Effect]:
        if self.state is not State.PREPARING or message.ballot != self.ballot or message.node not in self.targets:
            return []
        if message.node in self.promises or message.node in self.refused or message.node in self.failed:
            return []
        self._saw(message.promised)
        if not message.ok:
            self.refused.add(message.node)
        else:
            self.promises[message.node] = message
        if len(self.promises) >= self.majority:
            return self._decide()
        if len(self.targets) - len(self.refused) - len(self.failed) < self.majority:
            return self._retry() if self.refused else self._fail_unreachable()
        return []

    def on_accepted(self, message: PaxosAccepted) -> list[Effect]:
        if self.state not in (State.PROPOSING, State.FINISHING) or message.ballot != self.ballot:
            return []
        if message.node in self.accepted or message.node in self.refused or message.node in self.failed:
            return []
        self._saw(message.promised)
        (self.accepted if message.ok else self.refused).add(message.node)
        if len(self.accepted) >= self.majority:
            return self._commit()
        if len(self.targets) - len(self.refused) - len(self.failed) < self.majority:
            return self._proposal_lost()
        return []

    def on_committed(self, message: PaxosCommitted) -> list[Effect]:
        if self.state not in (State.COMMITTING, State.COMMITTING_FOUND) or message.ballot != self.ballot:
            return []
        self.committed.add(message.node)
        if len(self.committed) < self.majority:
            return []
        if self.state is State.COMMITTING_FOUND:
            return self._prepare()                   # the round found in flight is done: ours now
        assert self.proposal is not None
        return self._answer(True, objects.context(self.proposal))

    def on_unreachable(self, node: str, ballot: Ballot, phase: str) -> list[Effect]:
        """The ``phase`` message ("prepare", "propose", "commit") of ``ballot`` could not be handed to
        ``node``: it holds nothing of it. Counted only for the phase at hand (an older one's would let
        us believe no acceptor holds a proposal that one does)."""
        if node not in self.targets or ballot != self.ballot or phase != _PHASE.get(self.state):
            return []
        if node in self.failed or node in self.promises or node in self.accepted or node in self.committed:
            return []
        self.failed.add(node)
        if self.state is State.PREPARING:
            if len(self.targets) - len(self.refused) - len(self.failed) < self.majority:
                return self._retry() if self.refused else self._fail_unreachable()
        elif self.state in (State.PROPOSING, State.FINISHING):
            if len(self.targets) - len(self.refused) - len(self.failed) < self.majority:
                return self._proposal_lost()
        elif len(self.targets) - len(self.failed) < self.majority:      # committing
            return self._commit_lost()
        return []

    def on_timer(self, now: float) -> list[Effect]:
        if self.state is State.DONE:
            return []
        if now >= self.deadline:
            if self.state is State.COMMITTING:
                return self._answer(False, RequestTimeout(
                    f"serial write of {self.key!r}: chosen (a majority accepted it) but not yet applied by a "
                    "majority when the request timed out: it will take effect"))
            if self.proposed_ours:
                return self._answer(False, RequestTimeout(
                    f"serial write of {self.key!r} timed out after it was proposed: it may or may not take effect"))
            return self._answer(False, QuorumFailed(
                needed=self.majority, got=len(self.promises), replicas=sorted(self.promises),
                op="serial write" if self.write else "serial read", down=sorted(self.failed),
                reasons=[f"no majority of the key's primaries finished a round within the timeout "
                         f"(ballots refused by {', '.join(sorted(self.refused)) or 'none'})"]))
        if self.state is State.WAITING and self.retry_at is not None and now >= self.retry_at:
            return self._prepare()
        return [Arm(self._next_time())]

    # --- steps -------------------------------------------------------------------------------------

    def _saw(self, ballot: Ballot) -> None:
        if ballot > self.highest_seen:
            self.highest_seen = ballot

    def _reset(self) -> None:
        self.promises, self.accepted, self.refused, self.failed, self.committed = {}, set(), set(), set(), set()

    def _prepare(self) -> list[Effect]:
        self._reset()
        self.attempts += 1
        self.ballot = self.new_ballot(max(self.ballot, self.highest_seen))
        self.state, self.retry_at = State.PREPARING, None
        message = PaxosPrepare(self.req_id, self.coordinator, self.key, self.ballot)
        return [*(Send(node, message) for node in self.targets), Arm(self.deadline)]

    def _retry(self) -> list[Effect]:
        """Contention (a higher ballot was promised): back off a random while, then a higher ballot."""
        self.state = State.WAITING
        wait = self.rng.uniform(0, min(RETRY_MAX, RETRY_BASE * 2 ** min(self.attempts, 10)))
        self.retry_at = self.clock() + wait
        return [Arm(min(self.retry_at, self.deadline))]

    def _decide(self) -> list[Effect]:
        promises = list(self.promises.values())
        newest_commit = max(p.committed for p in promises)
        in_flight = max((p for p in promises if p.accepted > newest_commit and p.accepted_obj is not None),
                        key=lambda p: p.accepted, default=None)
        if in_flight is not None:
            self.state, self.proposal = State.FINISHING, as_object(in_flight.accepted_obj)
            return self._propose(self.proposal)
        current = objects.merge_all(as_object(p.current) for p in promises)
        if not self.write:
            return self._answer(True, current)
        try:
            self.check(current)
            proposal = self.build(current)
        except LeaderlessError as exc:
            return self._answer(False, exc)
        self.state, self.proposal, self.proposed_ours = State.PROPOSING, proposal, True
        return self._propose(proposal)

    def _propose(self, proposal: Any) -> list[Effect]:
        self.accepted, self.refused, self.failed = set(), set(), set()
        message = PaxosPropose(self.req_id, self.coordinator, self.key, self.ballot, proposal)
        return [Send(node, message) for node in self.targets]

    def _proposal_lost(self) -> list[Effect]:
        """No majority will accept. Another's proposal we were finishing: start over. Our own: start
        over only if no acceptor can hold it (each refused it or never got it); else indeterminate."""
        if self.state is State.FINISHING or not self.accepted:
            if self.state is State.PROPOSING and len(self.refused) + len(self.failed) < len(self.targets):
                return []                             # an answer is still out: it may be an accept
            self.proposed_ours = self.state is State.PROPOSING and bool(self.accepted)
            return self._retry()
        return self._answer(False, QuorumFailed(
            needed=self.majority, got=len(self.accepted), replicas=sorted(self.accepted), op="serial write",
            down=sorted(self.failed), reasons=["a higher ballot won the round after some primaries accepted this "
                                               "write: it may or may not take effect"]))

    def _commit(self) -> list[Effect]:
        self.state = State.COMMITTING if self.state is State.PROPOSING else State.COMMITTING_FOUND
        self.committed, self.failed = set(), set()
        message = PaxosCommit(self.req_id, self.coordinator, self.key, self.ballot, self.proposal)
        return [Send(node, message) for node in self.targets]

    def _commit_lost(self) -> list[Effect]:
        if self.state is State.COMMITTING_FOUND:
            return self._retry()
        return self._answer(False, QuorumFailed(
            needed=self.majority, got=len(self.committed), replicas=sorted(self.committed), op="serial write",
            down=sorted(self.failed), reasons=["chosen, but fewer than a majority could apply it yet: it will take "
                                               "effect once a majority has it"]))

    def _fail_unreachable(self) -> list[Effect]:
        return self._answer(False, QuorumFailed(
            needed=self.majority, got=len(self.promises), replicas=sorted(self.promises),
            op="serial write" if self.write else "serial read", down=sorted(self.failed),
            reasons=["a majority of the key's primaries cannot be reached"]))

    def _answer(self, ok: bool, result: Any) -> list[Effect]:
        self.state = State.DONE
        return [Answer(ok, result)]

    def _next_time(self) -> float:
        return min(self.deadline, self.retry_at) if self.retry_at is not None else self.deadline


def condition_check(condition: tuple | None, key: str) -> Callable[[Obj | None], None]:
    """What a serial write's condition requires of the current object (``VersionMismatch`` if it fails,
    carrying the current values and context)."""
    def check(current: Obj | None) -> None:
        if condition is None:
            return
        if condition[0] == "if_absent":
            if current is not None and not objects.is_tombstone(current):
                raise _mismatch(f"{key!r} exists (if_absent)", current)
        elif objects.context(current) != tuple(condition[1]):
            raise _mismatch(f"{key!r} moved past the expected version", current)
    return check


def _mismatch(message: str, current: Obj | None) -> VersionMismatch:
    return VersionMismatch(message, objects.live_values(current), [list(pair) for pair in objects.context(current)])


def serial_result(current: Obj | None) -> GetResult:
    """What a serial read returns (a siblings or lww bucket's)."""
    return GetResult(objects.live_values(current), objects.context(current))


def record(obj: Obj | bytes | None) -> bytes | None:
    """A stored object as its record (as the acceptor keeps an accepted proposal)."""
    return obj if obj is None or type(obj) is bytes else encode_object(obj)


def as_object(obj: Obj | bytes | None) -> Obj | None:
    """A stored object, from itself or its record (messages between actors of one node carry either)."""
    return decode_object(obj) if type(obj) is bytes else obj


__all__ = ["NO_BALLOT", "PAXOS_ACTOR", "AcceptorState", "Answer", "Arm", "Ballot", "Send", "SerialRequest", "State",
           "condition_check", "on_commit", "on_prepare", "on_propose", "serial_result"]
