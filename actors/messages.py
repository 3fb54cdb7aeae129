"""Every message leaderless sends, declared once: its fields, their types and its wire tag.

A message is a frozen ``msgspec.Struct``. One that crosses a socket has a ``tag`` (its
number in the protocol, never reused) and travels as a MessagePack array ``[tag, field,
...]`` (``actors.wire``): the receiver decodes a frame into these classes and their
declared field types only, so no input can name a class or run code. Fields whose
in-process value is not plain data say how they travel, by an ``Annotated`` marker:
`RECORD` (a stored object, sent as its record bytes, ``storage.codec``), `RECORD_BYTES`
(the same, handed over still encoded: the reader decodes it), `RECORDS` (``(key,
object)`` pairs or a ``{key: object}`` dict of them), `ERROR` (an exception of
``actors.errors``) and `RESULT` (a reply's result). Messages without a tag never leave
their node.

Every request carries a ``req_id`` unique at its sender; every replica reply names the
replica that sent it (``node``). Fields named ``reply_to`` are never trusted from the
wire: the receiving node overwrites them with the connection the request came in on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, NamedTuple, Union

import msgspec


class WireField:
    """How a field whose in-process value is not plain data travels (see the module docstring)."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"WireField({self.kind!r})"


RECORD = WireField("record")
RECORD_BYTES = WireField("record bytes")
RECORDS = WireField("records")
ERROR = WireField("error")
RESULT = WireField("result")

Context = tuple[tuple[str, int], ...]   # storage.versions.Context: sorted (actor, counter) pairs
Quorum = Union[int, str, None]         # an r or w: a number, "one", "quorum", "all", or None (the bucket's)

# Fields that hold one thing in-process and another on the wire: the code (and a type checker)
# sees the first; msgspec, which reads these annotations at run time to decode a frame, the second.
if TYPE_CHECKING:
    Stored = Any                        # a DVVSet or Crdt (storage.objects.Obj)
    StoredOrBytes = Any                 # the same, or its record as the store holds it, or None
    StoredItems = list[tuple[str, Any]]
    StoredByKey = dict[str, Any]
    Error = Any                         # an exception of actors.errors, or None
    Result = Any
    ReplyTo = Any                       # where the node sends the answer: the connection the request came on
else:
    Stored = Annotated[Union[bytes, None], RECORD]
    StoredOrBytes = Annotated[Union[bytes, None], RECORD_BYTES]
    StoredItems = Annotated[list[tuple[str, bytes]], RECORDS]
    StoredByKey = Annotated[dict[str, Union[bytes, None]], RECORDS]
    Error = Annotated[Union[tuple[str, tuple[Union[str, int, list[Any]], ...]], None], ERROR]
    Result = Annotated[Any, RESULT]
    ReplyTo = None                      # never sent: a frame holding anything else there is refused


class Message(msgspec.Struct, frozen=True, array_like=True, gc=False, tag_field="wire_tag"):
    """Base of every message: immutable, encoded as an array (no field names on the wire). Messages
    hold no reference cycles, so the garbage collector need not track them (``gc=False``)."""


# --- client -> node -----------------------------------------------------------------

class Hello(Message, tag=1):
    """First frame after authentication: who is connecting (``kind`` is "peer" or "client")."""
    kind: str
    name: str = ""


class ClientPut(Message, tag=2):
    """Write ``value`` (``None`` deletes: a tombstone) to ``key`` of ``bucket`` after ``context``.

    ``condition``: ``("if_context", ctx)`` or ``("if_absent",)``, checked on the coordinating replica;
    ``serial``: by Paxos among the key's primaries, linearizable (``actors.paxos``).
    """
    req_id: int
    key: str
    value: bytes | None
    context: Context = ()
    w: Quorum = None
    timeout: float | None = None
    bucket: str = ""
    condition: tuple[Union[str, Context], ...] | None = None
    serial: bool = False
    reply_to: ReplyTo = None


class ClientGet(Message, tag=3):
    """Read ``key`` of ``bucket`` from ``r`` replicas, merged.

    ``min_context`` (sessions): answer only with an object whose context covers it; ``serial``: a
    linearizable read (a Paxos round among the key's primaries).
    """
    req_id: int
    key: str
    r: Quorum = None
    timeout: float | None = None
    bucket: str = ""
    min_context: Context | None = None
    serial: bool = False
    reply_to: ReplyTo = None


class ClientUpdate(Message, tag=4):
    """Apply a CRDT operation (``("increment", 5)``, ``("add", "milk")``...) to ``key`` of a typed bucket.

    ``op_id`` makes retries idempotent: an operation id already applied is not applied again.
    ``context`` (removes): the context of the read the client based the remove on; the remove takes
    exactly what that read observed. None: what the building replica holds (``NotPresent`` if not there).
    """
    req_id: int
    bucket: str
    key: str
    op: tuple[Any, ...]
    op_id: str
    w: Quorum = None
    timeout: float | None = None
    context: Context | None = None
    reply_to: ReplyTo = None


class BucketCreate(Message, tag=5):
    """Create bucket ``name`` with its type and its n/r/w (None: the cluster's defaults)."""
    req_id: int
    name: str
    type: str = "siblings"
    n: int | None = None
    r: Quorum = None
    w: Quorum = None
    reply_to: ReplyTo = None


class BucketInfo(Message, tag=6):
    """Ask for bucket ``name``'s properties."""
    req_id: int
    name: str
    reply_to: ReplyTo = None


class StatusRequest(Message, tag=7):
    """Ask a node for its counters and membership view."""
    req_id: int
    reply_to: ReplyTo = None


class ConfigRequest(Message, tag=8):
    """Ask a node for the cluster's configuration and every member's address (to join from elsewhere)."""
    req_id: int
    reply_to: ReplyTo = None


class InspectRequest(Message, tag=9):
    """Ask a node for its own stored object for ``key`` (no quorum)."""
    req_id: int
    key: str
    reply_to: ReplyTo = None


class SetFaults(Message, tag=10):
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
    reply_to: ReplyTo = None


class RingChange(Message, tag=11):
    """Admin: ``join`` adds ``node`` (listening on host:port) to the ring; ``leave`` starts its decommission
    (refused when it would leave fewer members than the largest n in use, unless ``force``)."""
    req_id: int
    action: str
    node: str
    host: str = ""
    port: int = 0
    force: bool = False
    reply_to: ReplyTo = None


class Reply(Message, tag=12):
    """A node's answer to a client request: ``result`` or, when not ``ok``, an exception."""
    req_id: int
    ok: bool
    result: Result


# --- what a read returns (user-facing values, not messages) ---------------------------

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
    values: list[Any]            # live sibling values (a CRDT's value)
    tombstone: bool              # True when every sibling is a delete
    version: dict[str, int]      # the object's version vector
    siblings: int                # all sibling values, tombstones included


# --- node <-> node --------------------------------------------------------------------

class CoordinatePut(Message, tag=20):
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
    op: tuple[Any, ...] | None = None
    op_id: str | None = None
    condition: tuple[Union[str, Context], ...] | None = None
    build_by: float | None = None       # wall clock (time.time) after which the replica must not build it
    observed: Context | None = None     # a CRDT remove's observed context (``ClientUpdate.context``)


class Refused(Message, tag=21):
    """The coordinating replica refused to build the new version (a failed condition, a bad operation)."""
    req_id: int
    node: str
    error: Error


class Built(Message, tag=22):
    """The coordinating replica built the new object (sent before its own commit finishes)."""
    req_id: int
    node: str
    obj: Stored


class ReplicaPut(Message, tag=23):
    """Merge (sync) ``obj`` into the replica's copy of ``key``; ack after it is durable."""
    req_id: int
    coordinator: str
    key: str
    obj: Stored
    hint_for: str | None = None
    want_ack: bool = True


class Ack(Message, tag=24):
    """A replica's answer to a write: durable (``ok``) or refused with ``error``."""
    req_id: int
    node: str
    ok: bool
    error: Error = None


class Acks(Message, tag=25):
    """A replica's durable acknowledgements to one coordinator, one per request, from one commit
    (what would otherwise be many ``Ack(req_id, node, True)``)."""
    req_ids: list[int]
    node: str


class ReplicaGet(Message, tag=26):
    """Ask a replica for its stored object."""
    req_id: int
    coordinator: str
    key: str


class ReplicaGetReply(Message, tag=27):
    """A replica's answer to a read: its stored record as LMDB holds it (bytes, decoded by the
    coordinator), the object of a write not yet committed, or ``None`` when absent."""
    req_id: int
    node: str
    obj: StoredOrBytes


class Gossip(Message, tag=28):
    """Push-pull gossip: the sender's view of every member, and its ring.

    ``endpoints`` maps a node to ``(incarnation, heartbeat, status, host, port)``;
    ``status`` is "normal", "leaving" or "left". A receiver keeps, per node, the entry
    with the highest ``(incarnation, heartbeat)``, adopts a ring with a higher version,
    and answers with its own view when ``reply`` is set.
    """
    src: str
    endpoints: dict[str, tuple[int, int, str, str, int]]
    ring_version: int
    ring: dict[str, Union[int, list[str]]]
    reply: bool = True
    buckets: dict[str, tuple[str, int, int | str, int | str]] = msgspec.field(default_factory=dict)
    hlc: tuple[int, int, str] | None = None


class PutMany(Message, tag=29):
    """Repair traffic (hints, handoff, anti-entropy): merge every ``(key, obj)``; one ``BatchAck`` after commit."""
    req_id: int
    coordinator: str
    items: StoredItems
    want_ack: bool = True


class BatchAck(Message, tag=30):
    """A replica's answer to ``PutMany``."""
    req_id: int
    node: str
    ok: bool
    error: Error = None


class GetMany(Message, tag=31):
    """Repair traffic: the replica's objects for ``keys``."""
    req_id: int
    coordinator: str
    keys: list[str]


class GetManyReply(Message, tag=32):
    req_id: int
    node: str
    objects: StoredByKey


class TreeRequest(Message, tag=33):
    """Anti-entropy: one level of the replica's hash tree of ``partition`` for the keys whose bucket has ``n``.

    ``level`` is "buckets" (``which`` ignored), "segments" (``which``: bucket indexes)
    or "keys" (``which``: segment indexes); "partitions" and "objects" serve the node's own
    repairer (handoff) and never travel.
    """
    req_id: int
    coordinator: str
    partition: int
    level: str
    which: tuple[int, ...] = ()
    n: int = 0


class TreeReply(Message, tag=34):
    """One level of a tree: a tuple of bucket hashes, ``{segment: hash}`` or ``{key: hash}``."""
    req_id: int
    node: str
    partition: int
    level: str
    data: Union[tuple[int, ...], dict[Union[int, str], int]]


class Drop(Message, tag=35):
    """Remove each key whose stored object still equals the given one (after handoff, or a tombstone reap)."""
    items: StoredItems
    reason: str


# --- serial requests: Paxos among a key's primaries (actors.paxos) ------------------------

Ballot = tuple[int, str]               # (a hybrid-clock reading, packed; the proposing node)


class PaxosPrepare(Message, tag=50):
    """Promise to accept no ballot lower than ``ballot`` for ``key``."""
    req_id: int
    coordinator: str
    key: str
    ballot: Ballot


class PaxosPromise(Message, tag=51):
    """An acceptor's answer to a prepare of ``ballot``: promised (``ok``, durably) or refused because it
    promised ``promised``; the proposal it last accepted (``accepted``, ``accepted_obj``), the ballot it
    last committed, and its current object."""
    req_id: int
    node: str
    ballot: Ballot
    ok: bool
    promised: Ballot
    accepted: Ballot
    accepted_obj: Stored
    committed: Ballot
    current: Stored


class PaxosPropose(Message, tag=52):
    """Accept ``obj`` for ``key`` under ``ballot`` (unless a higher ballot was promised)."""
    req_id: int
    coordinator: str
    key: str
    ballot: Ballot
    obj: Stored


class PaxosAccepted(Message, tag=53):
    """An acceptor's answer to a proposal: accepted (``ok``, durably) or refused (it promised ``promised``)."""
    req_id: int
    node: str
    ballot: Ballot
    ok: bool
    promised: Ballot


class PaxosCommit(Message, tag=54):
    """``obj``, chosen under ``ballot``, is the key's value: merge it in."""
    req_id: int
    coordinator: str
    key: str
    ballot: Ballot
    obj: Stored


class PaxosCommitted(Message, tag=55):
    """An acceptor applied a commit durably."""
    req_id: int
    node: str
    ballot: Ballot


# --- membership, for clients and joining nodes across hosts --------------------------------

class MembersRequest(Message, tag=40):
    """Ask a node for every member it knows: ``{"members": {name: [host, port, state, incarnation]}, "timeout": s,
    "cluster_id": id, "n": n, "ring_version": v, "ring": ring data}`` (state: up, down, leaving, left), so
    a client follows joins, leaves and moves."""
    req_id: int
    reply_to: ReplyTo = None


# --- inside one node ------------------------------------------------------------------

class StoreHint(Message):
    """Coordinator -> its own replica: keep hints for replicas that missed a write ``(target, key, obj)``."""
    items: list[tuple[str, str, Any]]


class DeleteHints(Message):
    """Remove delivered (or expired) hints."""
    hint_ids: list[bytes]


class ReapCandidates(Message):
    """Ask the replica for tombstones older than ``grace`` seconds in partitions it leads."""
    req_id: int
    grace: float


class ReapCandidatesReply(Message):
    req_id: int
    items: list[tuple[str, Any]]


class HandoffComplete(Message):
    """Repairer -> gossiper: a leaving node holds nothing it does not own; it has left."""


class Batch(Message):
    """Several messages for one actor handed over as one (a receiver's batch)."""
    messages: list[Any]


class Tick(Message):
    """Time passes: check deadlines and timers."""
    now: float


class Unreachable(Message):
    """The transport could not hand request ``req_id`` to ``node`` (refused or reset): no answer will come.
    For a Paxos message, ``ballot`` and ``phase`` ("prepare", "propose", "commit") say which."""
    req_id: int
    node: str
    ballot: tuple[int, str] | None = None
    phase: str = ""


class Flush(Message):
    """Replica: commit everything pending in one transaction."""


WIRE_TYPES: tuple[type[Message], ...] = tuple(
    cls for cls in Message.__subclasses__() if type(cls.__struct_config__.tag) is int)
"""Every message that may cross a socket: those with a number for a tag (the others, tagged by
their class names since their base names a tag field, never leave their node)."""
