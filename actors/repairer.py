"""RepairerActor: hinted handoff, ownership handoff, Merkle anti-entropy, tombstone reaping.

Four jobs on their own timers, each with at most one round in flight (the rate limit),
all driven by the node's ``Tick`` and by replies that arrive as messages:

- **hints**: hints stored by this node (as a fallback for a down primary) are sent in
  batches to their target once gossip says it is up; each is deleted only after the
  target acknowledged the batch durably. Hints older than ``hint_window`` are dropped
  and counted (anti-entropy covers them).
- **handoff**: a partition this node holds keys of but is no longer a primary for
  (after a ring change, or the copies it kept as a fallback) is streamed to the
  partition's primaries, then dropped here once every primary acknowledged (and only
  the objects that did not change meanwhile). A leaving node that holds nothing it
  does not own is done: it tells the gossiper it has left.
- **anti-entropy**: one partition at a time, with one peer that shares it, compare
  hash trees top down (buckets -> segments -> keys), fetch only the keys that differ
  from both sides, and write the merged object to whichever side was behind (the
  read-repair path). Bytes exchanged grow with the differing keys.
- **reaping**: a tombstone older than ``tombstone_grace`` is removed only when every
  primary of its key answers with that very tombstone.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

from storage import merkle, objects
from storage.store import Store

from .mailbox import Actor
from .membership import LEAVING, Membership
from .messages import (Batch, BatchAck, DeleteHints, Drop, GetMany, GetManyReply, HandoffComplete, PutMany,
                       ReapCandidates, ReapCandidatesReply, Tick, TreeReply, TreeRequest)
from .stats import Stats
from .wire import encode

log = logging.getLogger(__name__)


@dataclass
class RepairSettings:
    """Timers and batch sizes. (Who holds a key comes from its bucket's n: ``Membership.n_for``.)"""
    hint_interval: float = 0.2
    hint_batch: int = 200
    hint_window: float = 3 * 3600.0
    handoff_interval: float = 0.5
    handoff_batch: int = 500
    aae_interval: float = 1.0
    aae_max_keys: int = 1000
    tombstone_grace: float = 4 * 3600.0
    reap_interval: float = 5.0
    job_timeout: float = 3.0           # a round waiting on a dead or cut-off peer gives up this soon


@dataclass
class Job:
    """One round of one job: which replies it waits for, and until when."""
    kind: str
    deadline: float
    waiting: set[str] = field(default_factory=set)
    replies: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


class RepairerActor(Actor):
    """Runs the repair jobs of one node."""

    def __init__(self, name: str, store: Store, membership: Membership, send: Callable[[str, Any], None],
                 gossiper: pykka.ActorRef[Any] | None, stats: Stats, settings: RepairSettings,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.name = name
        self.store = store
        self.membership = membership
        self.send = send
        self.gossiper = gossiper
        self.stats = stats
        self.settings = settings
        self.clock = clock
        self.wall = wall
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._next: dict[str, float] = {}
        self._aae_cursor = 0
        self._held: dict[tuple[int, int], int] = {}     # (partition, n) -> keys, as the last handoff round saw
        self._left = False

    # --- dispatch ------------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        for item in message.messages if isinstance(message, Batch) else (message,):
            try:
                self._handle(item)
            except Exception:  # a bad reply must not stop repair
                log.exception("repairer %s failed on %s", self.name, type(item).__name__)

    def _handle(self, item: Any) -> None:
        if isinstance(item, Tick):
            self._tick(item.now)
        elif isinstance(item, (BatchAck, GetManyReply, TreeReply, ReapCandidatesReply)):
            job = self.jobs.get(item.req_id)
            if job is not None:
                node = self.name if isinstance(item, ReapCandidatesReply) else item.node
                self._reply(item.req_id, job, node, item)
        else:
            log.warning("repairer %s ignored unexpected %s", self.name, type(item).__name__)

    def _tick(self, now: float) -> None:
        for req_id, job in list(self.jobs.items()):
            if job.deadline <= now:
                log.info("repairer %s: %s round timed out waiting for %s", self.name, job.kind, sorted(job.waiting))
                self.stats.incr(f"{job.kind}.timeouts")
                del self.jobs[req_id]
        s = self.settings
        for kind, interval, start in (("hints", s.hint_interval, self._start_hints),
                                      ("handoff", s.handoff_interval, self._start_handoff),
                                      ("aae", s.aae_interval, self._start_aae),
                                      ("reap", s.reap_interval, self._start_reap)):
            if now >= self._next.get(kind, 0.0) and not any(j.kind == kind for j in self.jobs.values()):
                self._next[kind] = now + interval
                start(now)

    def _job(self, kind: str, now: float, waiting: set[str], **data: Any) -> int:
        req_id = next(self._ids)
        self.jobs[req_id] = Job(kind, now + self.settings.job_timeout, set(waiting), data=data)
        return req_id

    def _reply(self, req_id: int, job: Job, node: str, message: Any) -> None:
        if node not in job.waiting:
            return
        job.waiting.discard(node)
        job.replies[node] = message
        if isinstance(message, TreeReply) and node != self.name:
            self.stats.incr("aae.bytes", len(encode(message)))      # what the frame held
        if isinstance(message, GetManyReply) and node != self.name:
            self.stats.incr("aae.bytes" if job.kind == "aae" else f"{job.kind}.bytes", len(encode(message)))
        if not job.waiting:
            del self.jobs[req_id]
            getattr(self, f"_{job.kind}_{job.data['step']}")(job)

    # --- hinted handoff --------------------------------------------------------------------

    def _start_hints(self, now: float) -> None:
        hints = self.store.hints(limit=self.settings.hint_batch * 4)
        if not hints:
            return
        oldest_kept = self.wall() - self.settings.hint_window
        expired = [h.hint_id for h in hints if h.created < oldest_kept]
        if expired:
            self.send(self.name, DeleteHints(expired))
            self.stats.incr("hints.dropped", len(expired))
        by_target: dict[str, list[Any]] = {}
        for hint in hints:
            if hint.created >= oldest_kept and self.membership.is_up(hint.target):
                by_target.setdefault(hint.target, []).append(hint)
        for target, batch in by_target.items():
            batch = batch[:self.settings.hint_batch]
            req_id = self._job("hints", now, {target}, step="acked", ids=[h.hint_id for h in batch])
            self.send(target, PutMany(req_id, self.name, [(h.key, h.obj) for h in batch]))

    def _hints_acked(self, job: Job) -> None:
        reply = next(iter(job.replies.values()))
        if reply.ok:
            self.send(self.name, DeleteHints(job.data["ids"]))
            self.stats.incr("hints.delivered", len(job.data["ids"]))

    # --- ownership handoff -------------------------------------------------------------------

    def _start_handoff(self, now: float) -> None:
        req_id = self._job("handoff", now, {self.name}, step="partitions")
        self.send(self.name, TreeRequest(req_id, self.name, 0, "partitions"))

    def _handoff_partitions(self, job: Job) -> None:
        """The trees this node holds keys of, by (partition, n): those it is not a primary of go to
        their primaries (n 0: the keys' bucket is not known here yet; they stay until it is)."""
        held: dict[tuple[int, int], int] = job.replies[self.name].data
        self._held = held
        ring = self.membership.ring
        foreign = [(p, n) for p, n in sorted(held) if n and self.name not in ring.walk(p)[:n]]
        self.stats.set("handoff.pending", len(foreign))
        if not foreign:
            if self.membership.states.get(self.name) == LEAVING and not self._left and self.gossiper is not None:
                self._left = True
                log.info("%s handed off everything; leaving", self.name)
                self.gossiper.tell(HandoffComplete())
            return
        for partition, n in foreign:
            owners = list(ring.walk(partition)[:n])
            if all(self.membership.is_up(o) for o in owners):
                req_id = self._job("handoff", self.clock(), {self.name}, step="objects", owners=owners)
                self.send(self.name, TreeRequest(req_id, self.name, partition, "objects",
                                                 (self.settings.handoff_batch,), n))
                return

    def _handoff_objects(self, job: Job) -> None:
        items = job.replies[self.name].data
        if not items:
            return
        owners = job.data["owners"]
        req_id = self._job("handoff", self.clock(), set(owners), step="acked", items=items)
        for owner in owners:
            self.send(owner, PutMany(req_id, self.name, items))

    def _handoff_acked(self, job: Job) -> None:
        if all(reply.ok for reply in job.replies.values()):
            self.send(self.name, Drop(job.data["items"], "handoff"))
            self.stats.incr("handoff.keys", len(job.data["items"]))

    # --- anti-entropy ---------------------------------------------------------------------------

    def _aae_trees(self) -> list[tuple[int, int]]:
        """The trees this node exchanges, by (partition, n): every partition it is a primary of at the
        cluster's n, and those of other n it holds keys of (a peer that holds keys this node lacks
        starts the exchange from its side). A bucket of n 1 has no peer to compare with."""
        ring = self.membership.ring
        default_n = self.membership.defaults.n
        trees = {(p, default_n) for p in range(ring.partitions) if self.name in ring.walk(p)[:default_n]}
        trees.update((p, n) for p, n in self._held if n and self.name in ring.walk(p)[:n])
        return sorted(tree for tree in trees if tree[1] > 1)

    def _start_aae(self, now: float) -> None:
        ring = self.membership.ring
        mine = self._aae_trees()
        if not mine:
            return
        for _ in range(len(mine)):
            self._aae_cursor += 1
            partition, n = mine[self._aae_cursor % len(mine)]
            peers = [p for p in ring.walk(partition)[:n] if p != self.name and self.membership.is_up(p)]
            if peers:
                peer = peers[(self._aae_cursor // len(mine)) % len(peers)]
                self._aae_ask(now, partition, n, peer, "buckets", ())
                return

    def _aae_ask(self, now: float, partition: int, n: int, peer: str, level: str, which: tuple[int, ...]) -> None:
        req_id = self._job("aae", now, {self.name, peer}, step=level, partition=partition, n=n, peer=peer)
        request = TreeRequest(req_id, self.name, partition, level, which, n)
        self.send(self.name, request)
        self.send(peer, request)

    def _tree(self, job: Job) -> tuple[Any, Any]:
        return job.replies[self.name].data, job.replies[job.data["peer"]].data

    def _aae_buckets(self, job: Job) -> None:
        mine, theirs = self._tree(job)
        differ = merkle.diff_buckets(mine, theirs)
        if not differ:
            self._aae_done(0)
            return
        self._aae_ask(self.clock(), job.data["partition"], job.data["n"], job.data["peer"], "segments", tuple(differ))

    def _aae_segments(self, job: Job) -> None:
        mine, theirs = self._tree(job)
        differ = merkle.diff_segments(mine, theirs)
        if not differ:
            self._aae_done(0)
            return
        self._aae_ask(self.clock(), job.data["partition"], job.data["n"], job.data["peer"], "keys", tuple(differ))

    def _aae_keys(self, job: Job) -> None:
        mine, theirs = self._tree(job)
        keys = merkle.diff_keys(mine, theirs)[:self.settings.aae_max_keys]
        if not keys:
            self._aae_done(0)
            return
        peer = job.data["peer"]
        req_id = self._job("aae", self.clock(), {self.name, peer}, step="objects", peer=peer)
        self.send(self.name, GetMany(req_id, self.name, keys))
        self.send(peer, GetMany(req_id, self.name, keys))

    def _aae_objects(self, job: Job) -> None:
        mine = job.replies[self.name].objects
        peer = job.data["peer"]
        theirs = job.replies[peer].objects
        to_me, to_peer = [], []
        for key in mine.keys() | theirs.keys():
            a, b = mine.get(key), theirs.get(key)
            merged = objects.merge(a, b)
            if merged is None:
                continue
            if a is None or not objects.equal(a, merged):
                to_me.append((key, merged))
            if b is None or not objects.equal(b, merged):
                to_peer.append((key, merged))
        if to_me:
            self.send(self.name, PutMany(0, self.name, to_me, want_ack=False))
        if to_peer:
            self.send(peer, PutMany(0, self.name, to_peer, want_ack=False))
        self._aae_done(len({k for k, _ in to_me} | {k for k, _ in to_peer}))

    def _aae_done(self, repaired: int) -> None:
        self.stats.incr("aae.rounds")
        if repaired:
            self.stats.incr("aae.keys_repaired", repaired)
            log.info("repairer %s: anti-entropy repaired %d keys", self.name, repaired)

    # --- tombstone reaping ------------------------------------------------------------------------

    def _start_reap(self, now: float) -> None:
        req_id = self._job("reap", now, {self.name}, step="candidates")
        self.send(self.name, ReapCandidates(req_id, self.settings.tombstone_grace))

    def _reap_candidates(self, job: Job) -> None:
        membership = self.membership
        candidates = [(k, o) for k, o in job.replies[self.name].items if membership.n_for(k)]
        if not candidates:
            return
        owners = membership.primaries(candidates[0][0], membership.n_for(candidates[0][0]) or 1)
        batch = [(k, o) for k, o in candidates if membership.primaries(k, membership.n_for(k) or 1) == owners]
        if not all(self.membership.is_up(o) for o in owners):
            return
        req_id = self._job("reap", self.clock(), set(owners), step="confirmed", items=batch, owners=owners)
        for owner in owners:
            self.send(owner, GetMany(req_id, self.name, [k for k, _ in batch]))

    def _reap_confirmed(self, job: Job) -> None:
        everywhere = [(key, obj) for key, obj in job.data["items"]
                      if all((held := reply.objects.get(key)) is not None and objects.equal(held, obj)
                             for reply in job.replies.values())]
        if not everywhere:
            return
        for owner in job.data["owners"]:
            self.send(owner, Drop(everywhere, "reaped"))
        self.stats.incr("tombstones.reaped", len(everywhere))
