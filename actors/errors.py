"""The exceptions a leaderless user can see, as one tree.

    LeaderlessError
    ├── InvalidRequest            bad key, value or option (sent back by a node, or caught client-side)
    │   ├── QuorumValueError      an r/w that cannot be met against n (``w > n``, ``r < 1``, unknown name)
    │   ├── UnknownBucket         no bucket of that name was created
    │   └── NotPresent            a remove named an element (or map field) that the read it is based on did not hold
    ├── VersionMismatch           a conditional write found the stored object moved on
    ├── SessionViolation          a session read could not see what the session already wrote or read
    ├── QuorumFailed              fewer than the needed replicas answered before the deadline
    ├── RequestTimeout            no answer at all from the node in time
    ├── StorageFull               a replica refused a write because its disk (LMDB map) is full
    └── ConnectionError_          anything that went wrong talking to a node
        ├── AuthenticationFailed  the node refused our cluster secret (or we refused the node's)
        ├── ProtocolError         garbage, an oversized frame or an unknown message type
        └── ClusterUnavailable    no node of the cluster could be reached, or no cluster in a data dir

Low-level errors (``OSError``, ``pickle.UnpicklingError``...) are translated at the boundary
with ``raise ... from exc``. Every exception pickles, so a node can send it to a client.
"""

from __future__ import annotations


class LeaderlessError(Exception):
    """Base of every error raised by leaderless."""


class InvalidRequest(LeaderlessError):
    """The request itself is wrong: fix it, retrying will not help."""


class QuorumValueError(InvalidRequest):
    """An ``r`` or ``w`` that cannot be resolved against ``n``."""


class UnknownBucket(InvalidRequest):
    """No bucket of that name exists (create it first)."""


class NotPresent(InvalidRequest):
    """A remove named an element (or a map field) that is not there: not in the read the client
    made first, or, for a remove sent without a context, not on the replica that built it. Nothing
    was written; a remove is never acknowledged as a no-op."""


class VersionMismatch(LeaderlessError):
    """A conditional write (``if_context``/``if_absent``) found the stored object moved past
    the expected version on the replica that checked it (not linearizable: see README), or,
    with ``serial=True``, in the linearizable current value. ``values`` and ``context`` are
    that current value when known (a serial write's), so a compare-and-set can retry from them."""

    def __init__(self, message: str = "", values: list | tuple = (), context: list | tuple = ()) -> None:
        self.values = list(values)
        self.context = tuple(tuple(pair) for pair in context)
        super().__init__(message, self.values, [list(pair) for pair in self.context])

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SessionViolation(LeaderlessError):
    """A session read found no replica holding at least what the session wrote or read,
    within the timeout."""


class QuorumFailed(LeaderlessError):
    """Fewer than ``needed`` replicas acknowledged before the deadline.

    ``got`` is how many did, ``replicas`` names them. A failed write may still have
    reached some replicas: its outcome is indeterminate, not "not written".
    """

    def __init__(self, needed: int, got: int, replicas: list[str] | tuple[str, ...] = (), op: str = "",
                 down: list[str] | tuple[str, ...] = (), reasons: list[str] | tuple[str, ...] = ()) -> None:
        self.needed = needed
        self.got = got
        self.replicas = list(replicas)
        self.op = op
        self.down = list(down)        # preference-list nodes the coordinator saw down (not even asked)
        self.reasons = list(reasons)  # what the replicas that refused said (a failing disk...)
        super().__init__(needed, got, self.replicas, op, self.down, self.reasons)

    def __str__(self) -> str:
        what = f"{self.op}: " if self.op else ""
        down = f"; down as the coordinator sees it: {', '.join(self.down)}" if self.down else ""
        refused = f"; refused: {'; '.join(self.reasons)}" if self.reasons else ""
        return (f"{what}quorum failed: needed {self.needed}, got {self.got}"
                f" (answered: {', '.join(self.replicas) or 'none'}{down}{refused})")


class RequestTimeout(LeaderlessError):
    """The node did not answer in time (the request may or may not have been applied)."""


class StorageFull(LeaderlessError):
    """A replica's store is full; nothing of the refused write was stored there."""


class ConnectionError_(LeaderlessError):
    """Talking to a node failed."""


class AuthenticationFailed(ConnectionError_):
    """The cluster secret was refused (by the node, or the node failed to prove it)."""


class ProtocolError(ConnectionError_):
    """The peer sent bytes that are not a valid leaderless frame."""


class ClusterUnavailable(ConnectionError_):
    """No node could be reached, or the data dir holds no cluster."""


__all__ = [
    "AuthenticationFailed",
    "ClusterUnavailable",
    "ConnectionError_",
    "InvalidRequest",
    "LeaderlessError",
    "NotPresent",
    "ProtocolError",
    "QuorumFailed",
    "QuorumValueError",
    "RequestTimeout",
    "SessionViolation",
    "StorageFull",
    "UnknownBucket",
    "VersionMismatch",
]
