"""Buckets and sessions: the typed client API built on ``Client``.

    carts = client.create_bucket("carts", type="set")
    carts.add("priya", "milk"); carts.remove("priya", "milk"); carts.get("priya")   # -> set
    views = client.create_bucket("views", type="counter")
    views.increment("home", 5); views.decrement("home", 2); views.get("home")       # -> 3

    with client.session() as s:          # read-your-writes and monotonic reads
        s.put("profile:7", b"v2")
        s.get("profile:7")               # never older than v2, whichever node answers

Operations on CRDT buckets carry an operation id and are retried (bounded, with
backoff) on timeouts and ``QuorumFailed``: a retried increment counts once. A session
is a token the client carries (the causal context of everything it wrote or read, per
key); nodes keep no state for it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from storage.versions import merge_contexts

from .errors import ConnectionError_, InvalidRequest, QuorumFailed, RequestTimeout, SessionViolation
from .messages import BucketProps, ClientGet, GetResult, Value

if TYPE_CHECKING:
    from .client import Client

_OPERATIONS = {
    "counter": ("increment", "decrement"),
    "set": ("add", "remove", "add_all", "remove_all"),
    "register": ("assign",),
    "flag": ("enable", "disable"),
    "map": ("update", "remove"),
}


class Bucket:
    """One bucket; the methods available depend on its type (``props.type``)."""

    def __init__(self, client: "Client", props: BucketProps, session: "Session | None" = None) -> None:
        self.client = client
        self.props = props
        self.session = session

    @property
    def name(self) -> str:
        return self.props.name

    @property
    def type(self) -> str:
        return self.props.type

    def __repr__(self) -> str:
        return f"<Bucket {self.props.name!r} {self.props.type} n={self.props.n} r={self.props.r} w={self.props.w}>"

    # --- siblings and lww buckets -----------------------------------------------------------

    def put(self, key: str, value: bytes, context: Any = None, **options: Any) -> tuple:
        self._need("siblings", "lww")
        if self.session is not None:
            return self.session.put(key, value, context, bucket=self.name, **options)
        return self.client.put(key, value, context, bucket=self.name, **options)

    def delete(self, key: str, context: Any = None, **options: Any) -> tuple:
        self._need("siblings", "lww")
        if self.session is not None:
            return self.session.delete(key, context, bucket=self.name, **options)
        return self.client.delete(key, context, bucket=self.name, **options)

    # --- reads ----------------------------------------------------------------------------------

    def get(self, key: str, **options: Any) -> Any:
        """siblings/lww: a ``GetResult``; counter: int; set: set; register: value; flag: bool; map: dict."""
        result = self.read(key, **options)
        if isinstance(result, Value):
            value = result.value
            if self.type == "set":
                return set(value)
            if self.type == "map":
                return _fields(value)
            return value
        return result

    def read(self, key: str, **options: Any) -> GetResult | Value:
        """The result with its causal context (``Value(value, context)`` for CRDT buckets)."""
        if self.session is not None:
            return self.session.get(key, bucket=self.name, **options)
        return self.client.get(key, bucket=self.name, **options)

    # --- CRDT operations ----------------------------------------------------------------------

    def increment(self, key: str, amount: int = 1, **options: Any) -> tuple:
        return self._op(key, ("increment", amount), **options)

    def decrement(self, key: str, amount: int = 1, **options: Any) -> tuple:
        return self._op(key, ("decrement", amount), **options)

    def add(self, key: str, element: Any, **options: Any) -> tuple:
        return self._op(key, ("add", element), **options)

    def remove(self, key: str, element: Any, **options: Any) -> tuple:
        """set: remove an element; map: remove a field."""
        return self._op(key, ("remove", element), **options)

    def add_all(self, key: str, elements: Any, **options: Any) -> tuple:
        return self._op(key, ("add_all", tuple(elements)), **options)

    def remove_all(self, key: str, elements: Any, **options: Any) -> tuple:
        return self._op(key, ("remove_all", tuple(elements)), **options)

    def assign(self, key: str, value: Any, **options: Any) -> tuple:
        return self._op(key, ("assign", value), **options)

    def enable(self, key: str, **options: Any) -> tuple:
        return self._op(key, ("enable",), **options)

    def disable(self, key: str, **options: Any) -> tuple:
        return self._op(key, ("disable",), **options)

    def update(self, key: str, field: str, field_type: str, op: tuple, **options: Any) -> tuple:
        """map: apply ``op`` to the field ``field`` of type ``field_type`` (counter, set, register, flag)."""
        return self._op(key, ("update", field, field_type, tuple(op)), **options)

    def _op(self, key: str, op: tuple, **options: Any) -> tuple:
        if op[0] not in _OPERATIONS.get(self.type, ()):
            raise InvalidRequest(f"a {self.type} bucket has no {op[0]!r} operation")
        context = self.client.update(self.name, key, op, **options)
        if self.session is not None:
            self.session.saw(self.name, key, context)
        return context

    def _need(self, *types: str) -> None:
        if self.type not in types:
            raise InvalidRequest(f"bucket {self.name!r} is a {self.type} bucket: use its operations, not put/delete")


def _fields(value: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """A map's value by field name (``"name:type"`` where one name is used with two types); sets as sets."""
    names = [name for name, _ in value]
    out: dict[str, Any] = {}
    for (name, field_type), field_value in sorted(value.items()):
        label = name if names.count(name) == 1 else f"{name}:{field_type}"
        out[label] = set(field_value) if field_type == "set" else field_value
    return out


class Session:
    """Read-your-writes and monotonic reads across coordinators, for one client.

    The session remembers, per key, the causal context of what it wrote or read. A
    session read asks a node for an object at least that new; the node reads more
    replicas or waits for them, and if none has it, the session asks the next node,
    up to ``timeout``; then ``SessionViolation``.
    """

    def __init__(self, client: "Client", timeout: float | None = None, token: Any = None) -> None:
        self.client = client
        self.timeout = timeout or 5.0
        self.tokens: dict[tuple[str, str], tuple] = {}
        for (bucket, key), context in token or ():
            self.saw(bucket, key, context)

    @property
    def token(self) -> tuple:
        """The whole session as builtins: hand it to ``client.session(token=...)`` elsewhere to go on."""
        return tuple(sorted(self.tokens.items()))

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tokens.clear()

    def saw(self, bucket: str, key: str, context: Any) -> None:
        token = self.tokens.get((bucket, key), ())
        self.tokens[(bucket, key)] = merge_contexts(token, tuple(context or ()))

    def bucket(self, name: str) -> Bucket:
        return Bucket(self.client, self.client.bucket(name).props, session=self)

    def put(self, key: str, value: bytes, context: Any = None, *, bucket: str = "", **options: Any) -> tuple:
        context = self.client.put(key, value, context, bucket=bucket, **options)
        self.saw(bucket, key, context)
        return context

    def delete(self, key: str, context: Any = None, *, bucket: str = "", **options: Any) -> tuple:
        context = self.client.delete(key, context, bucket=bucket, **options)
        self.saw(bucket, key, context)
        return context

    def get(self, key: str, *, bucket: str = "", r: int | str | None = None,
            timeout: float | None = None) -> Any:
        token = self.tokens.get((bucket, key))
        deadline = time.monotonic() + (timeout or self.timeout)
        nodes = list(self.client.addresses)
        last: Exception | None = None
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            node = nodes[attempt % len(nodes)]
            attempt += 1
            per_node = min(remaining, max(0.5, (timeout or self.timeout) / len(nodes)))
            try:
                future = self.client._connection(node).request(ClientGet, key, r, per_node, bucket, token)
                result = future.get(per_node + 1.0)
            except (SessionViolation, QuorumFailed, RequestTimeout, ConnectionError_) as exc:
                last = exc
                continue
            self.saw(bucket, key, result.context)
            return result
        raise SessionViolation(f"no node could read {key!r} at least as new as this session has seen within "
                               f"{timeout or self.timeout}s (last: {last})")


__all__ = ["Bucket", "Session"]
