"""The versioned on-disk record format of a `DVVSet`, and a restricted unpickler.

A record is one format byte followed by its payload. Format 1 (`FORMAT_V1`) is a
pickle (protocol 5) of the DVVSet turned into builtin tuples,
``((actor, counter, values), ...), anonymous)``, so decoding needs no globals at
all. Values must therefore be builtins (bytes, str, int, float, bool, None,
tuples, lists, dicts, sets, frozensets, bytearrays); anything else is refused
when encoding, so a write can never succeed and then be unreadable.

`safe_loads` is the only way bytes from disk or the network are unpickled: its
unpickler admits exactly the globals in an allow-list.

The common objects (an lww register, a DVVSet of bytes, str or None values) skip the
checking pickler when encoding: a type test of each of their few parts shows there is
nothing it could refuse, and the C pickler then writes the same bytes. Decoding makes
no copy of the payload and no Python-level unpickler setup.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from storage.crdts import TYPES, Crdt
from storage.versions import DVVSet

__all__ = ["CodecError", "FORMAT_CRDT", "FORMAT_V1", "decode_object", "dumps", "encode_object", "safe_loads"]

FORMAT_V1: int = 1
"""Format byte of records whose payload is a pickle of builtin tuples."""
FORMAT_CRDT: int = 2
"""Format byte of a CRDT (or lww) record: a pickle of ``(type, state, applied)`` builtins."""

_PROTOCOL = 5
_V1_BYTE, _CRDT_BYTE = bytes((FORMAT_V1,)), bytes((FORMAT_CRDT,))
_CRDT_TYPES = frozenset(TYPES)
_new_tuple = tuple.__new__  # builds a named tuple from a checked tuple, as its _make does
_BUILTIN_TYPES: frozenset[type] = frozenset(
    {bytes, bytearray, str, int, float, bool, type(None), tuple, list, dict, set, frozenset}
)


class CodecError(ValueError):
    """A record could not be encoded or decoded."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of its allow-list, `_allowed`.

    The allow-list is empty unless an instance is given its own; there is no Python
    ``__init__``, so making one costs only the C unpickler's setup. Every global a pickle
    names (GLOBAL, STACK_GLOBAL, INST, EXT*) is resolved through `find_class`; with no
    global, a pickle can only build builtin objects.
    """

    _allowed: Mapping[tuple[str, str], Any] = MappingProxyType({})

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
    unpickler = _RestrictedUnpickler(io.BytesIO(data))
    if allowed:
        unpickler._allowed = allowed
    return unpickler.load()


def encode_object(obj: DVVSet | Crdt) -> bytes:
    """Encode a stored object as a record: the format byte, then the payload.

    Format 1 is a DVVSet (a siblings key); format 2 a `Crdt` (an lww or CRDT key):
    ``(type, state, applied)``, builtins only.
    """
    payload: Any
    if isinstance(obj, Crdt):
        fmt, payload = FORMAT_CRDT, (obj.type, obj.state, tuple(obj.applied))
        if _plain_register(payload):  # nothing the pickler could refuse: pickle in C, no hook per tuple
            return _CRDT_BYTE + pickle.dumps(payload, _PROTOCOL)
    else:
        if _plain_dvvset(obj.entries, obj.anonymous):
            return _V1_BYTE + pickle.dumps((obj.entries, obj.anonymous), _PROTOCOL)
        fmt, payload = FORMAT_V1, (tuple((actor, n, tuple(vals)) for actor, n, vals in obj.entries),
                                   tuple(obj.anonymous))
    buffer = io.BytesIO()
    buffer.write(bytes((fmt,)))
    _BuiltinsPickler(buffer, protocol=_PROTOCOL).dump(payload)
    return buffer.getvalue()


_ATOMS = frozenset({type(None), bool, int, float, bytes, str})
"""Exact builtin types holding no other object: `_BuiltinsPickler` accepts them, so a payload
of exact tuples of these is pickled as it would be, without its check per object."""


def _plain_register(payload: tuple[Any, Any, tuple[Any, ...]]) -> bool:
    """True for an lww register's payload made of tuples and `_ATOMS` only: ``(type, None or
    ((wall_ms, logical, node), value), ((op_id, wall_ms), ...))``."""
    kind, state, applied = payload
    if type(kind) is not str or kind != "register":
        return False
    if state is not None:
        if type(state) is not tuple or len(state) != 2:
            return False
        ts, value = state
        if type(value) not in _ATOMS or type(ts) is not tuple or len(ts) != 3:
            return False
        wall, logical, node = ts
        if type(wall) not in _ATOMS or type(logical) not in _ATOMS or type(node) not in _ATOMS:
            return False
    for item in applied:
        if type(item) is not tuple or len(item) != 2 or type(item[0]) not in _ATOMS or type(item[1]) not in _ATOMS:
            return False
    return True


def _plain_dvvset(entries: Any, anonymous: Any) -> bool:
    """True when a DVVSet is already its payload: tuples of ``(actor, counter, values)``
    tuples, values and anonymous values in tuples, every actor, counter and value an `_ATOMS`."""
    if type(entries) is not tuple or type(anonymous) is not tuple:
        return False
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 3:
            return False
        actor, counter, vals = entry
        if type(actor) not in _ATOMS or type(counter) not in _ATOMS or type(vals) is not tuple:
            return False
        for value in vals:
            if type(value) not in _ATOMS:
                return False
    for value in anonymous:
        if type(value) not in _ATOMS:
            return False
    return True


def decode_object(data: bytes) -> DVVSet | Crdt:
    """Decode a record made by `encode_object`; raise `CodecError` if it is not one."""
    if not data:
        raise CodecError("empty record")
    fmt = data[0]
    if fmt != FORMAT_V1 and fmt != FORMAT_CRDT:
        raise CodecError(f"unknown record format byte {fmt}")
    stream = io.BytesIO(data)  # shares the bytes: no copy of the payload
    stream.seek(1)
    try:
        payload = _RestrictedUnpickler(stream).load()
    except Exception as exc:  # a corrupt pickle can fail in many ways
        raise CodecError(f"corrupt record payload: {exc!r}") from exc
    if fmt == FORMAT_CRDT:
        if not (type(payload) is tuple and len(payload) == 3 and type(payload[0]) is str
                and payload[0] in _CRDT_TYPES and type(payload[2]) is tuple):
            raise CodecError("corrupt record: not a (type, state, applied) CRDT")
        return _new_tuple(Crdt, payload)
    return _to_dvvset(payload)


def _to_dvvset(payload: Any) -> DVVSet:
    """Check the shape of a decoded payload and build the DVVSet."""
    if not (type(payload) is tuple and len(payload) == 2):
        raise CodecError("corrupt record: payload is not an (entries, anonymous) pair")
    entries, anonymous = payload
    if not (type(entries) is tuple and type(anonymous) is tuple):
        raise CodecError("corrupt record: entries and anonymous values must be tuples")
    previous: str | None = None
    for entry in entries:  # a pickle without globals holds exact builtin types only: `type` tests suffice
        if not (type(entry) is tuple and len(entry) == 3):
            raise CodecError(f"corrupt record: bad entry {entry!r}")
        actor, counter, vals = entry
        if not (type(actor) is str and type(counter) is int and type(vals) is tuple):
            raise CodecError(f"corrupt record: bad entry types in {entry!r}")
        if counter < 1 or len(vals) > counter or (previous is not None and actor <= previous):
            raise CodecError(f"corrupt record: entry {entry!r} breaks the DVVSet invariants")
        previous = actor
    return _new_tuple(DVVSet, payload)
