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

Removes take what the client observed (Riak's ORSWOT)
-----------------------------------------------------
A remove (a set element, a map field, a flag's ``disable``, a set element inside a
map field) may carry the *context* of the read its client made: it removes exactly
the dots that context covers, wherever they are. A replica whose vector does not yet
descend that context (a fallback with no copy, a replica behind) keeps the remove as a
*deferred* entry ``(context, targets)`` and applies it when the dots arrive by merge;
an entry is dropped once the replica's vector descends its context. An add the remover
had not observed (its dot is not covered) survives: add wins. A remove without a
context removes what the coordinating replica holds, and removing an element (or a
field) that replica does not hold is refused with `NotPresent`, never acknowledged as
a no-op.

Types, their states and their operations
----------------------------------------
``counter`` (PN-counter): ``(entries, cancelled)``; an entry ``(actor, n,
increments, decrements)`` per actor, ``n`` that actor's operation count (its dot).
``("increment", k)``, ``("decrement", k)``, ``k`` an int >= 0. Value: the sum of the
entries minus the sum of ``cancelled`` (see "Idempotent retries"): an int.

``set`` (add-wins observed-remove set): ``(vector, ((element, dots), ...),
deferred)``. ``("add", e)`` and ``("add_all", es)`` give the element(s) the
operation's dot, replacing the dots the replica held for them; ``("remove", e)`` and
``("remove_all", es)`` remove them as above. Elements: str, bytes or int. Value: a
frozenset.

``register`` (last-write-wins on hybrid logical clock timestamps):
``((wall_ms, logical, node), value)`` or None before the first assignment.
``("assign", value)`` with value bytes, str, int or None; the greater timestamp wins.
The coordinating replica passes ``clock.after(stored timestamp)`` so its own write is
never older than what it stored. Context: ``(("@hlc", pack(ts)),)``.

``flag`` (enable-wins): ``(vector, dots, deferred)``. ``("enable",)`` sets the dots
to the operation's dot, ``("disable",)`` removes the dots seen. Value: a bool.

``map``: ``(vector, ((name, field_type, presence_dots, field_state), ...),
deferred)``. A field is a name (a str) and a type (counter, set, register or flag).
``("update", name, field_type, inner_op)`` applies an operation of that type to the
field, creating it if needed; ``("remove", name)`` removes every field of that name,
``("remove", (name, field_type))`` just that one. An update concurrent with a field's
removal keeps the field, *reset to the concurrent updates* (Riak's semantics; a
counter field keeps per-actor running totals, so a concurrent increment from a replica
whose earlier increments the remove saw brings those back). Value: ``{(name, type):
value}``.

Idempotent retries
------------------
``Crdt.applied`` lists ``(op_id, wall_ms, build)`` of recently applied operations;
an operation whose id is listed is not applied again, also on another replica once
the states have merged. A retry can still be built by a second replica before the
states meet (its first replica froze after building it): for a counter, each build
is recorded as ``(actor, n, increments, decrements)``, and when merged states list
two builds of one id, all but the smallest are *cancelled* (kept in the counter's
``cancelled``, a grow-only set, so every replica subtracts the same builds): the
operation counts once. Ids are remembered for `WINDOW_MS` of the object's own time
and at most `MAX_APPLIED` per key; a second build that meets the first only after
that is counted twice. (A map's counter field does not keep builds: a retry built by
a second replica counts twice there, as in Riak and Cassandra.)

Trust: states are assumed well formed (they come from this module, through an
authenticated transport or the record codec); operations and contexts from clients
are validated, and a bad one raises `CrdtError` with a message naming the problem.
Actor ids must never be reused by a replica that lost its data (Riak's kv679).
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
    "NotPresent",
    "apply",
    "context",
    "descends",
    "equal",
    "merge",
    "new",
    "normalize",
    "value",
]

TYPES = ("counter", "set", "register", "flag", "map")
"""Every CRDT type."""

FIELD_TYPES = ("counter", "set", "register", "flag")
"""The types a map field can have."""

WINDOW_MS = 3_600_000
"""How long operation ids are remembered, in milliseconds of the object's own time."""
MAX_APPLIED = 1000
"""At most this many operation ids are remembered per key (the newest): on a hot key, a retry
older than the last 1,000 operations could apply twice. Keeps objects small (about 15 KB of ids)."""

Dot = tuple[str, int]
Dots = tuple[Dot, ...]
Vector = tuple[tuple[str, int], ...]
Ctx = dict[str, int]
Build = tuple[str, int, int, int]        # a counter operation's dot and amounts: (actor, n, increments, decrements)
Applied = tuple[tuple[str, int, Any], ...]   # (op_id, stamp, build or ()), sorted


class CrdtError(ValueError):
    """A bad operation, a wrong type or a bad argument."""


class NotPresent(CrdtError):
    """A remove without a context named an element (or a field) the replica does not hold."""


class Crdt(NamedTuple):
    """One key's CRDT: its type, its canonical state, and the operation ids applied lately."""

    type: str
    """One of `TYPES`."""
    state: Any
    """Builtins only, canonical: replicas with the same updates have ``==`` states."""
    applied: Applied = ()
    """``(op_id, wall_ms, build)`` of recently applied operations, sorted (see `_trim`)."""


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


def _uncovered(dots: Dots, ctx: Ctx) -> Dots:
    return tuple(d for d in dots if not _covered(d, ctx))


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


INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
"""Integers a state may hold (what the record format stores: 64 bits)."""


def _int64(n: int, what: str) -> int:
    if not INT_MIN <= n <= INT_MAX:
        raise CrdtError(f"{what} {n} is outside the 64-bit range a state can hold")
    return n


def _element(e: Any) -> Any:
    if type(e) not in _ELEMENT_TYPES:
        raise CrdtError(f"set elements must be str, bytes or int, not {type(e).__name__} ({e!r})")
    if type(e) is int:
        _int64(e, "a set element")
    return e


def _elements(es: Any) -> list[Any]:
    if not isinstance(es, (tuple, list, set, frozenset)):
        raise CrdtError(f"add_all/remove_all take a tuple of elements, not {type(es).__name__}")
    return [_element(e) for e in es]


def _amount(n: Any) -> int:
    if type(n) is not int or n < 0:
        raise CrdtError(f"a counter amount must be an int >= 0, not {n!r}")
    return _int64(n, "a counter amount")


def _register_value(v: Any) -> Any:
    if type(v) not in _VALUE_TYPES:
        raise CrdtError(f"a register holds bytes, str, int or None, not {type(v).__name__} ({v!r})")
    if type(v) is int:
        _int64(v, "a register value")
    return v


def _check_ts(ts: Any) -> tuple[int, int, str]:
    if not (isinstance(ts, tuple) and len(ts) == 3 and type(ts[0]) is int and type(ts[1]) is int
            and isinstance(ts[2], str)):
        raise CrdtError(f"ts must be a Timestamp (wall_ms, logical, node), not {ts!r}")
    return (ts[0], ts[1], ts[2])


def _check_context(ctx: Any) -> Ctx:
    """A remove's observed context: ``(actor, counter)`` pairs, as `context` returns them."""
    try:
        pairs = dict(ctx)
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or any(not isinstance(a, str) or type(n) is not int or n < 0 for a, n in pairs.items()):
        raise CrdtError(f"a remove's context is the (actor, counter) pairs a read returned, not {ctx!r:.80}")
    return pairs


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
# store with `dot` as the operation's dot; removes change nothing here: they become deferred
# entries that `_settle` carries out), `_merge_*(a, ca, b, cb)` (under the two sides' contexts)
# and `_value_*(store)`. A top-level set, flag or map is (vector, store, deferred); a map field's
# store lives under the map's vector.

SET_OPS = {"add": 1, "remove": 1, "add_all": 1, "remove_all": 1}
FLAG_OPS = {"enable": 0, "disable": 0}


def _set_touched(name: str, arg: Any) -> list[Any]:
    return [_element(arg)] if name in ("add", "remove") else _elements(arg)


def _apply_counter(store: tuple, op: Any, dot: Dot, ts: Any) -> tuple:
    name, (n,) = _unpack(op, "counter", {"increment": 1, "decrement": 1})
    n = _amount(n)
    actor = dot[0]
    inc = sum(e[2] for e in store if e[0] == actor)
    dec = sum(e[3] for e in store if e[0] == actor)
    inc, dec = (inc + n, dec) if name == "increment" else (inc, dec + n)
    _int64(max(inc, dec), "a counter's running total")
    rest = [e for e in store if e[0] != actor]
    return tuple(sorted(rest + [(actor, dot[1], inc, dec)]))


def _merge_counter(a: tuple, ca: Ctx, b: tuple, cb: Ctx) -> tuple:
    return _merge_dotfun(a, ca, b, cb, key=lambda e: e)


def _value_counter(store: tuple) -> int:
    return sum(e[2] - e[3] for e in store)


def _apply_set(store: tuple, op: Any, dot: Dot, ts: Any) -> tuple:
    name, (arg,) = _unpack(op, "set", SET_OPS)
    touched = set(_set_touched(name, arg))
    if not name.startswith("add"):
        return store                    # a remove: a deferred entry (see `_removal`)
    kept = [(e, dots) for e, dots in store if e not in touched]
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


def _set_remove_covered(store: tuple, ctx: Ctx, elements: Iterable[Any]) -> tuple:
    """Drop the dots ``ctx`` covers from ``elements``; an element left with no dot is gone."""
    targets = set(elements)
    out = []
    for e, dots in store:
        if e in targets:
            dots = _uncovered(dots, ctx)
            if not dots:
                continue
        out.append((e, dots))
    return tuple(out)


def _apply_flag(store: Dots, op: Any, dot: Dot, ts: Any) -> Dots:
    name, _ = _unpack(op, "flag", FLAG_OPS)
    return (dot,) if name == "enable" else store


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


def _field_remove_covered(ftype: str, inner: Any, ctx: Ctx) -> Any:
    """A field's store without the dots ``ctx`` covers (what a field removal takes away)."""
    if ftype == "set":
        return _set_remove_covered(inner, ctx, [e for e, _ in inner])
    if ftype == "flag":
        return _uncovered(inner, ctx)
    return tuple(e for e in inner if not _covered((e[0], e[1]), ctx))    # counter and register entries


def _map_field_op(op: Any) -> tuple[str, str, Any]:
    _, (name, ftype, inner) = _unpack(op, "map", {"update": 3})
    if not isinstance(name, str):
        raise CrdtError(f"a map field name is a str, not {name!r}")
    if ftype not in FIELD_TYPES:
        raise CrdtError(f"a map field's type is one of {', '.join(FIELD_TYPES)}, not {ftype!r}")
    return name, ftype, inner


def _map_removed_field(op: Any) -> Any:
    """What ``("remove", field)`` names: a field name, or a ``(name, type)`` pair."""
    _, (field,) = _unpack(op, "map", {"update": 3, "remove": 1})
    if isinstance(field, str):
        return field
    if isinstance(field, (tuple, list)) and len(field) == 2 and isinstance(field[0], str) and field[1] in FIELD_TYPES:
        return (field[0], field[1])
    raise CrdtError(f"map remove takes a field name or a (name, type) pair, not {field!r}")


def _apply_map(store: tuple, op: Any, dot: Dot, ts: Any) -> tuple:
    if isinstance(op, (tuple, list)) and op and op[0] == "update":
        name, ftype, inner = _map_field_op(op)
        fields = {(f[0], f[1]): f for f in store}
        old = fields.get((name, ftype))
        fields[(name, ftype)] = (name, ftype, (dot,), _FIELD_APPLY[ftype](old[3] if old else (), inner, dot, ts))
        return tuple(fields[k] for k in sorted(fields))
    _map_removed_field(op)
    return store                        # a field removal: a deferred entry (see `_removal`)


def _map_remove_covered(store: tuple, ctx: Ctx, targets: Iterable[Any]) -> tuple:
    """Carry out map removal targets under ``ctx``: ``("field", name)``, ``("field", name, type)``
    (presence and contents), ``("elem", name, element)`` (of a set field), ``("flag", name)``."""
    names: set[str] = set()
    keys: set[tuple[str, str]] = set()
    elements: dict[str, list[Any]] = {}
    flags: set[str] = set()
    for target in targets:
        if target[0] == "field":
            if len(target) == 2:
                names.add(target[1])
            else:
                keys.add((target[1], target[2]))
        elif target[0] == "elem":
            elements.setdefault(target[1], []).append(target[2])
        else:
            flags.add(target[1])
    out = []
    for name, ftype, presence, inner in store:
        if name in names or (name, ftype) in keys:
            presence = _uncovered(presence, ctx)
            if not presence:
                continue
            inner = _field_remove_covered(ftype, inner, ctx)
        elif ftype == "set" and name in elements:
            inner = _set_remove_covered(inner, ctx, elements[name])
        elif ftype == "flag" and name in flags:
            inner = _uncovered(inner, ctx)
        out.append((name, ftype, presence, inner))
    return tuple(out)


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


# --- removals: what a remove targets, the check without a context, deferred entries ------------

def _removal(type_: str, op: Any) -> tuple[Any, ...]:
    """The targets a remove operation takes away (empty for anything else); op already validated."""
    name = op[0]
    if type_ == "set":
        return tuple(_set_touched(name, op[1])) if name in ("remove", "remove_all") else ()
    if type_ == "flag":
        return ("",) if name == "disable" else ()
    if name == "remove":
        field = _map_removed_field(op)
        return (("field", field),) if isinstance(field, str) else (("field", *field),)
    fname, ftype, inner = _map_field_op(op)
    if ftype == "set":
        iname, (arg,) = _unpack(inner, "set", SET_OPS)
        if iname in ("remove", "remove_all"):
            return tuple(("elem", fname, e) for e in _set_touched(iname, arg))
    elif ftype == "flag" and _unpack(inner, "flag", FLAG_OPS)[0] == "disable":
        return (("flag", fname),)
    return ()


def _check_present(type_: str, store: Any, targets: tuple[Any, ...]) -> None:
    """A remove without a context must name what this replica holds (Riak's precondition)."""
    if type_ == "set":
        held = {e for e, _ in store}
        missing = [t for t in targets if t not in held]
        if missing:
            raise NotPresent(f"{', '.join(repr(m) for m in missing)} not in the set")
    elif type_ == "map":
        fields = {(f[0], f[1]): f for f in store}
        for target in targets:
            if target[0] == "field":
                present = any(k[0] == target[1] for k in fields) if len(target) == 2 \
                    else (target[1], target[2]) in fields
                if not present:
                    raise NotPresent(f"no field {target[1:] if len(target) == 3 else target[1]!r} in the map")
            elif target[0] == "elem":
                field = fields.get((target[1], "set"))
                if field is None or target[2] not in {e for e, _ in field[3]}:
                    raise NotPresent(f"{target[2]!r} not in the set field {target[1]!r}")


def _remove_covered(type_: str, store: Any, ctx: Ctx, targets: Iterable[Any]) -> Any:
    if type_ == "set":
        return _set_remove_covered(store, ctx, targets)
    if type_ == "flag":
        return _uncovered(store, ctx)
    return _map_remove_covered(store, ctx, targets)


def _target_key(target: Any) -> str:
    return repr(target)     # targets mix types (elements, field tuples): repr is a total, canonical order


def _add_deferred(deferred: tuple, ctx: Vector, targets: Iterable[Any]) -> tuple:
    """``deferred`` with ``targets`` under ``ctx`` added; canonical (one entry per context, sorted)."""
    by_ctx: dict[Vector, set[Any]] = {c: set(t) for c, t in deferred}
    by_ctx.setdefault(ctx, set()).update(targets)
    return tuple((c, tuple(sorted(t, key=_target_key))) for c, t in sorted(by_ctx.items()))


def _settle(type_: str, vector: Vector, store: Any, deferred: tuple) -> tuple:
    """Carry out every deferred remove on what is here; keep those whose context is not seen yet."""
    if not deferred:
        return (vector, store, ())
    kept = []
    for ctx, targets in deferred:
        store = _remove_covered(type_, store, dict(ctx), targets)
        if not _vector_descends(vector, ctx):
            kept.append((ctx, targets))
    return (vector, store, tuple(kept))


# --- the five types ------------------------------------------------------------------------

def _counter_context(entries: tuple) -> Ctx:
    ctx: Ctx = {}
    for actor, n, _, _ in entries:
        ctx[actor] = max(ctx.get(actor, 0), n)
    return ctx


_CAUSAL_APPLY: dict[str, Callable[[Any, Any, Dot, Any], Any]] = {
    "set": _apply_set, "flag": _apply_flag, "map": _apply_map,
}
_CAUSAL_MERGE: dict[str, Callable[[Any, Ctx, Any, Ctx], Any]] = {
    "set": _merge_set, "flag": _merge_dots, "map": _merge_map,
}


def _apply_causal(type_: str, state: tuple, op: Any, actor: str, ts: Any, ctx: Any) -> tuple:
    """A set, flag or map operation: a new dot, the store's apply, and a remove as a deferred entry
    under the client's context (or, without one, under everything this replica has seen)."""
    vector, store, deferred = state
    dot, new_vector = _next_dot(vector, actor)
    store = _CAUSAL_APPLY[type_](store, op, dot, ts)
    targets = _removal(type_, op)
    if not targets:
        return (new_vector, store, deferred)
    if ctx is None:
        _check_present(type_, state[1], targets)
        observed = vector
    else:
        observed = tuple(sorted((a, n) for a, n in _check_context(ctx).items() if n > 0))
    return _settle(type_, new_vector, store, _add_deferred(deferred, observed, targets))


def _merge_causal(type_: str, a: tuple, b: tuple) -> tuple:
    """Stores under their vectors, vectors joined, deferred removes united and carried out."""
    if a == b:
        return a
    vector = _join(a[0], b[0])
    store = _CAUSAL_MERGE[type_](a[1], dict(a[0]), b[1], dict(b[0]))
    deferred = a[2]
    for ctx, targets in b[2]:
        deferred = _add_deferred(deferred, ctx, targets)
    return _settle(type_, vector, store, deferred)


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


_EMPTY: dict[str, Any] = {"counter": ((), ()), "set": ((), (), ()), "register": None, "flag": ((), (), ()),
                          "map": ((), (), ())}
_VALUE: dict[str, Callable[[Any], Any]] = {
    "counter": lambda state: _value_counter(state[0]) - _value_counter(state[1]),
    "set": lambda state: _value_set(state[1]),
    "register": lambda state: None if state is None else state[1],
    "flag": lambda state: _value_flag(state[1]),
    "map": lambda state: _value_map(state[1]),
}


# --- applied operation ids, and counter builds counted once ----------------------------------

def _trim(applied: Iterable[tuple[str, int, Build | tuple[()]]]) -> Applied:
    """Keep the items stamped within `WINDOW_MS` of the newest stamp (at most `MAX_APPLIED`), sorted.

    An item is ``(op_id, stamp, build)``: one per build of an operation (``build`` is ``()``
    but for counters), its stamp fixed where it was built. Why this keeps merge associative:
    the newest stamp always survives, so trimming never changes the newest stamp of a
    collection, and an item trimmed from a part (older than the part's newest stamp minus
    the window) is older than the whole's newest stamp minus the window, so trimming the
    whole drops it too. Merging trimmed parts and trimming once more therefore gives what
    trimming the union of all parts gives, whatever the grouping.
    """
    items = set(applied)
    if not items:
        return ()
    horizon = max(stamp for _, stamp, _ in items) - WINDOW_MS
    kept = [item for item in items if item[1] >= horizon]
    if len(kept) > MAX_APPLIED:
        # Bounded on hot keys too: keep the MAX_APPLIED newest (by stamp, then the rest). The top K
        # of a union is the top K of the union of the parts' top Ks, so merge stays associative.
        kept = sorted(kept, key=lambda item: (item[1], item[0], item[2]))[-MAX_APPLIED:]
    return tuple(sorted(kept))


def _merge_applied(a: Applied, b: Applied) -> Applied:
    if a == b or not b:
        return a
    if not a:
        return b
    return _trim((*a, *b))


def _was_applied(obj: Crdt, op_id: str) -> bool:
    i = bisect_left(obj.applied, (op_id,))
    return i < len(obj.applied) and obj.applied[i][0] == op_id


def _cancel_duplicates(state: tuple, applied: Applied) -> tuple:
    """A counter whose applied ids list two builds of one operation: all but the smallest cancelled."""
    entries, cancelled = state
    builds: dict[str, list[Build]] = {}
    for op_id, _, build in applied:
        if build:
            builds.setdefault(op_id, []).append(build)
    extra = {build for found in builds.values() if len(found) > 1 for build in sorted(found)[1:]}
    if not extra or extra <= set(cancelled):
        return state
    return (entries, tuple(sorted(set(cancelled) | extra)))


# --- the public functions --------------------------------------------------------------------

def _check_type(type_: Any) -> str:
    if not isinstance(type_, str) or type_ not in TYPES:
        raise CrdtError(f"unknown CRDT type {type_!r}; expected one of {', '.join(TYPES)}")
    return type_


def new(type: str) -> Crdt:
    """An empty CRDT of ``type``."""
    return Crdt(_check_type(type), _EMPTY[type])


def apply(obj: Crdt | None, type: str, op: tuple, actor: str, op_id: str | None, ts: Timestamp,
          context: Any = None) -> Crdt:
    """The coordinating replica's step: ``obj`` with operation ``op`` applied once.

    ``actor`` is the replica's id (it names the new dot); ``ts`` a fresh hybrid clock
    timestamp of that replica (the register's timestamp; its ``wall_ms`` stamps the
    op id). If ``op_id`` is already in ``obj.applied``, ``obj`` is returned unchanged.
    ``context`` (removes only): the context of the client's read; the remove takes what
    it covers (see the module docstring); without it, what ``obj`` holds, and `NotPresent`
    when that does not include the element or field.
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
    build: Build | tuple[()] = ()
    if type == "counter":
        entries, cancelled = obj.state
        n = max((e[1] for e in entries if e[0] == actor), default=0) + 1
        entries = _apply_counter(entries, op, (actor, n), ts)
        amount = _amount(op[1])
        build = (actor, n, amount, 0) if op[0] == "increment" else (actor, n, 0, amount)
        state: Any = (entries, cancelled)
    elif type == "register":
        state = _apply_register(obj.state, op, actor, ts)
    else:
        state = _apply_causal(type, obj.state, op, actor, ts, context)
    applied = obj.applied
    if op_id is not None:
        # Never stamp an id older than the newest one held: a coordinator whose clock lags
        # would otherwise see its own fresh id trimmed at once.
        stamp = max([wall_ms] + [wall for _, wall, _ in applied])
        applied = _trim((*applied, (op_id, stamp, build)))
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
    applied = _merge_applied(a.applied, b.applied)
    type_ = a.type
    if type_ == "counter":
        entries = _merge_counter(a.state[0], _counter_context(a.state[0]), b.state[0], _counter_context(b.state[0]))
        cancelled = a.state[1] if a.state[1] == b.state[1] else tuple(sorted(set(a.state[1]) | set(b.state[1])))
        state: Any = _cancel_duplicates((entries, cancelled), applied)
    elif type_ == "register":
        state = _merge_register(a.state, b.state)
    else:
        state = _merge_causal(type_, a.state, b.state)
    return Crdt(type_, state, applied)


def value(obj: Crdt | None) -> Any:
    """What a read returns: counter int, set frozenset, register value, flag bool, map dict; None if absent."""
    return None if obj is None else _VALUE[obj.type](obj.state)


def context(obj: Crdt | None) -> tuple[tuple[str, int], ...]:
    """A version vector, sorted ``(actor, counter)`` pairs, that grows with every applied operation.

    A register's is ``(("@hlc", pack(timestamp)),)`` of the winning write: it grows with every
    assignment that wins (one stamped by ``clock.after(stored timestamp)`` always does).
    Sessions compare these pointwise; a remove carries one as what its client observed.
    """
    if obj is None:
        return ()
    if obj.type == "counter":
        return tuple(sorted(_counter_context(obj.state[0]).items()))
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
    if a.type == "counter" and not set(b.state[1]) <= set(a.state[1]):
        return False
    # Every operation, removals included, takes a dot, so having seen all of b's dots
    # means having seen (and applied) all of b's updates, its deferred removes included.
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


def normalize(type_: str, state: Any, applied: Any) -> Crdt:
    """A `Crdt` from a record of any release: states and applied ids of the first release (a counter
    without ``cancelled``, a set, flag or map without ``deferred``, ids without builds) are brought
    to today's shapes; today's are taken as they are."""
    if type_ == "counter":
        if state == () or (state and type(state[0]) is tuple and state[0] and type(state[0][0]) is str):
            state = (state, ())                         # the first release's plain entries
    elif type_ != "register" and type(state) is tuple and len(state) == 2:
        state = (state[0], state[1], ())
    if applied and len(applied[0]) == 2:
        applied = tuple((op_id, wall, ()) for op_id, wall in applied)
    return Crdt(type_, state, applied)
