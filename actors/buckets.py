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

from .errors import ConnectionError_, InvalidRequest, NotPresent, QuorumFailed, RequestTimeout, SessionViolation
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

    def remove(self, key: str, element: Any, *, context: Any = None, r: int | str | None = None,
               **options: Any) -> tuple:
        """set: remove an element; map: remove a field (a name, or a ``(name, type)`` pair).

        It removes what the client observed: without ``context`` it reads the key first (at ``r``)
        and raises ``NotPresent`` if the element (field) is not there; the remove then carries that
        read's context, so it takes exactly what the read saw, even where it is built on a replica
        that is behind. An add the read did not see survives (add wins)."""
        return self._remove(key, ("remove", element), [element], context, r, options)

    def add_all(self, key: str, elements: Any, **options: Any) -> tuple:
        return self._op(key, ("add_all", tuple(elements)), **options)

    def remove_all(self, key: str, elements: Any, *, context: Any = None, r: int | str | None = None,
                   **options: Any) -> tuple:
        """set: remove several elements, as ``remove`` does (``NotPresent`` if any is not there)."""
        elements = tuple(elements)
        return self._remove(key, ("remove_all", elements), list(elements), context, r, options)

    def assign(self, key: str, value: Any, **options: Any) -> tuple:
        return self._op(key, ("assign", value), **options)

    def enable(self, key: str, **options: Any) -> tuple:
        return self._op(key, ("enable",), **options)

    def disable(self, key: str, *, context: Any = None, r: int | str | None = None, **options: Any) -> tuple:
        """flag: disable what the client observed enabled (an enable it did not see wins)."""
        return self._remove(key, ("disable",), [], context, r, options)

    def update(self, key: str, field: str, field_type: str, op: tuple, *, context: Any = None,
               r: int | str | None = None, **options: Any) -> tuple:
        """map: apply ``op`` to the field ``field`` of type ``field_type`` (counter, set, register, flag).

        A remove inside a set field, or a flag field's disable, reads first like ``remove``."""
        op = ("update", field, field_type, tuple(op))
        if field_type == "set" and op[3][:1] in (("remove",), ("remove_all",)) and len(op[3]) == 2:
            elements = [op[3][1]] if op[3][0] == "remove" else list(op[3][1])
            return self._remove(key, op, [((field, "set"), e) for e in elements], context, r, options)
        if field_type == "flag" and op[3] == ("disable",):
            return self._remove(key, op, [], context, r, options)
        return self._op(key, op, **options)

    def _remove(self, key: str, op: tuple, targets: list[Any], context: Any, r: int | str | None,
                options: dict[str, Any]) -> tuple:
        """A remove based on a read: the caller's ``context``, else a read of the key now."""
        self._check_op(op)
        if context is None:
            result = self.read(key, r=r, timeout=options.get("timeout"))
            value = result.value if isinstance(result, Value) else None
            missing = [t for t in targets if not _holds(self.type, value, t)]
            if missing:
                raise NotPresent(f"{', '.join(_describe(t) for t in missing)} not in {self.name}/{key} "
                                 "(as the read before the remove saw it): nothing removed")
            context = result.context
        return self._op(key, op, context=context, **options)

    def _op(self, key: str, op: tuple, **options: Any) -> tuple:
        self._check_op(op)
        context = self.client.update(self.name, key, op, **options)
        if self.session is not None:
            self.session.saw(self.name, key, context)
        return context

    def _check_op(self, op: tuple) -> None:
        if op[0] not in _OPERATIONS.get(self.type, ()):
            raise InvalidRequest(f"a {self.type} bucket has no {op[0]!r} operation")

    def _need(self, *types: str) -> None:
        if self.type not in types:
            raise InvalidRequest(f"bucket {self.name!r} is a {self.type} bucket: use its operations, not put/delete")


def _holds(bucket_type: str, value: Any, target: Any) -> bool:
    """Whether a read's value holds a remove's target: a set element; a map field (a name, or a
    ``(name, type)`` pair) or ``((name, "set"), element)`` inside a set field."""
    if not value:
        return False
    if bucket_type == "set":
        return target in value
    if isinstance(target, str):
        return any(name == target for name, _ in value)
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], tuple):
        return target[1] in value.get(target[0], ())
    return tuple(target) in value if isinstance(target, (tuple, list)) else False


def _describe(target: Any) -> str:
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], tuple):
        return f"{target[1]!r} (in field {target[0][0]!r})"
    return repr(target)


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
