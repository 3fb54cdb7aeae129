"""ReplicaActor: owns the node's store, applies writes, serves reads and repair traffic.

Group commit: writes are applied to an in-memory overlay of pending objects and
acknowledged only after the one transaction holding them commits (with sync). The
first write of a batch tells the actor a ``Flush``; every write dequeued before that
``Flush`` joins the same group. The group goes to the replica's ``CommitterActor``
(its own thread: the replica may run on the node's I/O loop, which must never wait on a
disk); while it commits, the replica serves reads and stages the next group, and the
group's acks go out when ``Committed`` comes back. Reads see the overlay (staged, then
in flight), so consecutive writes to one key build on each other and concurrent puts
get distinct dots. A ``Drop`` compares against durable state: it waits until nothing is
staged or in flight, and the messages after it wait for it.

The coordinating replica of a put sends the built object (``Built``) as soon as it
exists, so the other replicas' commits run alongside its own; its ``Ack`` follows
the commit.

The replica also keeps the node's Merkle tree (rebuilt from the store on start; a commit
only notes its keys, and a partition's tree catches up from the store when it is read) and
answers the repairer's tree, batch-read and batch-write requests.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pykka

from storage import crdts, merkle, objects, versions
from storage.codec import decode_object
from storage.crdts import Crdt
from storage.hlc import HybridClock, Timestamp
from storage.merkle import SEGMENTS, MerkleTree
from storage.objects import Obj
from storage.store import Store, StoreFull
from storage.versions import DVVSet

from . import paxos
from .committer import Commit, Committed, CommitterActor, DeleteHintsJob, DropKeys, Dropped, commit, drop
from .errors import InvalidRequest, LeaderlessError, NotPresent, RequestTimeout, StorageFull, VersionMismatch
from .mailbox import Actor
from .membership import Membership
from .messages import (
    Ack,
    Acks,
    Batch,
    BatchAck,
    Built,
    CoordinatePut,
    DeleteHints,
    Drop,
    Flush,
    GetMany,
    GetManyReply,
    InspectRequest,
    LocalObject,
    PaxosAccepted,
    PaxosCommit,
    PaxosCommitted,
    PaxosPrepare,
    PaxosPromise,
    PaxosPropose,
    PutMany,
    ReapCandidates,
    ReapCandidatesReply,
    Refused,
    ReplicaGet,
    ReplicaGetReply,
    ReplicaPut,
    Reply,
    StoreHint,
    TreeReply,
    TreeRequest,
)
from .outbox import Outbox, SendBatch
from .stats import Stats

log = logging.getLogger(__name__)

Send = Callable[[str, Any], None]
_KEYED = (ReplicaPut, CoordinatePut, ReplicaGet)
_REPORTS = frozenset({Committed, Dropped, Flush})     # handled even while a drop holds other messages back
DIRTY_LIMIT = 4096      # committed keys of one partition waiting to enter the hash tree before it catches up
UNSORTED_LIMIT = 1 << 16  # committed keys waiting to be hashed into their partitions, at most
EPOCH_LIMIT = 1 << 16     # keys with an actor id of their own (rebuilt after a drop) before all are renewed
TreeId = tuple[int, int]  # a hash tree's name: (ring partition, the n of its keys' buckets)
ACTOR_META = "actor_id"   # store metadata: {"id": the replica's actor id, "clean": whether it stopped cleanly}


def new_actor_id(name: str) -> str:
    """A new id for the dots this replica issues: taken when the replica may have lost dots it
    issued under the old one (a crash, a failed commit); kept across a clean restart
    (``ReplicaActor.on_start``); a key this replica dropped gets an id of its own
    (``ReplicaActor.actor_for``).

    A coordinating replica sends a new object out before its own commit, so a dot can
    reach other replicas without being durable here. Were the id reused after a crash or
    a failed commit, the next write could get the same dot for another value, and sync
    would silently drop one of them (Riak's kv679). The same holds for a key whose copy this
    replica dropped (handed off, reaped): its next dot would be counted from nothing and could
    equal one the primaries already hold, so they would acknowledge the write and keep the old
    value. After a clean stop nothing was sent that is not stored and nothing dropped waits to
    be built again, so the id stays, and version vectors do not grow by an entry per restart.
    """
    return f"{name}.{secrets.token_hex(4)}"


def local_object(obj: Obj | None) -> LocalObject | None:
    """The user-facing view of one stored object."""
    if obj is None:
        return None
    siblings = len(versions.values(obj)) if isinstance(obj, DVVSet) else 1
    return LocalObject(values=objects.live_values(obj), tombstone=objects.is_tombstone(obj),
                       version=dict(objects.context(obj)), siblings=siblings)


def build(current: Obj | None, message: CoordinatePut, actor_id: str, hlc: HybridClock) -> Obj:
    """The coordinating replica's step: the new object for a put, an LWW put or a CRDT operation.

    Raises VersionMismatch when the request's condition does not hold on ``current``,
    InvalidRequest for an operation the bucket's type does not have.
    """
    condition = message.condition
    context = message.context
    if condition is not None:
        if condition[0] == "if_absent":
            if current is not None and not objects.is_tombstone(current):
                raise VersionMismatch(f"{message.key!r} exists (if_absent)")
        elif condition[0] == "if_context":
            if objects.context(current) != tuple(condition[1]):
                raise VersionMismatch(f"{message.key!r} moved past the expected version")
            context = context or tuple(condition[1])    # the write replaces the version it was checked against
    kind = message.kind
    if kind == "siblings":
        if current is not None and not isinstance(current, DVVSet):
            raise InvalidRequest(f"{message.key!r} holds a {current.type}, not a siblings value")
        return versions.update(current, context, message.value, actor_id)
    if kind == "lww":
        last = current.state[0] if isinstance(current, Crdt) and current.state else None
        ts = hlc.after(Timestamp(*last) if last is not None else None)
        return _apply(current, "register", ("assign", message.value), actor_id, None, ts)
    if kind.startswith("crdt:"):
        return _apply(current, kind[5:], tuple(message.op or ()), actor_id, message.op_id, hlc.now(),
                      message.observed)
    raise InvalidRequest(f"unknown write kind {kind!r}")


def _apply(current: Obj | None, type_: str, op: tuple, actor_id: str, op_id: str | None, ts: Timestamp,
           observed: tuple | None = None) -> Crdt:
    if current is not None and not isinstance(current, Crdt):
        raise InvalidRequest(f"the key holds siblings, not a {type_}")
    try:
        return crdts.apply(current, type_, op, actor_id, op_id, ts, observed)
    except crdts.NotPresent as exc:
        raise NotPresent(str(exc)) from exc
    except crdts.CrdtError as exc:
        raise InvalidRequest(str(exc)) from exc


class ReplicaActor(Actor):
    """Applies writes durably, answers reads, keeps the hash tree."""

    def __init__(self, name: str, store: Store, send: Send, stats: Stats, membership: Membership,
                 clock: Callable[[], float] = time.monotonic, hlc: HybridClock | None = None,
                 send_batch: SendBatch | None = None, wall: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.name = name
        self.hlc = hlc or HybridClock(name)
        self.actor_id = new_actor_id(name)
        self.store = store
        self._outbox = Outbox(send, send_batch)
        self.send = self._outbox.send           # sent when the batch at hand is done
        self.stats = stats
        self.membership = membership
        self.clock = clock
        self.wall = wall                     # for ``CoordinatePut.build_by`` (hosts' clocks agree closely)
        self.tree = MerkleTree()
        self.tombstones: dict[str, float] = {}      # key -> when this replica first held its tombstone
        self._pending: dict[str, Obj] = {}
        self._committing: dict[str, Obj] = {}        # the group commit in flight (with the committer)
        self._busy = False                           # the committer has a job of ours
        self._committer: Any = None                  # started with the actor; None: commits run inline
        self._stash: list[Any] | None = None         # messages held back until a drop is done
        self._pending_hints: list[tuple[str, str, Obj]] = []
        self._pending_paxos: dict[str, bytes] = {}   # Paxos acceptor states to keep with the next commit
        self._committing_paxos: dict[str, bytes] = {}
        self._acks: list[tuple[str, Any]] = []
        self._flush_told = False
        self._records: dict[str, bytes | None] = {}  # stored records prefetched for the batch at hand
        self._dirty: dict[TreeId, dict[str, int]] = {}  # tree -> committed keys not yet in it (key hash)
        self._buckets_seen: Any = None               # membership.buckets when keys of unknown buckets were last sorted
        self._unsorted: dict[str, None] = {}         # committed keys not yet hashed into ``_dirty``
        self._dropped_keys: set[str] = set()         # dropped since ``actor_id`` was taken, not built since
        self._key_actors: dict[str, str] = {}        # key -> its own actor id (built again after a drop)
        self._epochs = itertools.count(1)

    def on_start(self) -> None:
        """Take back the actor id of a clean stop (else keep the new one); rebuild the hash tree (and the
        tombstone list) from the store."""
        self._resume_actor_id()
        now = self.clock()
        tree_id = self._tree_id
        count = 0
        for key, obj in self.store.items():
            self.tree.update(tree_id(key), key, obj)
            if objects.is_tombstone(obj):
                self.tombstones[key] = now
            count += 1
        log.info("replica %s: hash tree rebuilt over %d keys", self.name, count)
        self._committer = CommitterActor.start(self.store, self.actor_ref)

    # --- dispatch ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        items = message.messages if isinstance(message, Batch) else (message,)
        self.stats.incr("replica.batches")
        self.stats.incr("replica.messages", len(items))
        if len(items) > 1:
            self._prefetch(items)
        self._handle_all(items)
        self._records = {}
        self._outbox.flush_unless_busy(self.actor_inbox)

    def _handle_all(self, items: Any) -> None:
        for item in items:
            if self._stash is not None and type(item) not in _REPORTS:
                self._stash.append(item)
                continue
            try:
                self._handle(item)
            except Exception:  # one bad message must not stop the replica
                log.exception("replica %s failed on %s", self.name, type(item).__name__)

    def _prefetch(self, items: Any) -> None:
        """Read the stored objects a batch of puts and gets needs in one store transaction."""
        pending = self._pending
        try:
            keys = {m.key for m in items if type(m) in _KEYED and m.key not in pending}
            if len(keys) > 1:
                self._records = self.store.get_records(keys)
        except Exception:  # a bad key fails its own message below, not the whole batch
            log.debug("replica %s: batch read failed; reading key by key", self.name, exc_info=True)

    def on_stop(self) -> None:
        self._outbox.flush()
        if self._committer is not None:
            try:
                self._committer.stop(timeout=10)     # its job at hand finishes first
            except pykka.ActorDeadError:
                pass
        clean = not (self._busy or self._pending or self._acks or self._stash or self._dropped_keys
                     or self._key_actors)
        if clean:
            self._save_actor_id(clean=True)

    def _resume_actor_id(self) -> None:
        """Reuse the id saved by a clean stop; mark it in use, so a crash from now on renews it."""
        try:
            saved = json.loads(self.store.meta_get(ACTOR_META) or b"{}")
        except ValueError:
            saved = {}
        if saved.get("clean") and isinstance(saved.get("id"), str) and saved["id"].startswith(f"{self.name}."):
            self.actor_id = saved["id"]
            log.info("replica %s: actor id %s kept from a clean stop", self.name, self.actor_id)
        self._save_actor_id(clean=False)

    def _save_actor_id(self, clean: bool) -> None:
        try:
            self.store.meta_put(ACTOR_META, json.dumps({"id": self.actor_id, "clean": clean}).encode())
        except Exception:  # not saved: the next start takes a new id, which is always safe
            log.warning("replica %s: could not save its actor id", self.name, exc_info=True)

    def _handle(self, message: Any) -> None:
        if isinstance(message, ReplicaPut):
            self._replica_put(message)
        elif isinstance(message, CoordinatePut):
            self._coordinate_put(message)
        elif isinstance(message, ReplicaGet):
            self.send(message.coordinator, ReplicaGetReply(message.req_id, self.name, self._answer(message.key)))
        elif isinstance(message, Flush):
            self._flush()
        elif isinstance(message, Committed):
            self._committed(message)
        elif isinstance(message, Dropped):
            self._dropped(message)
        elif isinstance(message, PutMany):
            self._put_many(message)
        elif isinstance(message, GetMany):
            objects = {key: self._current(key) for key in message.keys}
            self.send(message.coordinator, GetManyReply(message.req_id, self.name, objects))
        elif isinstance(message, TreeRequest):
            self.send(message.coordinator, TreeReply(message.req_id, self.name, message.partition, message.level,
                                                     self._tree_level(message)))
        elif isinstance(message, Drop):
            self._drop(message)
        elif isinstance(message, DeleteHints):
            if self._committer is not None:
                self._committer.tell(DeleteHintsJob(message.hint_ids))
            else:
                self.store.delete_hints(message.hint_ids)
        elif isinstance(message, StoreHint):
            self._pending_hints.extend(message.items)
            self.stats.incr("hints.for_missed_acks", len(message.items))
            self._tell_flush()
        elif isinstance(message, ReapCandidates):
            message_reply = ReapCandidatesReply(message.req_id, self._reap_candidates(message.grace))
            self.send(self.name, message_reply)
        elif isinstance(message, InspectRequest):
            message.reply_to.send(Reply(message.req_id, True, local_object(self._current(message.key))))
        elif isinstance(message, (PaxosPrepare, PaxosPropose, PaxosCommit)):
            self._paxos(message)
        else:
            log.warning("replica %s ignored unexpected %s", self.name, type(message).__name__)

    # --- writes ------------------------------------------------------------------------

    def _current(self, key: str) -> Obj | None:
        obj = self._pending.get(key)
        if obj is None:
            obj = self._committing.get(key)
        if obj is not None:
            return obj
        records = self._records
        if key in records:
            record = records[key]
            return None if record is None else decode_object(record)
        return self.store.get(key)

    def _answer(self, key: str) -> Obj | bytes | None:
        """What a read gets: the staged object, else the stored record as it is (the coordinator
        decodes it, once for all the replicas that answered the same bytes)."""
        obj = self._pending.get(key)
        if obj is None:
            obj = self._committing.get(key)
        if obj is not None:
            return obj
        records = self._records
        return records[key] if key in records else self.store.get_records((key,))[key]

    def _coordinate_put(self, message: CoordinatePut) -> None:
        if message.build_by is not None and self.wall() > message.build_by:
            # Too late (this process was paused, or the request waited too long): the coordinator
            # has asked, or will ask, the next replica, and two builds would apply the write twice.
            self.stats.incr("put.too_late_to_build")
            self.send(message.coordinator, Refused(message.req_id, self.name,
                                                   RequestTimeout(f"{self.name}: the request came too late to build")))
            return
        self.send(message.coordinator, self._build(message))

    def build_here(self, message: CoordinatePut) -> Built | Refused | None:
        """The local fast path: this node's coordinator, on this replica's thread (both hosted on the
        I/O loop), has a put built by a call instead of a ``CoordinatePut`` and a ``Built`` message.
        None when it must go as a message: a drop holds messages back, or this actor has stopped."""
        if self._stash is not None or self.actor_stopped.is_set():
            return None
        return self._build(message)

    def answer_here(self, key: str) -> tuple[bool, Obj | bytes | None]:
        """The local fast path for reads: ``(True, what a ReplicaGet would answer)``, or ``(False, None)``
        when the read must go as a message (a drop holds messages back, or this actor has stopped)."""
        if self._stash is not None or self.actor_stopped.is_set():
            return False, None
        return True, self._answer(key)

    def _build(self, message: CoordinatePut) -> Built | Refused:
        """Build the new version, stage it, and queue its ack for after the commit."""
        try:
            obj = build(self._current(message.key), message, self.actor_for(message.key), self.hlc)
        except LeaderlessError as exc:
            return Refused(message.req_id, self.name, exc)
        self._stage(message.key, obj, message.hint_for)
        self._acks.append((message.coordinator, Ack(message.req_id, self.name, True)))
        return Built(message.req_id, self.name, obj)

    def _replica_put(self, message: ReplicaPut) -> None:
        changed = self._merge(message.key, message.obj, message.hint_for)
        if message.want_ack:
            ack = Ack(message.req_id, self.name, True)
            if changed or message.key in self._pending or message.key in self._committing or \
                    message.hint_for is not None:
                self._acks.append((message.coordinator, ack))
                self._tell_flush()
            else:
                self.send(message.coordinator, ack)      # nothing new and already durable

    def _put_many(self, message: PutMany) -> None:
        for key, obj in message.items:
            self._merge(key, obj, None)
        if message.want_ack:
            self._acks.append((message.coordinator, BatchAck(message.req_id, self.name, True)))
            self._tell_flush()

    def _merge(self, key: str, obj: Obj, hint_for: str | None) -> bool:
        """Sync ``obj`` into our copy; True when that changed it (staged for the next commit)."""
        current = self._current(key)
        merged = objects.merge(current, obj)
        changed = current is None or not objects.equal(merged, current)
        if changed:
            self._stage(key, merged, hint_for)
        elif hint_for is not None:
            self._pending_hints.append((hint_for, key, merged))
            self._tell_flush()
        return changed

    def _stage(self, key: str, obj: Obj, hint_for: str | None) -> None:
        self._pending[key] = obj
        if hint_for is not None:
            self._pending_hints.append((hint_for, key, obj))
        self._tell_flush()

    def _tell_flush(self) -> None:
        if not self._flush_told:
            self._flush_told = True
            self.actor_ref.tell(Flush())

    def _flush(self) -> None:
        """Hand what is staged to the committer as one group (inline when there is no committer).
        With a group already in flight, nothing happens now: its ``Committed`` sends the next."""
        self._flush_told = False
        if self._busy:
            return
        self._records = {}                        # the commit below changes what is stored
        objects, hints, acks, ballots = self._pending, self._pending_hints, self._acks, self._pending_paxos
        self._pending, self._pending_hints, self._acks, self._pending_paxos = {}, [], [], {}
        if not objects and not hints and not ballots:
            self._send_acks(acks)             # nothing new to write: these waited for an earlier commit
            self._next_job()
            return
        job = Commit(objects, hints, acks, ballots)
        if self._committer is None:
            self._committed(commit(self.store, job))
            return
        self._committing = objects
        self._committing_paxos = ballots
        self._busy = True
        self._committer.tell(job)

    def _committed(self, message: Committed) -> None:
        """A group commit is done: acknowledge it (never what may not be durable), start the next."""
        self._busy = False
        self._committing = {}
        self._committing_paxos = {}
        objects, acks, exc = message.objects, message.acks, message.error
        if exc is not None:
            full = isinstance(exc, StoreFull)
            if full:
                log.error("replica %s: store full, %d writes refused: %s", self.name, len(objects), exc)
                self.stats.incr("writes.refused_full", len(objects))
            else:
                log.error("replica %s: commit failed: %r", self.name, exc)
            error = (StorageFull if full else LeaderlessError)(f"{self.name}: {exc}")
            self._renew_actor_id()                      # dots sent out in Built were not stored here
            for dest, ack in acks:
                self.send(dest, msgspec.structs.replace(ack, ok=False, error=error))
        else:
            self.stats.incr("replica.commits")
            self.stats.incr("replica.writes", len(objects))
            if message.hints:
                self.stats.incr("hints.stored", message.hints)
            self._index(objects.items())
            self._send_acks(acks)
        self._next_job()

    def _next_job(self) -> None:
        """The committer is free: the next group commit (what was staged meanwhile, joined by what
        is already in the inbox: a ``Flush`` queues behind it), else a drop waiting for it."""
        if self._busy:
            return
        if self._pending or self._pending_hints or self._acks or self._pending_paxos:
            self._tell_flush()
        elif self._stash and type(self._stash[0]) is Drop:
            self._start_drop()

    def _send_acks(self, acks: list[tuple[str, Any]]) -> None:
        """The commit's acknowledgements: the plain ones as one ``Acks`` per coordinator."""
        plain: dict[str, list[int]] = {}
        for dest, ack in acks:
            if type(ack) is Ack and ack.ok:
                ids = plain.get(dest)
                if ids is None:
                    plain[dest] = [ack.req_id]
                else:
                    ids.append(ack.req_id)
            else:
                self.send(dest, ack)
        for dest, ids in plain.items():
            self.send(dest, Ack(ids[0], self.name, True) if len(ids) == 1 else Acks(ids, self.name))

    def _index(self, items: Any) -> None:
        """Note committed keys for the hash tree (see ``_catch_up``) and track tombstones.

        A commit only remembers its keys; they are hashed (to find their partition) when a
        tree is read or ``UNSORTED_LIMIT`` keys wait, so a key written many times in between
        is hashed once.
        """
        now = self.clock()
        unsorted = self._unsorted
        tombstones = self.tombstones
        for key, obj in items:
            unsorted[key] = None
            if objects.is_tombstone(obj):
                tombstones.setdefault(key, now)
            elif tombstones:
                tombstones.pop(key, None)
        if len(unsorted) >= UNSORTED_LIMIT:
            self._sort_dirty()

    def _tree_id(self, key: str, khash: int | None = None) -> TreeId:
        """The tree a key is in: ``(its partition, its bucket's n)``; n 0 while the bucket is unknown here
        (such a tree is neither handed off nor compared until ``_sort_unknown`` moves its keys)."""
        ring = self.membership.ring
        partition = ring.partition_of(key) if khash is None else ring.partition_of_hash(khash)
        return (partition, self.membership.n_for(key) or 0)

    def _sort_dirty(self) -> None:
        """Hash the keys committed since the last sort into their trees' waiting lists."""
        unsorted, self._unsorted = self._unsorted, {}
        tree_id = self._tree_id
        dirty = self._dirty
        full = set()
        for key in unsorted:
            khash = merkle.key_hash(key)
            tree = tree_id(key, khash)
            keys = dirty.get(tree)
            if keys is None:
                dirty[tree] = {key: khash}
            else:
                keys[key] = khash
                if len(keys) >= DIRTY_LIMIT:
                    full.add(tree)
        for tree in full:
            self._catch_up(tree)

    def _sort_unknown(self) -> None:
        """Move keys indexed while their bucket was unknown here into their bucket's trees, once known."""
        buckets = self.membership.buckets
        if buckets is self._buckets_seen:
            return
        self._buckets_seen = buckets
        for tree in [t for t in self.tree.partitions() if t[1] == 0]:
            keys = list(self.tree.keys(tree, range(SEGMENTS)))
            known = [key for key in keys if self.membership.n_for(key)]
            if not known:
                continue
            stored = self.store.get_many(known)
            for key in known:
                self.tree.update(tree, key, None)
                self.tree.update(self._tree_id(key), key, stored[key])

    def _catch_up(self, partition: TreeId) -> None:
        """Bring one partition's hash tree up to date with what is committed.

        Commits only note their keys; the tree is brought up to date per partition when
        it is read (an anti-entropy exchange asks for one partition at a time) or when
        ``DIRTY_LIMIT`` keys of a partition wait. A key written many times in between is
        hashed once, from the store, and the write path does no hashing at all.
        """
        if self._unsorted:
            self._sort_dirty()
        keys = self._dirty.pop(partition, None)
        if not keys:
            return
        try:
            stored = self.store.get_many(keys)
        except Exception:
            self._dirty[partition] = keys              # try again at the next read of this partition
            raise
        update = self.tree.update
        for key, khash in keys.items():
            update(partition, key, stored[key], khash)


    # --- Paxos acceptor (serial requests: actors.paxos) -------------------------------------

    def _paxos_state(self, key: str) -> paxos.AcceptorState:
        data = self._pending_paxos.get(key) or self._committing_paxos.get(key) or self.store.paxos_get(key)
        return paxos.AcceptorState.decode(data)

    def _paxos(self, message: PaxosPrepare | PaxosPropose | PaxosCommit) -> None:
        """Answer a Paxos message; what changes the acceptor's state (or the key's value) is answered
        only once it is durable, with the next group commit."""
        key = message.key
        state = self._paxos_state(key)
        if isinstance(message, PaxosPrepare):
            promised, ok = paxos.on_prepare(state, message.ballot)
            reply: Any = PaxosPromise(message.req_id, self.name, message.ballot, ok, state.promised,
                                      state.accepted, state.accepted_obj, state.committed, self._answer(key))
        elif isinstance(message, PaxosPropose):
            promised, ok = paxos.on_propose(state, message.ballot, paxos.record(message.obj) or b"")
            reply = PaxosAccepted(message.req_id, self.name, message.ballot, ok, state.promised)
        else:
            promised, ok = paxos.on_commit(state, message.ballot), True
            self._merge(key, paxos.as_object(message.obj), None)
            reply = PaxosCommitted(message.req_id, self.name, message.ballot)
        if promised is None:
            self.send(message.coordinator, reply)       # refused: nothing changed, nothing to wait for
            return
        self._pending_paxos[key] = promised.encode()
        self._acks.append((message.coordinator, reply))
        self._tell_flush()

    # --- repair support --------------------------------------------------------------------

    def _tree_level(self, request: TreeRequest) -> Any:
        """One level of a tree; "partitions" and "objects" serve the local repairer's handoff."""
        level = request.level
        if level == "partitions":
            # Which trees this node holds keys of, by (partition, n) (handoff asks often): no catching
            # up needed, the counts of trees with keys still to enter them are upper bounds.
            if self._unsorted:
                self._sort_dirty()
            self._sort_unknown()
            counts = {p: self.tree.key_count(p) for p in self.tree.partitions()}
            for p, keys in self._dirty.items():
                counts[p] = counts.get(p, 0) + len(keys)
            return counts
        tree = (request.partition, request.n)
        self._catch_up(tree)
        if level == "buckets":
            return self.tree.buckets(tree)
        if level == "segments":
            return self.tree.segments(tree, request.which)
        if level == "keys":
            return self.tree.keys(tree, request.which)
        if level == "objects":
            limit = request.which[0] if request.which else 500
            chosen = sorted(self.tree.keys(tree, range(SEGMENTS)))[:limit]
            return [(key, obj) for key in chosen if (obj := self._current(key)) is not None]
        raise ValueError(f"unknown tree level {level!r}")

    def _drop(self, message: Drop) -> None:
        """Delete keys whose current object still equals the one given (nothing newer arrived meanwhile).

        Compared against durable state only: the drop waits until nothing is staged or in flight,
        and every message after it waits for the drop (so a read after it never sees the object)."""
        self._stash = [message, *(self._stash or ())]
        self._next_job()

    def _start_drop(self) -> None:
        assert self._stash is not None
        message = self._stash.pop(0)
        self._records = {}
        job = DropKeys(message.items, message.reason)
        if self._committer is None:
            self._dropped(drop(self.store, job))
            return
        self._busy = True
        self._committer.tell(job)

    def _dropped(self, message: Dropped) -> None:
        """A drop is done: forget the keys, then handle what waited for it."""
        self._busy = False
        if message.error is not None:
            log.error("replica %s: dropping %s keys failed: %r", self.name, message.reason, message.error)
        for key in message.keys:
            tree = self._tree_id(key)
            self.tree.update(tree, key, None)
            if tree[1]:
                self.tree.update((tree[0], 0), key, None)    # indexed before its bucket was known here
            self.tombstones.pop(key, None)
        if message.keys:
            self.stats.incr(f"dropped.{message.reason}", len(message.keys))
            self._dropped_keys.update(message.keys)
            if len(self._dropped_keys) > EPOCH_LIMIT:
                self._renew_actor_id()
        waiting, self._stash = self._stash or [], None
        self._handle_all(waiting)

    def actor_for(self, key: str) -> str:
        """The actor id of the next dot of ``key``: ``actor_id``, unless this replica dropped the key
        since that id was taken. Our dots of it then left with the dropped copy; counted again from
        what is here, they could equal ones the primaries hold, which would keep their old value.
        So the key gets an id of its own, kept for its later writes (they find its dots here)."""
        if not self._dropped_keys and not self._key_actors:
            return self.actor_id
        if key in self._dropped_keys:
            self._dropped_keys.discard(key)
            if len(self._key_actors) >= EPOCH_LIMIT:
                self._renew_actor_id()               # a new id for every key; the lists start again
                return self.actor_id
            self._key_actors[key] = f"{self.actor_id}/{next(self._epochs)}"
            self.stats.incr("replica.key_actor_ids")
        return self._key_actors.get(key, self.actor_id)

    def _renew_actor_id(self) -> None:
        """A new id for every key: none of its dots exist anywhere yet."""
        self.actor_id = new_actor_id(self.name)
        self._dropped_keys.clear()
        self._key_actors.clear()
        self.stats.incr("replica.actor_ids")

    def _reap_candidates(self, grace: float) -> list[tuple[str, Obj]]:
        """Tombstones older than ``grace`` in keys this node leads (first primary), at most 500."""
        limit = self.clock() - grace
        out: list[tuple[str, Obj]] = []
        ring = self.membership.ring
        for key, since in list(self.tombstones.items()):
            if since <= limit and ring.primaries(key, 1)[0] == self.name:
                obj = self.store.get(key)
                if objects.is_tombstone(obj):
                    out.append((key, obj))  # type: ignore[arg-type]
                if len(out) >= 500:
                    break
        return out
