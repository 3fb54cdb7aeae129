"""State-based CRDTs merged on the server: counter, set, register, flag and map.

Clients send operations; the coordinating replica turns one into a new state with
`apply`, and every other replica (and read repair, hints, anti-entropy) only ever
`merge`s states. A `Crdt` is a typed state made of builtins, canonical (sorted, no
empty entries), so two replicas holding the same updates hold ``==`` states.

Dots and contexts
-----------------
Every applied operation gets a *dot* ``(actor, n)``: the ``n``-th operation the
replica ``actor`` coordinated on this object. The counter, set, flag and map keep
a version vector of every dot they have seen (their *causal context*, `context`)
and tag live data with the dots that made it. Merging keeps a dot if both sides
hold it, or if one side holds it and the other side has not seen it; a dot that
one side has seen but no longer holds was removed there and stays removed. So
removals need no tombstones, and every operation, a removal included, moves the
context forward, which is what sessions compare.

Types, their states and their operations
----------------------------------------
``counter`` (PN-counter): ``((actor, n, increments, decrements), ...)``, one entry
per actor, ``n`` that actor's operation count (its dot). ``("increment", k)``,
``("decrement", k)``, ``k`` an int >= 0. Value: an int.

``set`` (add-wins observed-remove set without tombstones, after Riak's ORSWOT):
``(vector, ((element, dots), ...))``. ``("add", e)`` and ``("add_all", es)`` give
the element(s) the operation's dot, replacing the dots the replica had seen for
them; ``("remove", e)`` and ``("remove_all", es)`` drop every dot the replica has
seen for them. Removing an element that is not present changes no value (the
operation is still recorded: op id and dot). A concurrent add keeps the element,
because the remover had not seen the add's dot; an element removed after being
seen does not come back from a stale replica, because the remover's vector covers
the old dot (no Amazon cart anomaly). Removed elements leave nothing behind: the
state is the live elements plus one vector entry per actor. Elements: str, bytes
or int. Value: a frozenset.

Removal is *observed* removal on the coordinating replica: it removes the dots
that replica holds. A client that saw an element elsewhere should reach a replica
whose `context` descends the one it read, or the remove can miss the add.

``register`` (last-write-wins on hybrid logical clock timestamps):
``((wall_ms, logical, node), value)`` or None before the first assignment.
``("assign", value)`` with value bytes, str, int or None; the greater timestamp
wins, whatever the merge order. The coordinating replica should pass
``clock.after(stored timestamp)`` so its own write is never older than what it
stored. Value: the value (None if never assigned). Context: ``(("@hlc", pack(ts)),)``.

``flag`` (enable-wins): ``(vector, dots)``. ``("enable",)`` sets the dots to the
operation's dot, ``("disable",)`` drops the dots seen. A concurrent enable and
disable leave the flag enabled. Value: a bool.

``map``: ``(vector, ((name, field_type, presence_dots, field_state), ...))``. A
field is identified by its name (a str) and its type (counter, set, register or
flag); the value is a dict ``{(name, field_type): value}``.
``("update", name, field_type, inner_op)`` applies an operation of that type to
the field and creates it if needed; ``("remove", name)`` removes every field with
that name, ``("remove", (name, field_type))`` just that one. The map and its fields
share one causal context, and fields are dot stores of their own (set and flag as
above; a counter field keeps one ``(actor, n, increments, decrements)`` entry per
actor tagged with its latest dot; a register field keeps ``(actor, n, timestamp,
value)`` entries, one per concurrent assignment, and the greatest timestamp wins
as in the top-level register: an assignment replaces the ones it has seen if its
timestamp is greater, and is dropped at once if not).

Map semantics of a remove concurrent with an update (Riak's): the update wins, the
field stays, and its value is *reset to the concurrent updates*: whatever the
remover had seen is gone, what it had not seen survives. A set field keeps only
the elements added concurrently with the remove, a flag field is enabled only by
a concurrent enable, a register field holds the concurrent assignment. One
imprecision, as in Riak's embedded counters: a counter field keeps per-actor
running totals, so if the concurrent increment was made on a replica whose own
earlier increments the remove had seen, those earlier increments come back with
it (increments from other replicas that the remove saw stay removed). An update
that changes no value (disabling a disabled flag field) still creates the field.

Idempotent retries
------------------
``Crdt.applied`` lists ``(op_id, wall_ms)`` of recently applied operations; an
operation whose id is listed is not applied again, also on another replica once
the states have merged (a retry reaching a coordinator that has not yet received
the first attempt is applied twice: the replication layer must route or wait).
Ids are remembered for `WINDOW_MS` of the object's own time (see `_trim`).

Trust: states are assumed well formed (they come from this module through an
authenticated transport); operations from clients are validated, and a bad one
raises `CrdtError` with a message naming the problem. Actor ids must never be
reused by a replica that lost its data (Riak's kv679).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from storage.hlc import Timestamp, pack

__all__ = [
    "FIELD_TYPES",
    "TYPES",
    "WINDOW_MS",
    "Crdt",
    "CrdtError",
    "apply",
    "context",
    "descends",
    "equal",
    "merge",
    "new",
    "value",
]

TYPES = ("counter", "set", "register", "flag", "map")
"""Every CRDT type."""

FIELD_TYPES = ("counter", "set", "register", "flag")
"""The types a map field can have."""

WINDOW_MS = 3_600_000
MAX_APPLIED = 1000
"""At most this many operation ids are remembered per key (the newest): on a hot key, a retry
older than the last 1,000 operations could apply twice. Keeps objects small (about 15 KB of ids)."""
"""How long operation ids are remembered, in milliseconds of the object's own time."""

Dot = tuple[str, int]
Dots = tuple[Dot, ...]
Vector = tuple[tuple[str, int], ...]
Ctx = dict[str, int]


class CrdtError(ValueError):
    """A bad operation, a wrong type or a bad argument."""


class Crdt(NamedTuple):
    """One key's CRDT: its type, its canonical state, and the operation ids applied lately."""

    type: str
    """One of `TYPES`."""
    state: Any
    """Builtins only, canonical: replicas with the same updates have ``==`` states."""
    applied: tuple[tuple[str, int], ...] = ()
    """``(op_id, wall_ms)`` of recently applied operations, sorted by op_id."""


# --- dots and version vectors ------------------------------------------------------------


def _covered(dot: Dot, ctx: Ctx) -> bool:
    return ctx.get(dot[0], 0) >= dot[1]


def _join(a: Iterable[tuple[str, int]], b: Iterable[tuple[str, int]]) -> Vector:
    joined = dict(a)
    for actor, n in b:
        if n > joined.get(actor, 0):
            joined[actor] = n
    return tuple(sorted(joined.items()))


def _vector_descends(a: Iterable[tuple[str, int]], b: Iterable[tuple[str, int]]) -> bool:
    va = dict(a)
    return all(va.get(actor, 0) >= n for actor, n in b)


def _next_dot(vector: Vector, actor: str) -> tuple[Dot, Vector]:
    """The dot of a new operation by ``actor``, and the vector that includes it."""
    ctx = dict(vector)
    dot = (actor, ctx.get(actor, 0) + 1)
    ctx[actor] = dot[1]
    return dot, tuple(sorted(ctx.items()))


def _merge_dots(a: Dots, ca: Ctx, b: Dots, cb: Ctx) -> Dots:
    """Keep the dots both sides hold, and the dots one side holds that the other has not seen."""
    if a == b:
        return a
    sa, sb = set(a), set(b)
    kept = (sa & sb) | {d for d in sa - sb if not _covered(d, cb)} | {d for d in sb - sa if not _covered(d, ca)}
    return tuple(sorted(kept))


def _merge_dotfun(a: tuple, ca: Ctx, b: tuple, cb: Ctx, key: Callable[[Any], Any]) -> tuple:
    """`_merge_dots` for entries whose first two fields are their dot; canonical order by dot."""
    if a == b:
        return a
    ea = {(e[0], e[1]): e for e in a}
    eb = {(e[0], e[1]): e for e in b}
    kept = []
    for dot in ea.keys() | eb.keys():
        x, y = ea.get(dot), eb.get(dot)
        if x is not None and y is not None:
            kept.append(x if x == y else max(x, y, key=key))  # differ only if an actor id was reused
        elif x is not None:
            if not _covered(dot, cb):
                kept.append(x)
        elif not _covered(dot, ca):
            kept.append(y)
    return tuple(sorted(kept, key=lambda e: (e[0], e[1])))


# --- validation --------------------------------------------------------------------------

_ELEMENT_TYPES = (int, str, bytes)
_VALUE_TYPES = (type(None), int, str, bytes)


def _rank_key(x: Any, types: tuple[type, ...]) -> tuple[int, Any]:
    """A total order over values of mixed types: by type, then by value."""
    return (types.index(type(x)), x if x is not None else 0)


def _element_key(e: Any) -> tuple[int, Any]:
    return _rank_key(e, _ELEMENT_TYPES)


def _value_key(v: Any) -> tuple[int, Any]:
    return _rank_key(v, _VALUE_TYPES)


def _element(e: Any) -> Any:
    if type(e) not in _ELEMENT_TYPES:
        raise CrdtError(f"set elements must be str, bytes or int, not {type(e).__name__} ({e!r})")
    return e


def _elements(es: Any) -> list[Any]:
    if not isinstance(es, (tuple, list, set, frozenset)):
        raise CrdtError(f"add_all/remove_all take a tuple of elements, not {type(es).__name__}")
    return [_element(e) for e in es]


def _amount(n: Any) -> int:
    if type(n) is not int or n < 0:
        raise CrdtError(f"a counter amount must be an int >= 0, not {n!r}")
    return n


def _register_value(v: Any) -> Any:
    if type(v) not in _VALUE_TYPES:
        raise CrdtError(f"a register holds bytes, str, int or None, not {type(v).__name__} ({v!r})")
    return v


def _check_ts(ts: Any) -> tuple[int, int, str]:
    if not (isinstance(ts, tuple) and len(ts) == 3 and type(ts[0]) is int and type(ts[1]) is int
            and isinstance(ts[2], str)):
        raise CrdtError(f"ts must be a Timestamp (wall_ms, logical, node), not {ts!r}")
    return (ts[0], ts[1], ts[2])


def _unpack(op: Any, type_: str, arities: dict[str, int]) -> tuple[str, tuple[Any, ...]]:
    """The operation's name and arguments, checked against ``{name: argument count}``."""
    if not isinstance(op, (tuple, list)) or not op:
        raise CrdtError(f"a {type_} operation is a non-empty tuple, not {op!r}")
    name, args = op[0], tuple(op[1:])
    if not isinstance(name, str) or name not in arities:
        raise CrdtError(f"{type_} has no operation {name!r}; expected one of {', '.join(arities)}")
    if len(args) != arities[name]:
        raise CrdtError(f"{type_} operation {name!r} takes {arities[name]} argument(s), got {len(args)}: {op!r}")
    return name, args


# --- dot stores: the data of a type, tagged with dots, under some causal context -------------
#
# Each store type has `_apply_*(store, op, dot, ts)` (validate the operation, then make the new
# store with `dot` as the operation's dot), `_merge_*(a, ca, b, cb)` (under the two sides'
# contexts) and `_value_*(store)`. A top-level set, flag or map is (vector, store); a map field's
# store lives under the map's vector.

def _apply_counter(store: tuple, op: Any, dot: Dot, ts: Any) -> tuple:
    name, (n,) = _unpack(op, "counter", {"increment": 1, "decrement": 1})
    n = _amount(n)
    actor = dot[0]
    inc = sum(e[2] for e in store if e[0] == actor)
    dec = sum(e[3] for e in store if e[0] == actor)
    inc, dec = (inc + n, dec) if name == "increment" else (inc, dec + n)
    rest = [e for e in store if e[0] != actor]
    return tuple(sorted(rest + [(actor, dot[1], inc, dec)]))


def _merge_counter(a: tuple, ca: Ctx, b: tuple, cb: Ctx) -> tuple:
    return _merge_dotfun(a, ca, b, cb, key=lambda e: e)


def _value_counter(store: tuple) -> int:
    return sum(e[2] - e[3] for e in store)


def _apply_set(store: tuple, op: Any, dot: Dot, ts: Any) -> tuple:
    name, (arg,) = _unpack(op, "set", {"add": 1, "remove": 1, "add_all": 1, "remove_all": 1})
    touched = set([_element(arg)] if name in ("add", "remove") else _elements(arg))
    kept = [(e, dots) for e, dots in store if e not in touched]
    if name.startswith("add"):
        kept += [(e, (dot,)) for e in touched]
    return tuple(sorted(kept, key=lambda item: _element_key(item[0])))


def _merge_set(a: tuple, ca: Ctx, b: tuple, cb: Ctx) -> tuple:
    if a == b:
        return a
    ea, eb = dict(a), dict(b)
    merged = []
    for e in ea.keys() | eb.keys():
        dots = _merge_dots(ea.get(e, ()), ca, eb.get(e, ()), cb)
        if dots:
            merged.append((e, dots))
    return tuple(sorted(merged, key=lambda item: _element_key(item[0])))


def _value_set(store: tuple) -> frozenset[Any]:
    return frozenset(e for e, _ in store)


def _apply_flag(store: Dots, op: Any, dot: Dot, ts: Any) -> Dots:
    name, _ = _unpack(op, "flag", {"enable": 0, "disable": 0})
    return (dot,) if name == "enable" else ()


def _value_flag(store: Dots) -> bool:
    return bool(store)


def _register_entry_key(e: tuple) -> tuple:
    return (e[2], _value_key(e[3]))


def _apply_field_register(store: tuple, op: Any, dot: Dot, ts: Any) -> tuple:
    _, (v,) = _unpack(op, "register", {"assign": 1})
    entry = (dot[0], dot[1], _check_ts(ts), _register_value(v))
    if all(_register_entry_key(entry) > _register_entry_key(e) for e in store):
        return (entry,)  # it replaces every assignment seen here
    return store  # an older timestamp than one seen here: it loses now, as it would in any merge


def _merge_field_register(a: tuple, ca: Ctx, b: tuple, cb: Ctx) -> tuple:
    return _merge_dotfun(a, ca, b, cb, key=_register_entry_key)


def _value_field_register(store: tuple) -> Any:
    return max(store, key=_register_entry_key)[3] if store else None


_FIELD_APPLY: dict[str, Callable[[Any, Any, Dot, Any], Any]] = {
    "counter": _apply_counter, "set": _apply_set, "register": _apply_field_register, "flag": _apply_flag,
}
_FIELD_MERGE: dict[str, Callable[[Any, Ctx, Any, Ctx], Any]] = {
    "counter": _merge_counter, "set": _merge_set, "register": _merge_field_register, "flag": _merge_dots,
}
_FIELD_VALUE: dict[str, Callable[[Any], Any]] = {
    "counter": _value_counter, "set": _value_set, "register": _value_field_register, "flag": _value_flag,
}


def _apply_map(store: tuple, op: Any, dot: Dot, ts: Any) -> tuple:
    if isinstance(op, (tuple, list)) and op and op[0] == "update":
        _, (name, ftype, inner) = _unpack(op, "map", {"update": 3})
        if not isinstance(name, str):
            raise CrdtError(f"a map field name is a str, not {name!r}")
        if ftype not in FIELD_TYPES:
            raise CrdtError(f"a map field's type is one of {', '.join(FIELD_TYPES)}, not {ftype!r}")
        fields = {(f[0], f[1]): f for f in store}
        old = fields.get((name, ftype))
        fields[(name, ftype)] = (name, ftype, (dot,), _FIELD_APPLY[ftype](old[3] if old else (), inner, dot, ts))
        return tuple(fields[k] for k in sorted(fields))
    _, (field,) = _unpack(op, "map", {"update": 3, "remove": 1})
    if isinstance(field, str):
        return tuple(f for f in store if f[0] != field)
    if isinstance(field, (tuple, list)) and len(field) == 2 and isinstance(field[0], str) and field[1] in FIELD_TYPES:
        return tuple(f for f in store if (f[0], f[1]) != tuple(field))
    raise CrdtError(f"map remove takes a field name or a (name, type) pair, not {field!r}")


def _merge_map(a: tuple, ca: Ctx, b: tuple, cb: Ctx) -> tuple:
    if a == b:
        return a
    fa = {(f[0], f[1]): f for f in a}
    fb = {(f[0], f[1]): f for f in b}
    merged = []
    for key in sorted(fa.keys() | fb.keys()):
        x, y = fa.get(key), fb.get(key)
        presence = _merge_dots(x[2] if x else (), ca, y[2] if y else (), cb)
        if not presence:
            # Every update of the field tags the field with its own dot; a field state only
            # holds dots of updates no later than its presence dots, so once those are gone
            # (removed, or replaced by updates the other side has seen), none survives either.
            continue
        inner = _FIELD_MERGE[key[1]](x[3] if x else (), ca, y[3] if y else (), cb)
        merged.append((key[0], key[1], presence, inner))
    return tuple(merged)


def _value_map(store: tuple) -> dict[tuple[str, str], Any]:
    return {(name, ftype): _FIELD_VALUE[ftype](inner) for name, ftype, _, inner in store}


# --- the five types ------------------------------------------------------------------------

def _apply_top_counter(state: tuple, op: Any, actor: str, ts: Any) -> tuple:
    n = max((e[1] for e in state if e[0] == actor), default=0)
    return _apply_counter(state, op, (actor, n + 1), ts)


def _counter_context(state: tuple) -> Ctx:
    ctx: Ctx = {}
    for actor, n, _, _ in state:
        ctx[actor] = max(ctx.get(actor, 0), n)
    return ctx


def _merge_top_counter(a: tuple, b: tuple) -> tuple:
    return _merge_counter(a, _counter_context(a), b, _counter_context(b))


def _causal_apply(store_apply: Callable[[Any, Any, Dot, Any], Any]) -> Callable[[tuple, Any, str, Any], tuple]:
    """The top-level apply of a (vector, store) type: a new dot, then the store's apply."""

    def apply_(state: tuple, op: Any, actor: str, ts: Any) -> tuple:
        vector, store = state
        dot, vector = _next_dot(vector, actor)
        return (vector, store_apply(store, op, dot, ts))

    return apply_


def _causal_merge(store_merge: Callable[[Any, Ctx, Any, Ctx], Any]) -> Callable[[tuple, tuple], tuple]:
    """The top-level merge of a (vector, store) type: the stores under their vectors, the vectors joined."""

    def merge_(a: tuple, b: tuple) -> tuple:
        if a == b:
            return a
        return (_join(a[0], b[0]), store_merge(a[1], dict(a[0]), b[1], dict(b[0])))

    return merge_


def _register_key(state: tuple) -> tuple:
    return (state[0], _value_key(state[1]))


def _apply_register(state: tuple | None, op: Any, actor: str, ts: Any) -> tuple:
    _, (v,) = _unpack(op, "register", {"assign": 1})
    written = (_check_ts(ts), _register_value(v))
    return written if state is None or _register_key(written) > _register_key(state) else state


def _merge_register(a: tuple | None, b: tuple | None) -> tuple | None:
    if a is None or b is None:
        return a if b is None else b
    return b if _register_key(b) > _register_key(a) else a


_EMPTY: dict[str, Any] = {"counter": (), "set": ((), ()), "register": None, "flag": ((), ()), "map": ((), ())}
_APPLY: dict[str, Callable[[Any, Any, str, Any], Any]] = {
    "counter": _apply_top_counter,
    "set": _causal_apply(_apply_set),
    "register": _apply_register,
    "flag": _causal_apply(_apply_flag),
    "map": _causal_apply(_apply_map),
}
_MERGE: dict[str, Callable[[Any, Any], Any]] = {
    "counter": _merge_top_counter,
    "set": _causal_merge(_merge_set),
    "register": _merge_register,
    "flag": _causal_merge(_merge_dots),
    "map": _causal_merge(_merge_map),
}
_VALUE: dict[str, Callable[[Any], Any]] = {
    "counter": _value_counter,
    "set": lambda state: _value_set(state[1]),
    "register": lambda state: None if state is None else state[1],
    "flag": lambda state: _value_flag(state[1]),
    "map": lambda state: _value_map(state[1]),
}


# --- applied operation ids -------------------------------------------------------------------

def _trim(applied: dict[str, int]) -> tuple[tuple[str, int], ...]:
    """Keep the ids stamped within `WINDOW_MS` of the newest stamp, sorted by id.

    Why this keeps merge associative: the newest stamp always survives, so trimming
    never changes the newest stamp of a collection, and an id trimmed from a part
    (older than the part's newest stamp minus the window) is older than the whole's
    newest stamp minus the window, so trimming the whole drops it too. Merging
    trimmed parts and trimming once more therefore gives what trimming the union of
    all parts gives, whatever the grouping. (An id stamped on two replicas keeps its
    newest stamp, a max, which is associative as well.)
    """
    if not applied:
        return ()
    horizon = max(applied.values()) - WINDOW_MS
    kept = [(op_id, wall) for op_id, wall in applied.items() if wall >= horizon]
    if len(kept) > MAX_APPLIED:
        # Bounded on hot keys too: keep the MAX_APPLIED newest (by stamp, then id). The top K
        # of a union is the top K of the union of the parts' top Ks, so merge stays associative.
        kept = sorted(kept, key=lambda item: (item[1], item[0]))[-MAX_APPLIED:]
    return tuple(sorted(kept))


def _merge_applied(a: tuple[tuple[str, int], ...], b: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    if a == b or not b:
        return a
    if not a:
        return b
    union = dict(a)
    for op_id, wall in b:
        if wall > union.get(op_id, -1):
            union[op_id] = wall
    return _trim(union)


def _was_applied(obj: Crdt, op_id: str) -> bool:
    i = bisect_left(obj.applied, (op_id,))
    return i < len(obj.applied) and obj.applied[i][0] == op_id


# --- the public functions --------------------------------------------------------------------

def _check_type(type_: Any) -> str:
    if not isinstance(type_, str) or type_ not in TYPES:
        raise CrdtError(f"unknown CRDT type {type_!r}; expected one of {', '.join(TYPES)}")
    return type_


def new(type: str) -> Crdt:
    """An empty CRDT of ``type``."""
    return Crdt(_check_type(type), _EMPTY[type])


def apply(obj: Crdt | None, type: str, op: tuple, actor: str, op_id: str | None, ts: Timestamp) -> Crdt:
    """The coordinating replica's step: ``obj`` with operation ``op`` applied once.

    ``actor`` is the replica's id (it names the new dot); ``ts`` a fresh hybrid clock
    timestamp of that replica (the register's timestamp; its ``wall_ms`` stamps the
    op id). If ``op_id`` is already in ``obj.applied``, ``obj`` is returned unchanged.
    Raises CrdtError for an unknown type, a type mismatch or a bad operation.
    """
    _check_type(type)
    if obj is None:
        obj = new(type)
    elif obj.type != type:
        raise CrdtError(f"the object is a {obj.type}, not a {type}")
    if not isinstance(actor, str) or not actor:
        raise CrdtError(f"actor must be a non-empty str, not {actor!r}")
    if op_id is not None and not isinstance(op_id, str):
        raise CrdtError(f"op_id must be a str or None, not {op_id!r}")
    wall_ms = _check_ts(ts)[0]
    if op_id is not None and _was_applied(obj, op_id):
        return obj
    state = _APPLY[type](obj.state, op, actor, ts)
    applied = obj.applied
    if op_id is not None:
        # Never stamp an id older than the newest one held: a coordinator whose clock lags
        # would otherwise see its own fresh id trimmed at once.
        stamp = max([wall_ms] + [wall for _, wall in applied])
        applied = _trim(dict(applied) | {op_id: stamp})
    return Crdt(type, state, applied)


def _check_pair(a: Crdt, b: Crdt) -> None:
    if a.type != b.type:
        raise CrdtError(f"cannot merge a {a.type} with a {b.type}")


def merge(a: Crdt | None, b: Crdt | None) -> Crdt | None:
    """Merge two replicas' states: commutative, associative, idempotent. CrdtError on a type mismatch."""
    if a is None or b is None:
        return a if b is None else b
    _check_pair(a, b)
    if a == b:
        return a
    return Crdt(a.type, _MERGE[a.type](a.state, b.state), _merge_applied(a.applied, b.applied))


def value(obj: Crdt | None) -> Any:
    """What a read returns: counter int, set frozenset, register value, flag bool, map dict; None if absent."""
    return None if obj is None else _VALUE[obj.type](obj.state)


def context(obj: Crdt | None) -> tuple[tuple[str, int], ...]:
    """A version vector, sorted ``(actor, counter)`` pairs, that grows with every applied operation.

    A register's is ``(("@hlc", pack(timestamp)),)`` of the winning write: it grows with every
    assignment that wins (one stamped by ``clock.after(stored timestamp)`` always does).
    Sessions compare these pointwise.
    """
    if obj is None:
        return ()
    if obj.type == "counter":
        return tuple(sorted(_counter_context(obj.state).items()))
    if obj.type == "register":
        if obj.state is None:
            return ()
        return (("@hlc", pack(Timestamp(*obj.state[0]))),)
    vector: Vector = obj.state[0]
    return vector


def descends(a: Crdt | None, b: Crdt | None) -> bool:
    """True when ``a`` already includes every update ``b`` has (``merge(a, b)`` equals ``a`` but for ``applied``).

    CrdtError on a type mismatch.
    """
    if b is None:
        return True
    if a is None:
        a = new(b.type)
    _check_pair(a, b)
    if a.type == "register":
        return bool(_merge_register(a.state, b.state) == a.state)
    # Every operation, removals included, takes a dot, so having seen all of b's dots
    # means having seen (and applied) all of b's updates.
    return _vector_descends(context(a), context(b))


def equal(a: Crdt | None, b: Crdt | None) -> bool:
    """True when ``a`` and ``b`` hold the same updates (``applied`` is not compared); None is empty."""
    if a is None and b is None:
        return True
    if a is None or b is None:
        present = a if b is None else b
        assert present is not None
        return bool(present.state == _EMPTY[present.type])
    return a.type == b.type and bool(a.state == b.state)
