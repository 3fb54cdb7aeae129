"""leaderless: a Dynamo-style, leaderless, replicated key-value store.

The public API: ``LocalCluster`` starts node processes; ``connect`` (or
``cluster.client()``) gives a ``Client``; errors form one tree under ``LeaderlessError``.
"""

from .buckets import Bucket, Session
from .client import Client, Future, connect
from .cluster import LocalCluster
from .errors import (AuthenticationFailed, ClusterUnavailable, ConnectionError_, InvalidRequest, LeaderlessError,
                     NotPresent, ProtocolError, QuorumFailed, QuorumValueError, RequestTimeout, SessionViolation,
                     StorageFull, UnknownBucket, VersionMismatch)
from .messages import BucketProps, GetResult, LocalObject, Value

__all__ = [
    "AuthenticationFailed",
    "Bucket",
    "BucketProps",
    "Client",
    "ClusterUnavailable",
    "ConnectionError_",
    "Future",
    "GetResult",
    "InvalidRequest",
    "LeaderlessError",
    "LocalCluster",
    "LocalObject",
    "NotPresent",
    "ProtocolError",
    "QuorumFailed",
    "QuorumValueError",
    "RequestTimeout",
    "Session",
    "SessionViolation",
    "StorageFull",
    "UnknownBucket",
    "Value",
    "VersionMismatch",
    "connect",
]
