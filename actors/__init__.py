"""leaderless: a Dynamo-style, leaderless, replicated key-value store.

The public API: ``LocalCluster`` starts node processes; ``connect`` (or
``cluster.client()``) gives a ``Client``; errors form one tree under ``LeaderlessError``.
"""

from .client import Client, Future, connect
from .cluster import LocalCluster
from .errors import (AuthenticationFailed, ClusterUnavailable, ConnectionError_, InvalidRequest, LeaderlessError,
                     ProtocolError, QuorumFailed, QuorumValueError, RequestTimeout, StorageFull)
from .messages import GetResult, LocalObject

__all__ = [
    "AuthenticationFailed",
    "Client",
    "ClusterUnavailable",
    "ConnectionError_",
    "Future",
    "GetResult",
    "InvalidRequest",
    "LeaderlessError",
    "LocalCluster",
    "LocalObject",
    "ProtocolError",
    "QuorumFailed",
    "QuorumValueError",
    "RequestTimeout",
    "StorageFull",
    "connect",
]
