"""Every message leaderless sends, as frozen typed values, in one place.

A message that crosses a socket is pickled; the receiver admits only the classes
listed in ``WIRE_TYPES`` (plus builtins), so nothing else can be unpickled. Every
request carries a ``req_id`` unique at its sender; every replica reply names the
replica that sent it (``node``). Fields named ``reply_to`` are never trusted from the
wire: the receiving transport overwrites them with the connection the request came in on.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from storage.crdts import Crdt
from storage.objects import Obj
from storage.versions import DVVSet

from . import errors

Context = tuple  # storage.versions.Context: a sorted tuple of (actor, counter)


# --- client -> node -----------------------------------------------------------------

class ClientPut(NamedTuple):
    """Write ``value`` (``None`` deletes: a tombstone) to ``key`` of ``bucket`` after ``context``.

    ``condition``: ``("if_context", ctx)`` or ``("if_absent",)``, checked on the coordinating replica.
    """
    req_id: int
    key: str
    value: bytes | None
    context: Context = ()
    w: int | str | None = None
    timeout: float | None = None
    bucket: str = ""
    condition: tuple | None = None
    reply_to: Any = None


class ClientGet(NamedTuple):
    """Read ``key`` of ``bucket`` from ``r`` replicas, merged.

    ``min_context`` (sessions): answer only with an object whose context covers it.
    """
    req_id: int
    key: str
    r: int | str | None = None
    timeout: float | None = None
    bucket: str = ""
    min_context: Context | None = None
    reply_to: Any = None


class ClientUpdate(NamedTuple):
    """Apply a CRDT operation (``("increment", 5)``, ``("add", "milk")``...) to ``key`` of a typed bucket.

    ``op_id`` makes retries idempotent: an operation id already applied is not applied again.
    """
    req_id: int
    bucket: str
    key: str
    op: tuple
    op_id: str
    w: int | str | None = None
    timeout: float | None = None
    reply_to: Any = None


class BucketCreate(NamedTuple):
    """Create bucket ``name`` with its type and its n/r/w (None: the cluster's defaults)."""
    req_id: int
    name: str
    type: str = "siblings"
    n: int | None = None
    r: int | str | None = None
    w: int | str | None = None
    reply_to: Any = None


class BucketInfo(NamedTuple):
    """Ask for bucket ``name``'s properties."""
    req_id: int
    name: str
    reply_to: Any = None


class StatusRequest(NamedTuple):
    """Ask a node for its counters and membership view."""
    req_id: int
    reply_to: Any = None


class ConfigRequest(NamedTuple):
    """Ask a node for the cluster's configuration and every member's address (to join from elsewhere)."""
    req_id: int
    reply_to: Any = None


class InspectRequest(NamedTuple):
    """Ask a node for its own stored object for ``key`` (no quorum)."""
    req_id: int
    key: str
    reply_to: Any = None


class SetFaults(NamedTuple):
    """Fault injection on the receiving node (replaces every earlier fault of that node).

    ``blocked``: peers whose messages are dropped both ways (a partition);
    ``delay_ms``: every peer message to or from this node is delayed that long;
    ``loss`` / ``duplicate``: probability that a message this node sends to a peer is
    dropped / sent twice; ``reorder_ms``: each such message is held a random 0..reorder_ms
    (so messages overtake each other); ``clock_skew``: seconds added to this node's wall clock;
    ``drop_replies``: the next that many answers to clients are lost after the request was
    carried out (a lost acknowledgement).
    """
    req_id: int
    blocked: tuple[str, ...] = ()
    delay_ms: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder_ms: float = 0.0
    clock_skew: float = 0.0
    drop_replies: int = 0
    reply_to: Any = None


class Reply(NamedTuple):
    """A node's answer to a client request: ``result`` or, when not ``ok``, an exception."""
    req_id: int
    ok: bool
    result: Any


class GetResult(NamedTuple):
    """What a read returns: every live sibling value and one causal context covering them."""
    values: list[bytes]
    context: Context


class Value(NamedTuple):
    """What a read of a CRDT bucket returns: the merged value and its context."""
    value: Any
    context: Context


class BucketProps(NamedTuple):
    """A bucket's properties, fixed at creation."""
    name: str
    type: str
    n: int
    r: int | str
    w: int | str


class LocalObject(NamedTuple):
    """One node's own copy of a key, as ``cluster.inspect`` returns it."""
    values: list[bytes]          # live sibling values
    tombstone: bool              # True when every sibling is a delete
    version: dict[str, int]      # the object's version vector
    siblings: int                # all sibling values, tombstones included


# --- node <-> node --------------------------------------------------------------------

class Hello(NamedTuple):
    """First frame after authentication: who is connecting (``kind`` is "peer" or "client")."""
    kind: str
    name: str = ""


class CoordinatePut(NamedTuple):
    """To the replica that coordinates the version.

    ``kind`` "siblings": fold ``value`` after ``context`` into a new dot; "lww": assign
    ``value`` with a hybrid-clock timestamp later than the stored one; "crdt:<type>":
    apply ``op`` (once per ``op_id``). ``condition`` is checked first (``Refused`` if it fails).
    """
    req_id: int
    coordinator: str
    key: str
    value: bytes | None
    context: Context
    hint_for: str | None = None
    kind: str = "siblings"
    op: tuple | None = None
    op_id: str | None = None
    condition: tuple | None = None
    build_by: float | None = None       # wall clock (time.time) after which the replica must not build it


class Refused(NamedTuple):
    """The coordinating replica refused to build the new version (a failed condition, a bad operation)."""
    req_id: int
    node: str
    error: Any


class Built(NamedTuple):
    """The coordinating replica built the new object (sent before its own commit finishes)."""
    req_id: int
    node: str
    obj: Obj


class ReplicaPut(NamedTuple):
    """Merge (sync) ``obj`` into the replica's copy of ``key``; ack after it is durable."""
    req_id: int
    coordinator: str
    key: str
    obj: Obj
    hint_for: str | None = None
    want_ack: bool = True


class Ack(NamedTuple):
    """A replica's answer to a write: durable (``ok``) or refused with ``error``."""
    req_id: int
    node: str
    ok: bool
    error: Any = None


class Acks(NamedTuple):
    """A replica's durable acknowledgements to one coordinator, one per request, from one commit
    (what would otherwise be many ``Ack(req_id, node, True)``)."""
    req_ids: list[int]
    node: str


class ReplicaGet(NamedTuple):
    """Ask a replica for its stored object."""
    req_id: int
    coordinator: str
    key: str


class ReplicaGetReply(NamedTuple):
    """A replica's answer to a read: its stored record as LMDB holds it (bytes, decoded by the
    coordinator), the object of a write not yet committed, or ``None`` when absent."""
    req_id: int
    node: str
    obj: Obj | bytes | None


class Gossip(NamedTuple):
    """Push-pull gossip: the sender's view of every member, and its ring.

    ``endpoints`` maps a node to ``(incarnation, heartbeat, status, host, port)``;
    ``status`` is "normal", "leaving" or "left". A receiver keeps, per node, the entry
    with the highest ``(incarnation, heartbeat)``, adopts a ring with a higher version,
    and answers with its own view when ``reply`` is set.
    """
    src: str
    endpoints: dict[str, tuple[int, int, str, str, int]]
    ring_version: int
    ring: dict[str, Any]
    reply: bool = True
    buckets: dict[str, tuple] = {}
    hlc: tuple | None = None


class RingChange(NamedTuple):
    """Admin: ``join`` adds ``node`` (listening on host:port) to the ring; ``leave`` starts its decommission."""
    req_id: int
    action: str
    node: str
    host: str = ""
    port: int = 0
    reply_to: Any = None


class PutMany(NamedTuple):
    """Repair traffic (hints, handoff, anti-entropy): merge every ``(key, obj)``; one ``BatchAck`` after commit."""
    req_id: int
    coordinator: str
    items: list[tuple[str, Obj]]
    want_ack: bool = True


class BatchAck(NamedTuple):
    """A replica's answer to ``PutMany``."""
    req_id: int
    node: str
    ok: bool
    error: Any = None


class GetMany(NamedTuple):
    """Repair traffic: the replica's objects for ``keys``."""
    req_id: int
    coordinator: str
    keys: list[str]


class GetManyReply(NamedTuple):
    req_id: int
    node: str
    objects: dict[str, Obj | None]


class TreeRequest(NamedTuple):
    """Anti-entropy: one level of the replica's hash tree for ``partition``.

    ``level`` is "buckets" (``which`` ignored), "segments" (``which``: bucket indexes)
    or "keys" (``which``: segment indexes).
    """
    req_id: int
    coordinator: str
    partition: int
    level: str
    which: tuple[int, ...] = ()


class TreeReply(NamedTuple):
    req_id: int
    node: str
    partition: int
    level: str
    data: Any


class Drop(NamedTuple):
    """Remove each key whose stored object still equals the given one (after handoff, or a tombstone reap)."""
    items: list[tuple[str, Obj]]
    reason: str


class StoreHint(NamedTuple):
    """Coordinator -> its own replica: keep hints for replicas that missed a write ``(target, key, obj)``."""
    items: list[tuple[str, str, Any]]


class DeleteHints(NamedTuple):
    """Remove delivered (or expired) hints."""
    hint_ids: list[bytes]


class ReapCandidates(NamedTuple):
    """Ask the replica for tombstones older than ``grace`` seconds in partitions it leads."""
    req_id: int
    grace: float


class ReapCandidatesReply(NamedTuple):
    req_id: int
    items: list[tuple[str, Obj]]


class HandoffComplete(NamedTuple):
    """Repairer -> gossiper: a leaving node holds nothing it does not own; it has left."""


# --- inside one node ------------------------------------------------------------------

class Batch(NamedTuple):
    """Several messages for one actor handed over as one (a receiver's batch)."""
    messages: list[Any]


class Tick(NamedTuple):
    """Time passes: check deadlines and timers."""
    now: float


class Unreachable(NamedTuple):
    """The transport could not hand request ``req_id`` to ``node`` (refused or reset): no answer will come."""
    req_id: int
    node: str


class Flush(NamedTuple):
    """Replica: commit everything pending in one transaction."""


_INTERNAL = (Batch, Tick, Flush)
WIRE_TYPES: dict[tuple[str, str], type] = {
    (cls.__module__, cls.__name__): cls
    for cls in [
        *(obj for obj in list(globals().values())
          if isinstance(obj, type) and issubclass(obj, tuple) and obj.__module__ == __name__ and obj not in _INTERNAL),
        DVVSet, Crdt,
        errors.InvalidRequest, errors.QuorumValueError, errors.QuorumFailed,
        errors.RequestTimeout, errors.StorageFull, errors.LeaderlessError, errors.VersionMismatch,
        errors.SessionViolation, errors.UnknownBucket,
    ]
}
"""Every class a frame may name: this module's messages (not the in-process ones), DVVSet, errors."""
