"""CoordinatorActor: quorum put/get state machines, held in a table, never blocking.

Every client request becomes a small state machine object keyed by an internal
request id. Replica replies arrive as messages and are routed to their machine;
deadlines are checked on every ``Tick`` from the node's ticker. Nothing here waits on
a future.

Put:  prepare -> waiting_built (the coordinating replica folds the value into a new
      dot) -> waiting_acks (the built object goes to the other N-1 replicas; answer at
      W durable acks) -> answered (late acks counted, not waited for).
Get:  waiting_answers (R replicas asked: this node first, then the fastest lately; one
      more when an asked one is unreachable or slow; all N at ``read_repair_chance``;
      answer at R, merged) -> waiting_read_repair (the rest of the replies asked for, then
      the replicas that were behind get the merged object).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


from storage import crdts, objects
from storage.hlc import HybridClock
from storage.objects import Obj

from .errors import (InvalidRequest, LeaderlessError, QuorumFailed, RequestTimeout, SessionViolation, StorageFull,
                     UnknownBucket, VersionMismatch)
from .options import (storage_key, validate_condition, validate_context, validate_key, validate_timeout,
                      validate_value)
from .mailbox import Actor
from .membership import Membership
from .outbox import Outbox, SendBatch
from .messages import (Ack, Acks, Batch, BucketProps, Built, ClientGet, ClientPut, ClientUpdate, CoordinatePut, GetResult,
                       Refused, Reply, ReplicaGet, ReplicaGetReply, ReplicaPut, StoreHint, Tick, Unreachable, Value)
from .quorum import ReadTally, WriteTally, resolve
from .serial import REPLIES as SERIAL_REPLIES
from .serial import SerialCoordinator
from .stats import Stats

log = logging.getLogger(__name__)

Send = Callable[[str, Any], None]
SESSION_RETRY = 0.05        # seconds between rounds of a session read still waiting for a new enough replica
BUILD_MARGIN = 0.25        # a put moves to the next replica this share of its build window after build_by
SPECULATE_MIN = 0.002       # a read waits at least this long before asking a replica it skipped
LATENCY_GAIN = 0.125        # weight of a new sample in the latency averages (TCP's SRTT gain)
EMPTY_VALUES: dict[str, Any] = {"counter": 0, "set": frozenset(), "register": None, "flag": False, "map": {}}


@dataclass
class Settings:
    """Cluster-wide request settings. (n, r and w are the buckets': ``Membership.bucket``.)

    ``read_repair_chance``: the share of reads (r < n) that ask every replica instead of r of
    them, so read repair also reaches replicas outside the fastest r (Cassandra's
    ``read_repair_chance``); anti-entropy covers the rest.
    """
    timeout: float = 3.0
    read_repair_chance: float = 0.1


@dataclass(slots=True)
class PutRequest:
    client_req_id: int
    reply_to: Any
    key: str
    targets: list[tuple[str, str | None]]
    tally: WriteTally
    deadline: float
    coordinating: str
    built_deadline: float
    value: bytes | None
    context: tuple
    state: str = "waiting_built"
    obj: Obj | None = None
    op: str = "put"
    tried: list[str] = field(default_factory=list)
    nacked: set[str] = field(default_factory=set)
    n: int = 3
    kind: str = "siblings"
    crdt_op: tuple | None = None
    op_id: str | None = None
    condition: tuple | None = None
    timer_at: float = 0.0
    observed: tuple | None = None


@dataclass(slots=True)
class GetRequest:
    client_req_id: int
    reply_to: Any
    key: str
    targets: list[tuple[str, str | None]]
    tally: ReadTally
    deadline: float
    state: str = "waiting_answers"
    bucket_type: str = "siblings"
    min_context: tuple | None = None
    retry_at: float | None = None
    timer_at: float = 0.0
    spare: list[str] = field(default_factory=list)      # replicas not asked (yet), fastest first
    started: float = 0.0
    asked_late: dict[str, float] | None = None          # replica -> when asked, for those asked after the start
    speculate_at: float | None = None


def _may_build_twice(request: PutRequest) -> bool:
    """Whether a put whose coordinating replica is silent may be rerouted to the next one.

    Silence does not tell whether the replica built it (its ``Built`` may be lost, or cut off by a
    partition). A plain put built twice reads back as two siblings with one value (or, in an LWW
    bucket, as one), which is harmless; an operation built twice is counted twice, and a condition
    checked twice can let both of two racing writes win. Those wait for the replica's answer or its
    refusal (``build_by`` passed: it did not build), else fail at their deadline (indeterminate; a
    retry with the same op id meets the same first replica, which applies it once).
    """
    return request.kind in ("siblings", "lww") and request.condition is None


def _build_order(targets: list[tuple[str, str | None]]) -> list[str]:
    """Who may build a write, best first: the reachable primaries in ring order, then the fallbacks."""
    return [node for node, hint in targets if hint is None] + [node for node, hint in targets if hint is not None]


class CoordinatorActor(Actor):
    """Runs every quorum request this node coordinates."""

    def __init__(self, name: str, membership: Membership, send: Send, settings: Settings, stats: Stats,
                 clock: Callable[[], float] = time.monotonic,
                 send_batch: SendBatch | None = None, wall: Callable[[], float] = time.time,
                 local_replica: Any = None, hlc: HybridClock | None = None) -> None:
        super().__init__()
        self.name = name
        # This node's replica actor when it runs on this actor's thread (both hosted on the node's
        # I/O loop): puts this node coordinates are built, and reads answered, by calling it, not by
        # a message each way.
        self.local_replica = local_replica
        self.membership = membership
        self._outbox = Outbox(send, send_batch)
        self.send = self._outbox.send           # sent when the batch at hand is done
        self.settings = settings
        self.stats = stats
        self.clock = clock
        self.wall = wall                                     # for ``CoordinatePut.build_by``
        self.requests: dict[int, PutRequest | GetRequest] = {}
        self._ids = itertools.count(1)
        self._timers: list[tuple[float, int, int]] = []      # (when, sequence, request id)
        self._timer_seq = itertools.count()
        self._replica_latency: dict[str, float] = {}         # node -> smoothed seconds to answer a read
        self._read_latency = 0.0                             # smoothed seconds to r answers, and its
        self._read_deviation = 0.0                           # mean deviation (TCP's SRTT and RTTVAR)
        self._random = random.Random()
        self.serial = SerialCoordinator(name, membership, self.send, self._outbox.reply, stats, settings.timeout,
                                        clock, hlc)

    def on_receive(self, message: Any) -> None:
        items = message.messages if isinstance(message, Batch) else (message,)
        self.stats.incr("coordinator.batches")
        self.stats.incr("coordinator.messages", len(items))
        for item in items:
            try:
                self._handle(item)
            except Exception:  # one bad message must not stop the coordinator
                log.exception("coordinator %s failed on %s", self.name, type(item).__name__)
        self._outbox.flush_unless_busy(self.actor_inbox)

    def on_stop(self) -> None:
        self._outbox.flush()

    def _handle(self, message: Any) -> None:
        if type(message) in SERIAL_REPLIES or (type(message) is Unreachable and message.ballot is not None):
            self.serial.handle(message)
            return
        if type(message) is Acks:
            requests, node = self.requests, message.node
            for req_id in message.req_ids:
                request = requests.get(req_id)
                if request is not None and type(request) is PutRequest:
                    request.tally.add_ack(node)
                    self._after_ack(req_id, request)
            return
        if isinstance(message, (Ack, Built, ReplicaGetReply, Unreachable, Refused)):
            request = self.requests.get(message.req_id)
            if request is None:
                return                                   # late reply of a finished request
            if isinstance(message, Refused):
                self._on_refused(message.req_id, request, message)   # type: ignore[arg-type]
            elif isinstance(message, Unreachable):
                self._on_unreachable(message.req_id, request, message.node)
            elif isinstance(message, Ack):
                self._on_ack(message.req_id, request, message)     # type: ignore[arg-type]
            elif isinstance(message, Built):
                self._on_built(message.req_id, request, message)   # type: ignore[arg-type]
            else:
                self._on_answer(message.req_id, request, message)  # type: ignore[arg-type]
        elif isinstance(message, ClientPut):
            self._start_put(message)
        elif isinstance(message, ClientUpdate):
            self._start_update(message)
        elif isinstance(message, ClientGet):
            self._start_get(message)
        elif isinstance(message, Tick):
            self._expire(message.now)
            self.serial.expire(message.now)
        else:
            log.warning("coordinator %s ignored unexpected %s", self.name, type(message).__name__)

    # --- put ---------------------------------------------------------------------------

    def bucket(self, name: Any) -> BucketProps:
        """A bucket's properties (the default bucket "" has the cluster's)."""
        props = self.membership.bucket(name)
        if props is None:
            raise UnknownBucket(f"no bucket {name!r}: create it first (client.create_bucket)")
        return props

    def _start_put(self, message: ClientPut) -> None:
        op = "delete" if message.value is None else "put"
        try:
            props = self.bucket(message.bucket)
            if message.serial:
                self.serial.start(message, props)
                return
            if props.type not in ("siblings", "lww"):
                raise InvalidRequest(f"bucket {props.name!r} holds {props.type}s: send operations, not values")
            key = storage_key(props.name, validate_key(message.key))
            value = validate_value(message.value)
            context = validate_context(message.context)
            condition = validate_condition(message.condition)
            w = resolve("w", message.w, props.w, props.n)
            timeout = validate_timeout(message.timeout, self.settings.timeout)
        except InvalidRequest as exc:
            self._reply(message.reply_to, message.req_id, False, exc, f"{op}.invalid")
            return
        self._start_write(message.reply_to, message.req_id, key, props, w, timeout, op,
                          kind=props.type, value=value, context=context, condition=condition)

    def _start_update(self, message: ClientUpdate) -> None:
        try:
            props = self.bucket(message.bucket)
            if props.type in ("siblings", "lww"):
                raise InvalidRequest(f"bucket {props.name!r} is a {props.type} bucket: use put/get/delete")
            key = storage_key(props.name, validate_key(message.key))
            if not isinstance(message.op, tuple) or not message.op or not isinstance(message.op[0], str):
                raise InvalidRequest(f"an operation is a tuple like ('increment', 1), got {message.op!r:.60}")
            if not isinstance(message.op_id, str) or not 0 < len(message.op_id) <= 64:
                raise InvalidRequest("an operation needs an op_id string of 1..64 characters")
            observed = None if message.context is None else validate_context(message.context)
            w = resolve("w", message.w, props.w, props.n)
            timeout = validate_timeout(message.timeout, self.settings.timeout)
        except InvalidRequest as exc:
            self._reply(message.reply_to, message.req_id, False, exc, "update.invalid")
            return
        self._start_write(message.reply_to, message.req_id, key, props, w, timeout, "update",
                          kind=f"crdt:{props.type}", crdt_op=message.op, op_id=message.op_id, observed=observed)

    def _start_write(self, reply_to: Any, client_req_id: int, key: str, props: BucketProps, w: int, timeout: float,
                     op: str, *, kind: str, value: bytes | None = None, context: tuple = (),
                     crdt_op: tuple | None = None, op_id: str | None = None, condition: tuple | None = None,
                     observed: tuple | None = None) -> None:
        targets = self.membership.preference_list(key, props.n)
        nodes = [node for node, _ in targets]
        tally = WriteTally(needed=w, targets=tuple(nodes))
        if tally.hopeless:
            down = sorted(self.membership.down & set(self.membership.primaries(key, props.n)))
            self._reply(reply_to, client_req_id, False, QuorumFailed(needed=w, got=0, replicas=[], op=op, down=down),
                        f"{op}.quorum_failed")
            return
        # Operations and conditions go to the key's first reachable primary, so a retry (with the
        # same op id) and a check meet the same state, and a remove is built where the whole object
        # is (a fallback, with no copy, builds one only when no primary is reachable); plain
        # writes take the local fast path.
        local = kind in ("siblings", "lww") and condition is None and self.name in nodes
        coordinating = self.name if local else _build_order(targets)[0]
        req_id = next(self._ids)
        now = self.clock()
        request = PutRequest(client_req_id, reply_to, key, targets, tally, now + timeout, coordinating,
                             now, value, context, op=op, kind=kind, crdt_op=crdt_op, op_id=op_id, condition=condition,
                             n=props.n, observed=observed)
        self.requests[req_id] = request
        self._coordinate(req_id, request, coordinating, now)

    def _coordinate(self, req_id: int, request: PutRequest, node: str, now: float) -> None:
        """Ask ``node`` to build the new version; if it does not answer soon, the next target is asked.

        ``node`` may build it only until ``build_by`` (wall clock); the next one is asked a quarter of
        that window later, so a slow or paused replica that gets to the request late refuses it instead
        of building the write a second time (a second dot: an operation counted twice, a put read back
        as two siblings). This holds while the hosts' clocks agree to within that quarter (a quarter
        of a second at the default timeout), as Cassandra's cross-node timeouts assume."""
        request.coordinating = node
        request.tried.append(node)
        window = min(request.deadline - now, self.settings.timeout) / 3
        request.built_deadline = now + window * (1 + BUILD_MARGIN)
        hint = next(h for target, h in request.targets if target == node)
        local = self.local_replica if node == self.name else None
        if local is not None:
            try:
                answer = local.build_here(CoordinatePut(req_id, self.name, request.key, request.value,
                                                        request.context, hint, request.kind, request.crdt_op,
                                                        request.op_id, request.condition, None, request.observed))
            except Exception:  # as when the replica fails on a CoordinatePut: silence, then the next replica
                log.exception("coordinator %s: building %r here failed", self.name, request.key)
                self._arm(req_id, request)
                return
            if answer is not None:
                if type(answer) is Built:
                    self._on_built(req_id, request, answer)
                    self._arm(req_id, request)
                else:
                    self._on_refused(req_id, request, answer)
                return
        self._arm(req_id, request)
        self.send(node, CoordinatePut(req_id, self.name, request.key, request.value, request.context, hint,
                                      request.kind, request.crdt_op, request.op_id, request.condition,
                                      self.wall() + window, request.observed))

    def _on_refused(self, req_id: int, request: PutRequest | GetRequest, message: Refused) -> None:
        if not isinstance(request, PutRequest) or message.node != request.coordinating:
            return
        if isinstance(message.error, RequestTimeout):      # too late to build there: the next one
            if request.state == "waiting_built":
                self._reroute(req_id, request, self.clock())
            return
        del self.requests[req_id]
        request.state = "answered"
        error = message.error if isinstance(message.error, LeaderlessError) else InvalidRequest(str(message.error))
        outcome = "mismatch" if isinstance(error, VersionMismatch) else "refused"
        self._reply(request.reply_to, request.client_req_id, False, error, f"{request.op}.{outcome}")

    def _reroute(self, req_id: int, request: PutRequest, now: float) -> None:
        """The coordinating replica failed or is slow: count it failed and move to the next target."""
        request.tally.add_failure(request.coordinating)
        self.stats.incr("put.rerouted")
        untried = [node for node in _build_order(request.targets) if node not in request.tried]
        if not untried or request.tally.hopeless:
            self._fail_put(request)
            self._finish_put(req_id, request)
            return
        self._coordinate(req_id, request, untried[0], now)

    def _on_unreachable(self, req_id: int, request: PutRequest | GetRequest, node: str) -> None:
        if isinstance(request, PutRequest) and request.state == "waiting_built":
            if node == request.coordinating:
                self._reroute(req_id, request, self.clock())
            return
        if isinstance(request, PutRequest):
            self._on_ack(req_id, request, Ack(req_id, node, False))
            return
        request.tally.add_failure(node)
        if request.state == "waiting_answers" and not request.tally.enough:
            self._ask_spare(req_id, request)
        if request.state == "waiting_answers" and request.tally.hopeless:
            self.requests.pop(req_id, None)
            self._fail_get(request)
        elif request.tally.final:
            self._read_repair(req_id, request)
            self.requests.pop(req_id, None)

    def _on_built(self, req_id: int, request: PutRequest, message: Built) -> None:
        if request.state != "waiting_built" or message.node != request.coordinating:
            return
        request.obj = message.obj
        request.state = "waiting_acks"
        plain = None                                     # one message for every target without a hint
        for node, hint in request.targets:
            if node != request.coordinating:
                if hint is None:
                    if plain is None:
                        plain = ReplicaPut(req_id, self.name, request.key, message.obj, None)
                    self.send(node, plain)
                else:
                    self.send(node, ReplicaPut(req_id, self.name, request.key, message.obj, hint))

    def _on_ack(self, req_id: int, request: PutRequest, message: Ack) -> None:
        if message.ok:
            request.tally.add_ack(message.node)
        else:
            request.tally.add_failure(message.node, message.error)
            if message.error is not None:
                request.nacked.add(message.node)
        self._after_ack(req_id, request)

    def _after_ack(self, req_id: int, request: PutRequest) -> None:
        """An ack or a failure was counted: answer at W acks (or when W is out of reach), finish when all are in."""
        tally = request.tally
        acked = len(tally.acked)                     # (the tally's properties, inlined: once per ack)
        if request.state == "answered":
            self.stats.incr("put.late_acks")
        elif acked >= tally.needed and request.obj is not None:
            request.state = "answered"
            self._reply(request.reply_to, request.client_req_id, True, objects.context(request.obj),
                        "put.ok" if request.op == "put" else f"{request.op}.ok")
        elif tally.hopeless:
            self._fail_put(request)
            self._finish_put(req_id, request)
            return
        if acked + len(tally.failed) >= len(tally.targets):
            self._finish_put(req_id, request)

    def _finish_put(self, req_id: int, request: PutRequest) -> None:
        """The put leaves the table. Primaries that never acknowledged a built object (down with no
        fallback, cut off, or their ack lost) get a hint kept here, as Cassandra's coordinator does;
        a fallback that acknowledged already holds the hint for the primary it stood in for."""
        self.requests.pop(req_id, None)
        if request.obj is None:
            return
        if len(request.tally.acked) == len(request.targets) == request.n:
            for _, hint in request.targets:
                if hint is not None:
                    break
            else:
                return                                   # every primary acknowledged: nothing to hint
        acked = set(request.tally.acked)
        covered = acked | {hint for node, hint in request.targets if hint is not None and node in acked}
        missing = [p for p in self.membership.primaries(request.key, request.n)
                   if p not in covered and p not in request.nacked and p != self.name]
        if missing:
            self.send(self.name, StoreHint([(p, request.key, request.obj) for p in missing]))

    def _fail_put(self, request: PutRequest) -> None:
        """Answer a put that cannot reach W: ``StorageFull`` if a replica refused for lack of space
        (whatever order the answers came in), else ``QuorumFailed``."""
        request.state = "answered"
        tally = request.tally
        full = [e for e in tally.errors if isinstance(e, StorageFull)]
        error: LeaderlessError = full[0] if full else QuorumFailed(
            needed=tally.needed, got=len(tally.acked), replicas=tally.acked, op=request.op,
            reasons=[str(e) for e in tally.errors])
        self._reply(request.reply_to, request.client_req_id, False, error, f"{request.op}.quorum_failed")

    # --- get ---------------------------------------------------------------------------

    def _start_get(self, message: ClientGet) -> None:
        try:
            props = self.bucket(message.bucket)
            if message.serial:
                self.serial.start(message, props)
                return
            key = storage_key(props.name, validate_key(message.key))
            r = resolve("r", message.r, props.r, props.n)
            timeout = validate_timeout(message.timeout, self.settings.timeout)
            min_context = validate_context(message.min_context) if message.min_context else None
        except InvalidRequest as exc:
            self._reply(message.reply_to, message.req_id, False, exc, "get.invalid")
            return
        targets = self.membership.preference_list(key, props.n)
        nodes = [node for node, _ in targets]
        tally = ReadTally(needed=r, targets=tuple(nodes))
        if tally.hopeless:
            down = sorted(self.membership.down & set(self.membership.primaries(key, props.n)))
            self._reply(message.reply_to, message.req_id, False,
                        QuorumFailed(needed=r, got=0, replicas=[], op="get", down=down), "get.quorum_failed")
            return
        req_id = next(self._ids)
        now = self.clock()
        request = GetRequest(message.req_id, message.reply_to, key, targets, tally, now + timeout,
                             bucket_type=props.type, min_context=min_context, started=now)
        self.requests[req_id] = request
        order = self._read_order(nodes)
        if r < len(order) and self._random.random() >= self.settings.read_repair_chance:
            request.spare = order[r:]
            order = order[:r]
            request.speculate_at = now + self._speculation_delay(timeout)
        tally.targets = ()
        self._arm(req_id, request)
        self._ask(req_id, request, order)

    def _read_order(self, nodes: list[str]) -> list[str]:
        """Replicas to read from, best first: this node (no network), then by how fast each answered
        lately (Cassandra's dynamic snitch, without the periodic reset: the reads that ask every
        replica, and the speculative ones, keep every replica's figure fresh)."""
        latency = self._replica_latency
        others = [node for node in nodes if node != self.name]
        if len(others) > 1:
            others.sort(key=lambda node: latency.get(node, 0.0))
        return others if len(others) == len(nodes) else [self.name, *others]

    def _speculation_delay(self, timeout: float) -> float:
        """How long a read waits for its r replicas before asking one more: TCP's retransmission
        timeout over this coordinator's read latencies (mean + 4 deviations), so roughly the
        slowest percent of reads, never less than SPECULATE_MIN nor more than half the timeout."""
        return min(max(SPECULATE_MIN, self._read_latency + 4 * self._read_deviation), timeout / 2)

    def _ask(self, req_id: int, request: GetRequest, nodes: list[str]) -> None:
        request.tally.targets += tuple(nodes)
        here = False
        for node in nodes:
            if node == self.name and self.local_replica is not None:
                here = True                       # asked last, by a call: its answer may finish the read
            else:
                self.send(node, ReplicaGet(req_id, self.name, request.key))
        if here:
            try:
                done, answer = self.local_replica.answer_here(request.key)
            except Exception:  # as when the replica fails on a ReplicaGet: no answer from it
                log.exception("coordinator %s: reading %r here failed", self.name, request.key)
                return
            if done:
                self._on_answer(req_id, request, ReplicaGetReply(req_id, self.name, answer))
            else:
                self.send(self.name, ReplicaGet(req_id, self.name, request.key))

    def _ask_spare(self, req_id: int, request: GetRequest) -> bool:
        """Ask the best replica not asked yet; False if there is none."""
        if not request.spare:
            return False
        node = request.spare.pop(0)
        if request.asked_late is None:
            request.asked_late = {}
        request.asked_late[node] = self.clock()
        self._ask(req_id, request, [node])
        return True

    def _ask_replicas(self, req_id: int, request: GetRequest) -> None:
        """A session read's next round: every replica."""
        nodes = [node for node, _ in request.targets]
        request.spare = []
        request.asked_late = dict.fromkeys(nodes, self.clock())
        request.tally = ReadTally(needed=request.tally.needed, targets=())
        self._ask(req_id, request, nodes)

    def _note_latency(self, node: str, request: GetRequest) -> None:
        late = request.asked_late
        sample = self.clock() - (late[node] if late is not None and node in late else request.started)
        latency = self._replica_latency
        old = latency.get(node)
        latency[node] = sample if old is None else old + LATENCY_GAIN * (sample - old)

    def _note_read(self, request: GetRequest) -> None:
        sample = self.clock() - request.started
        error = sample - self._read_latency
        self._read_latency += LATENCY_GAIN * error
        self._read_deviation += 0.25 * (abs(error) - self._read_deviation)

    def _on_answer(self, req_id: int, request: GetRequest, message: ReplicaGetReply) -> None:
        try:
            request.tally.add_answer(message.node, message.obj)
        except Exception as exc:              # a malformed record counts as no answer
            log.warning("coordinator %s: unreadable answer from %s for %r: %s", self.name, message.node,
                        request.key, exc)
            self._on_unreachable(req_id, request, message.node)
            return
        if message.node != self.name:
            self._note_latency(message.node, request)
        if request.state == "waiting_answers" and request.tally.enough:
            merged = request.tally.merged()
            context = objects.context(merged)
            if request.min_context is None or objects.context_descends(context, request.min_context):
                request.state = "waiting_read_repair"
                self._note_read(request)
                self._reply(request.reply_to, request.client_req_id, True,
                            self._result(request.bucket_type, merged, context), "get.ok")
        if request.tally.final:
            if request.state == "waiting_answers" and self._ask_spare(req_id, request):
                return                           # a session read not yet satisfied: try the rest
            self._read_repair(req_id, request)
            if request.state == "waiting_answers":
                # A session read that saw nothing new enough: ask every replica again soon.
                request.retry_at = self.clock() + SESSION_RETRY
                self._arm(req_id, request)
                request.tally = ReadTally(needed=request.tally.needed, targets=request.tally.targets)
                self.stats.incr("get.session_retries")
            else:
                self.requests.pop(req_id, None)

    def _result(self, bucket_type: str, merged: Obj | None, context: tuple) -> GetResult | Value:
        if bucket_type in ("siblings", "lww"):
            live = objects.live_values(merged)
            self.stats.incr("get.siblings", len(live))
            return GetResult(live, context)
        value = crdts.value(merged) if merged is not None else EMPTY_VALUES[bucket_type]
        return Value(value, context)

    def _read_repair(self, req_id: int, request: GetRequest) -> None:
        behind = request.tally.behind()
        if not behind:
            return
        merged = request.tally.merged()
        hints = dict(request.targets)
        for node in behind:
            self.send(node, ReplicaPut(req_id, self.name, request.key, merged, hints.get(node), want_ack=False))
        self.stats.incr("read_repairs", len(behind))

    # --- time --------------------------------------------------------------------------

    def _arm(self, req_id: int, request: PutRequest | GetRequest) -> None:
        """Wake up for ``request`` at its next due time: its deadline, or sooner its "built" check
        (a put waiting for its coordinating replica) or its session retry. One heap entry per
        request at a time, pushed only when that time changes; entries left behind by a
        finished request, or by a time that moved, are skipped when they come up."""
        when = request.deadline
        if isinstance(request, PutRequest):
            if request.state == "waiting_built":
                when = min(when, request.built_deadline)
        else:
            if request.retry_at is not None:
                when = min(when, request.retry_at)
            if request.speculate_at is not None:
                when = min(when, request.speculate_at)
        if when != request.timer_at:
            request.timer_at = when
            heapq.heappush(self._timers, (when, next(self._timer_seq), req_id))

    def _expire(self, now: float) -> None:
        """Handle the requests whose timer is due (a heap: no scan of the request table per tick)."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, req_id = heapq.heappop(timers)
            request = self.requests.get(req_id)
            if request is None or request.timer_at != when:
                continue                                  # finished, or re-armed for another time
            request.timer_at = 0.0
            if now >= request.deadline:
                del self.requests[req_id]
                if isinstance(request, PutRequest):
                    if request.state != "answered":
                        self._fail_put(request)
                    self._finish_put(req_id, request)
                elif request.state == "waiting_answers":
                    self._fail_get(request)
                else:
                    self._read_repair(req_id, request)
                continue
            if isinstance(request, PutRequest):
                if request.state == "waiting_built" and now >= request.built_deadline:
                    if _may_build_twice(request):
                        self._reroute(req_id, request, now)
                        continue                          # _coordinate armed the next check
                    request.built_deadline = request.deadline     # wait for it (or its refusal)
            else:
                if request.speculate_at is not None and now >= request.speculate_at:
                    request.speculate_at = None
                    if request.state == "waiting_answers" and self._ask_spare(req_id, request):
                        self.stats.incr("get.speculative")
                if request.retry_at is not None and now >= request.retry_at:
                    request.retry_at = None
                    self._ask_replicas(req_id, request)
                    if req_id not in self.requests:
                        continue
            self._arm(req_id, request)

    def _fail_get(self, request: GetRequest) -> None:
        tally = request.tally
        if request.min_context is not None and (tally.enough or request.retry_at is not None):
            self._reply(request.reply_to, request.client_req_id, False,
                        SessionViolation("no replica reachable from this coordinator holds what the session "
                                         "already wrote or read"), "get.session_violation")
            return
        self._reply(request.reply_to, request.client_req_id, False,
                    QuorumFailed(needed=tally.needed, got=len(tally.answers), replicas=sorted(tally.answers),
                                 op="get"), "get.quorum_failed")

    def _reply(self, reply_to: Any, client_req_id: int, ok: bool, result: Any, outcome: str) -> None:
        self.stats.incr(outcome)
        if reply_to is not None:
            self._outbox.reply(reply_to, Reply(client_req_id, ok, result))


__all__ = ["CoordinatorActor", "Settings"]
