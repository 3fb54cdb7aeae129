"""The versioned on-disk record format of a `DVVSet`, and a restricted unpickler.

A record is one format byte followed by its payload. Format 1 (`FORMAT_V1`) is a
pickle (protocol 5) of the DVVSet turned into builtin tuples,
``((actor, counter, values), ...), anonymous)``, so decoding needs no globals at
all. Values must therefore be builtins (bytes, str, int, float, bool, None,
tuples, lists, dicts, sets, frozensets, bytearrays); anything else is refused
when encoding, so a write can never succeed and then be unreadable.

`safe_loads` is the only way bytes from disk or the network are unpickled: its
unpickler admits exactly the globals in an allow-list.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from typing import Any

from storage.crdts import TYPES, Crdt
from storage.versions import DVVSet

__all__ = ["CodecError", "FORMAT_CRDT", "FORMAT_V1", "decode_object", "dumps", "encode_object", "safe_loads"]

FORMAT_V1: int = 1
"""Format byte of records whose payload is a pickle of builtin tuples."""
FORMAT_CRDT: int = 2
"""Format byte of a CRDT (or lww) record: a pickle of ``(type, state, applied)`` builtins."""

_PROTOCOL = 5
_BUILTIN_TYPES: frozenset[type] = frozenset(
    {bytes, bytearray, str, int, float, bool, type(None), tuple, list, dict, set, frozenset}
)


class CodecError(ValueError):
    """A record could not be encoded or decoded."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of its allow-list."""

    def __init__(self, data: bytes, allowed: Mapping[tuple[str, str], type]) -> None:
        super().__init__(io.BytesIO(data))
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


class _BuiltinsPickler(pickle.Pickler):
    """A pickler that refuses every object needing a global to be rebuilt."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) not in _BUILTIN_TYPES:
            raise CodecError(f"cannot store a value of type {type(obj).__qualname__}: only builtin types")
        return NotImplemented


def dumps(obj: Any) -> bytes:
    """Pickle `obj` with protocol 5."""
    return pickle.dumps(obj, protocol=_PROTOCOL)


def safe_loads(data: bytes, allowed: Mapping[tuple[str, str], type] | None = None) -> Any:
    """Unpickle `data`, admitting only the ``(module, name)`` globals in `allowed`.

    Raises `pickle.UnpicklingError` for any other global (none by default).
    """
    return _RestrictedUnpickler(data, allowed or {}).load()


def encode_object(obj: DVVSet | Crdt) -> bytes:
    """Encode a stored object as a record: the format byte, then the payload.

    Format 1 is a DVVSet (a siblings key); format 2 a `Crdt` (an lww or CRDT key):
    ``(type, state, applied)``, builtins only.
    """
    payload: Any
    if isinstance(obj, Crdt):
        fmt, payload = FORMAT_CRDT, (obj.type, obj.state, tuple(obj.applied))
    else:
        fmt, payload = FORMAT_V1, (tuple((actor, n, tuple(vals)) for actor, n, vals in obj.entries),
                                   tuple(obj.anonymous))
    buffer = io.BytesIO()
    buffer.write(bytes((fmt,)))
    _BuiltinsPickler(buffer, protocol=_PROTOCOL).dump(payload)
    return buffer.getvalue()


def decode_object(data: bytes) -> DVVSet | Crdt:
    """Decode a record made by `encode_object`; raise `CodecError` if it is not one."""
    if not data:
        raise CodecError("empty record")
    if data[0] not in (FORMAT_V1, FORMAT_CRDT):
        raise CodecError(f"unknown record format byte {data[0]}")
    try:
        payload = safe_loads(bytes(data[1:]))
    except Exception as exc:  # a corrupt pickle can fail in many ways
        raise CodecError(f"corrupt record payload: {exc!r}") from exc
    if data[0] == FORMAT_CRDT:
        if not (isinstance(payload, tuple) and len(payload) == 3 and payload[0] in TYPES
                and isinstance(payload[2], tuple)):
            raise CodecError("corrupt record: not a (type, state, applied) CRDT")
        return Crdt(*payload)
    return _to_dvvset(payload)


def _to_dvvset(payload: Any) -> DVVSet:
    """Check the shape of a decoded payload and build the DVVSet."""
    if not (isinstance(payload, tuple) and len(payload) == 2):
        raise CodecError("corrupt record: payload is not an (entries, anonymous) pair")
    entries, anonymous = payload
    if not (isinstance(entries, tuple) and isinstance(anonymous, tuple)):
        raise CodecError("corrupt record: entries and anonymous values must be tuples")
    previous: str | None = None
    for entry in entries:
        if not (isinstance(entry, tuple) and len(entry) == 3):
            raise CodecError(f"corrupt record: bad entry {entry!r}")
        actor, counter, vals = entry
        if not (isinstance(actor, str) and type(counter) is int and isinstance(vals, tuple)):
            raise CodecError(f"corrupt record: bad entry types in {entry!r}")
        if counter < 1 or len(vals) > counter or (previous is not None and actor <= previous):
            raise CodecError(f"corrupt record: entry {entry!r} breaks the DVVSet invariants")
        previous = actor
    return DVVSet(entries, anonymous)
