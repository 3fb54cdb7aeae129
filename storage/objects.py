"""What a replica stores for one key, whatever the bucket's type.

A key of a ``siblings`` bucket holds a `DVVSet` (storage.versions); a key of an
``lww`` or CRDT bucket holds a `Crdt` (storage.crdts; ``lww`` keys are registers).
Replication, read repair, hints, handoff and anti-entropy only ever merge, compare
and fingerprint objects, so they go through this module and never care which kind
they move.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from typing import Any, Union

from . import crdts, versions
from .crdts import Crdt
from .versions import Context, DVVSet

__all__ = ["Obj", "context", "context_descends", "descends", "equal", "is_tombstone", "live_values", "merge",
           "merge_all"]

Obj = Union[DVVSet, Crdt]


def merge(a: Obj | None, b: Obj | None) -> Obj | None:
    """Merge two replicas' objects (commutative, associative, idempotent)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, DVVSet) and isinstance(b, DVVSet):
        return versions.sync(a, b)
    if isinstance(a, Crdt) and isinstance(b, Crdt):
        return crdts.merge(a, b)
    raise TypeError(f"cannot merge a {type(a).__name__} with a {type(b).__name__}")


def merge_all(objects: Iterable[Obj | None]) -> Obj | None:
    return reduce(merge, objects, None)


def equal(a: Obj | None, b: Obj | None) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, DVVSet) and isinstance(b, DVVSet):
        return versions.equal(a, b)
    if isinstance(a, Crdt) and isinstance(b, Crdt):
        return crdts.equal(a, b)
    return False


def descends(a: Obj | None, b: Obj | None) -> bool:
    """``a`` already holds everything ``b`` holds."""
    if b is None:
        return True
    if a is None:
        return False
    if isinstance(a, DVVSet) and isinstance(b, DVVSet):
        return versions.descends(a, b)
    if isinstance(a, Crdt) and isinstance(b, Crdt):
        return crdts.descends(a, b)
    return False


def context(obj: Obj | None) -> Context:
    """A version vector that grows with every update of the object (sessions compare these)."""
    if obj is None:
        return ()
    if isinstance(obj, DVVSet):
        return versions.join(obj)
    return crdts.context(obj)


def context_descends(a: Context, b: Context) -> bool:
    return versions.context_descends(a, b)


def is_tombstone(obj: Obj | None) -> bool:
    """A delete that replicas keep until it is reaped: every sibling deleted, or a deleted LWW value."""
    if obj is None:
        return False
    if isinstance(obj, DVVSet):
        return all(v is None for v in obj.anonymous) and all(v is None for _, _, vals in obj.entries for v in vals)
    return obj.type == "register" and crdts.value(obj) is None


def live_values(obj: Obj | None) -> list[Any]:
    """The values a read returns: live siblings (``siblings``), the one value (``lww``/register)."""
    if obj is None:
        return []
    if isinstance(obj, DVVSet):
        return [v for v in versions.values(obj) if v is not None]
    if obj.type == "register":
        value = crdts.value(obj)
        return [] if value is None else [value]
    return [crdts.value(obj)]
