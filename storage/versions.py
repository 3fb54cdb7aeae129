"""Dotted version vector sets: the causal state of one key (Riak 2.0 dvvset semantics).

A `DVVSet` holds every concurrent value (sibling) of a key, each named by a *dot*
``(actor, counter)``, together with the causal history that produced them. The
history is a version vector: for each actor, every counter from 1 to the entry's
counter is known. An entry ``(actor, n, values)`` carries the values whose dots
are ``(actor, n), (actor, n - 1), ...`` newest first, so the dots of one entry
always form the top of its counter range.

- `update` is the coordinating replica's write: it folds the client's context
  and a new value into the stored set under a new dot.
- `sync` merges two replicas' states, keeping exactly the values the other side
  has not superseded. It is commutative and idempotent, and associative over
  dotted values (the only kind `update` makes).

Values are opaque: the identity of a value is its dot. Anonymous values (no dot)
are a transient form kept for completeness; having no dot, they are told apart
by equality; a sync drops them when the other side's history strictly dominates
theirs, and an update drops them when its context covers the whole stored
history. Every function returns canonical (sorted) tuples, so two nodes
computing the same merge get equal objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from typing import Any, NamedTuple

__all__ = [
    "Context",
    "DVVSet",
    "EMPTY",
    "context_descends",
    "descends",
    "equal",
    "join",
    "merge_contexts",
    "size",
    "sync",
    "sync_all",
    "update",
    "values",
]

Context = tuple[tuple[str, int], ...]
"""A version vector: ``(actor, counter)`` pairs sorted by actor, no zero counters."""

Entry = tuple[str, int, tuple[Any, ...]]


class DVVSet(NamedTuple):
    """The causal state of one key: its siblings and the history behind them."""

    entries: tuple[Entry, ...]
    """``(actor, counter, values)`` sorted by actor; ``values[i]`` has dot ``(actor, counter - i)``."""
    anonymous: tuple[Any, ...] = ()
    """Values without a dot."""


EMPTY = DVVSet((), ())


def _vector(context: Iterable[tuple[str, int]]) -> dict[str, int]:
    """A context as a dict without zero counters, tolerating unsorted pairs and repeats."""
    vector: dict[str, int] = {}
    for actor, counter in context:
        if counter < 0:
            raise ValueError(f"negative counter {counter} for actor {actor!r}")
        if counter > 0:
            vector[actor] = max(vector.get(actor, 0), counter)
    return vector


def _context(vector: dict[str, int]) -> Context:
    return tuple(sorted((actor, n) for actor, n in vector.items() if n > 0))


def _entries(obj: DVVSet | None) -> dict[str, tuple[int, tuple[Any, ...]]]:
    return {} if obj is None else {actor: (n, vals) for actor, n, vals in obj.entries}


def context_descends(a: Context, b: Context) -> bool:
    """True when version vector `a` has seen every event of `b`."""
    va = _vector(a)
    return all(va.get(actor, 0) >= n for actor, n in _vector(b).items())


def merge_contexts(a: Context, b: Context) -> Context:
    """The pointwise maximum of two version vectors."""
    merged = _vector(a)
    for actor, n in _vector(b).items():
        merged[actor] = max(merged.get(actor, 0), n)
    return _context(merged)


def join(obj: DVVSet | None) -> Context:
    """The causal context covering everything `obj` knows: a version vector."""
    return () if obj is None else _context({actor: n for actor, n, _ in obj.entries})


def values(obj: DVVSet | None) -> list[Any]:
    """Every sibling: entries' values by actor, newest first, then anonymous values."""
    if obj is None:
        return []
    return [v for _, _, vals in obj.entries for v in vals] + list(obj.anonymous)


def size(obj: DVVSet | None) -> int:
    """The number of sibling values."""
    return 0 if obj is None else sum(len(vals) for _, _, vals in obj.entries) + len(obj.anonymous)


def descends(a: DVVSet | None, b: DVVSet | None) -> bool:
    """True when `a`'s history covers all of `b`'s (a knows everything b knows)."""
    return context_descends(join(a), join(b))


def _dots(obj: DVVSet | None) -> set[tuple[str, int]]:
    return {(actor, n - i) for actor, n, vals in (obj.entries if obj else ()) for i in range(len(vals))}


def equal(a: DVVSet | None, b: DVVSet | None) -> bool:
    """True when `a` and `b` have the same causal history and hold the same dots."""
    if a == b:                       # the common case (replicas agree), decided in C
        return True
    return join(a) == join(b) and _dots(a) == _dots(b)


def _strictly_dominates(a: Context, b: Context) -> bool:
    return a != b and context_descends(a, b)


def _union(a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
    """Anonymous values of both sides, deduplicated by equality, in a canonical order."""
    if a == b or not b:
        return a
    if not a:
        return b
    unique: list[Any] = []
    for value in a + b:
        if value not in unique:
            unique.append(value)
    return tuple(sorted(unique, key=lambda v: (type(v).__name__, repr(v))))


def _merge_anonymous(a: DVVSet, b: DVVSet) -> tuple[Any, ...]:
    ja, jb = join(a), join(b)
    if _strictly_dominates(jb, ja):
        return b.anonymous
    if _strictly_dominates(ja, jb):
        return a.anonymous
    return _union(a.anonymous, b.anonymous)


def _merge_entry(n1: int, vals1: tuple[Any, ...], n2: int, vals2: tuple[Any, ...]) -> tuple[int, tuple[Any, ...]]:
    """Merge one actor's entries: keep each dot that the other side has not discarded.

    A dot is discarded by a side whose counter covers it but which no longer holds
    it, so the survivors are the counters above both sides' lowest held dot.
    """
    top = max(n1, n2)
    floor = max(n1 - len(vals1), n2 - len(vals2))
    newer = vals1 if n1 >= n2 else vals2  # the newer side holds every surviving dot
    return top, newer[: max(0, top - floor)]


def sync(a: DVVSet | None, b: DVVSet | None) -> DVVSet | None:
    """Merge two replicas' states, keeping every value the other side has not superseded."""
    if a is None or b is None:
        return b if a is None else a
    if a == b:                       # replicas that agree: nothing to merge (sync is idempotent)
        return a
    ea, eb = _entries(a), _entries(b)
    entries = tuple(
        (actor, *_merge_entry(*ea.get(actor, (0, ())), *eb.get(actor, (0, ()))))
        for actor in sorted(ea.keys() | eb.keys())
    )
    anonymous = _merge_anonymous(a, b) if a.anonymous or b.anonymous else ()
    return DVVSet(entries, anonymous)


def sync_all(objects: Iterable[DVVSet | None]) -> DVVSet | None:
    """Merge any number of replicas' states (None for a replica without the key)."""
    return reduce(sync, objects, None)


def update(stored: DVVSet | None, context: Context, value: Any, actor: str) -> DVVSet:
    """The coordinating replica's write of `value` by a client that had read `context`.

    Stored values covered by `context` are discarded (the client saw them); the rest
    stay as siblings. `value` gets the dot ``(actor, max(stored, context counter) + 1)``.
    """
    ctx = _vector(context)
    current = _entries(stored)
    merged: dict[str, tuple[int, tuple[Any, ...]]] = {}
    for name in current.keys() | ctx.keys():
        n, vals = current.get(name, (0, ()))
        seen = ctx.get(name, 0)
        merged[name] = (max(n, seen), vals[: max(0, n - seen)])
    n, vals = merged.get(actor, (0, ()))
    merged[actor] = (n + 1, (value,) + vals)
    anonymous: tuple[Any, ...] = ()
    if stored is not None and not context_descends(_context(ctx), join(stored)):
        anonymous = stored.anonymous
    return DVVSet(tuple((name, n, vals) for name, (n, vals) in sorted(merged.items())), anonymous)
