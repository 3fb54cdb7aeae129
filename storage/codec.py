"""The versioned record format of stored objects (`DVVSet` and `Crdt`), with no pickle.

A record is one format byte followed by its payload:

- ``3`` (`FORMAT_DVV`): a `DVVSet` as MessagePack ``[entries, anonymous]``, an entry
  ``[actor, counter, [value, ...]]``;
- ``4`` (`FORMAT_TYPED`): a `Crdt` (an lww or CRDT key) as ``[type, state, applied]``,
  the state in the shape `storage.crdts` documents for its type;
- ``1`` and ``2``: the first release's pickles of the same tuples, still read (never
  written) so that a data dir of that release opens; a record is rewritten in today's
  format the next time its key is written.

Decoding is schema'd: every payload is decoded by `msgspec` into the declared tuple types
of its format and type (no ``Any`` anywhere), so a record cannot run code, cannot name a
class, and cannot make the decoder allocate more than a small multiple of its own size
(msgspec preallocates no large container from a declared length). A record that does not
fit its schema, or breaks a `DVVSet`'s invariants, raises `CodecError`. The legacy pickles
are read by an unpickler that resolves no global and refuses, before unpickling, a memo
index larger than the record (pickle's memo opcodes let a few bytes ask for a memo table of
any size).

Stored values are atoms: bytes, str, int, float, bool or None (clients store bytes; None is
a delete). Anything else is refused when encoding, so a write can never succeed and then be
unreadable. The same records travel between nodes (``actors.protocol``'s object fields).
"""

from __future__ import annotations

import io
import pickle
import pickletools
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Union

import msgspec

from storage.crdts import TYPES, Crdt, normalize
from storage.versions import DVVSet

__all__ = ["CodecError", "FORMAT_CRDT", "FORMAT_DVV", "FORMAT_TYPED", "FORMAT_V1", "decode_object", "dumps",
           "encode_object", "safe_loads"]

FORMAT_V1: int = 1
"""Format byte of the first release's DVVSet records (a pickle of builtin tuples): read only."""
FORMAT_CRDT: int = 2
"""Format byte of the first release's CRDT records (a pickle): read only."""
FORMAT_DVV: int = 3
"""Format byte of a DVVSet record: MessagePack."""
FORMAT_TYPED: int = 4
"""Format byte of a CRDT (or lww register) record: MessagePack."""

_DVV_BYTE, _TYPED_BYTE = bytes((FORMAT_DVV,)), bytes((FORMAT_TYPED,))
_new_tuple = tuple.__new__  # builds a named tuple from a checked tuple, as its _make does
_ATOMS = frozenset({bytes, str, int, float, bool, type(None)})


class CodecError(ValueError):
    """A record could not be encoded or decoded."""


# --- schemas: what each payload must be (msgspec decodes tuples, so states stay canonical) --------
#
# msgspec cannot tell str from bytes inside one union, so an atom's place is decoded as ``Any``
# and its type checked after (`_check_atoms`): a container there would come back as a list.

Vector = tuple[tuple[str, int], ...]
Dots = Vector
Atoms = tuple[Any, ...]
Deferred = tuple[tuple[Vector, Atoms], ...]
Register = Union[tuple[tuple[int, int, str], Any], None]
CounterEntries = tuple[tuple[str, int, int, int], ...]
SetStore = tuple[tuple[Any, Dots], ...]
RegisterEntries = tuple[tuple[str, int, tuple[int, int, str], Any], ...]
Applied = tuple[tuple[str, int, tuple[Union[str, int], ...]], ...]


def _decoder(schema: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(schema)


_DVV = _decoder(tuple[tuple[tuple[str, int, Atoms], ...], Atoms])
_TYPED = _decoder(tuple[str, msgspec.Raw, Applied])
_STATES: dict[str, msgspec.msgpack.Decoder[Any]] = {
    "counter": _decoder(tuple[CounterEntries, CounterEntries]),
    "set": _decoder(tuple[Vector, SetStore, Deferred]),
    "register": _decoder(Register),
    "flag": _decoder(tuple[Vector, Dots, tuple[tuple[Vector, tuple[str, ...]], ...]]),
    "map": _decoder(tuple[Vector, tuple[tuple[str, str, Dots, msgspec.Raw], ...],
                          tuple[tuple[Vector, tuple[Atoms, ...]], ...]]),
}
_FIELDS: dict[str, msgspec.msgpack.Decoder[Any]] = {
    "counter": _decoder(CounterEntries),
    "set": _decoder(SetStore),
    "register": _decoder(RegisterEntries),
    "flag": _decoder(Dots),
}
_ELEMENTS = frozenset({int, str, bytes})
_REGISTER_VALUES = frozenset({bytes, str, int, type(None)})
_encode = msgspec.msgpack.Encoder().encode


def _check_atoms(values: Any, allowed: frozenset[type], what: str) -> None:
    for value in values:
        if type(value) not in allowed:
            raise CodecError(f"corrupt record: a {what} of type {type(value).__name__}")


# --- encoding --------------------------------------------------------------------------------------

def encode_object(obj: DVVSet | Crdt) -> bytes:
    """Encode a stored object as a record: the format byte, then the payload."""
    try:
        if isinstance(obj, Crdt):
            # States come from `storage.crdts`, which checks every operation's values; a register's
            # value is checked here too, as the one a hand-made object could get wrong cheaply.
            if obj.type == "register" and obj.state is not None:
                _check_stored(obj.state[1], _REGISTER_VALUES)
            return _TYPED_BYTE + _encode((obj.type, obj.state, obj.applied))
        entries, anonymous = obj.entries, obj.anonymous
        for _, _, vals in entries:
            for value in vals:
                _check_stored(value, _ATOMS)
        for value in anonymous:
            _check_stored(value, _ATOMS)
        return _DVV_BYTE + _encode((entries, anonymous))
    except (TypeError, OverflowError) as exc:   # a state holding something msgpack has no type for
        raise CodecError(f"cannot store a value of type {_culprit(exc)}: only builtin atoms and tuples") from exc


def _check_stored(value: Any, allowed: frozenset[type]) -> None:
    if type(value) not in allowed:
        kinds = ", ".join(sorted(t.__name__ for t in allowed)).replace("NoneType", "None")
        raise CodecError(f"cannot store a value of type {type(value).__qualname__}: only {kinds}")


def _culprit(exc: BaseException) -> str:
    text = str(exc)
    return text.split("type: ", 1)[1].rstrip("'\"") if "type: " in text else text


# --- decoding --------------------------------------------------------------------------------------

def decode_object(data: bytes) -> DVVSet | Crdt:
    """Decode a record of any format; raise `CodecError` if it is not one."""
    if not data:
        raise CodecError("empty record")
    fmt = data[0]
    try:
        if fmt == FORMAT_DVV:
            return _to_dvvset(_DVV.decode(memoryview(data)[1:]))
        if fmt == FORMAT_TYPED:
            type_, state, applied = _TYPED.decode(memoryview(data)[1:])
            return _to_crdt(type_, state, applied)
    except msgspec.DecodeError as exc:
        raise CodecError(f"corrupt record: {exc}") from exc
    if fmt == FORMAT_V1 or fmt == FORMAT_CRDT:
        return _decode_legacy(fmt, data)
    raise CodecError(f"unknown record format byte {fmt}")


def _to_crdt(type_: str, raw_state: msgspec.Raw, applied: tuple) -> Crdt:
    decoder = _STATES.get(type_)
    if decoder is None:
        raise CodecError(f"corrupt record: unknown CRDT type {type_!r}")
    state = decoder.decode(raw_state)
    if type_ == "register":
        if state is not None:
            _check_atoms((state[1],), _REGISTER_VALUES, "register value")
    elif type_ == "set":
        _check_atoms((e for e, _ in state[1]), _ELEMENTS, "set element")
        _check_atoms((e for _, targets in state[2] for e in targets), _ELEMENTS, "set element")
    elif type_ == "map":
        vector, fields, deferred = state
        decoded = []
        for name, ftype, presence, raw in fields:
            field_decoder = _FIELDS.get(ftype)
            if field_decoder is None:
                raise CodecError(f"corrupt record: unknown map field type {ftype!r}")
            inner = field_decoder.decode(raw)
            if ftype == "set":
                _check_atoms((e for e, _ in inner), _ELEMENTS, "set element")
            elif ftype == "register":
                _check_atoms((e[3] for e in inner), _REGISTER_VALUES, "register value")
            decoded.append((name, ftype, presence, inner))
        _check_atoms((part for _, targets in deferred for target in targets for part in target), _ELEMENTS,
                     "removal target")
        state = (vector, tuple(decoded), deferred)
    return _new_tuple(Crdt, (type_, state, applied))


def _to_dvvset(payload: Any) -> DVVSet:
    """Check a decoded payload against the DVVSet invariants and build the DVVSet."""
    entries, anonymous = payload
    previous: str | None = None
    for entry in entries:
        actor, counter, vals = entry
        if counter < 1 or len(vals) > counter or (previous is not None and actor <= previous):
            raise CodecError(f"corrupt record: entry {entry!r:.200} breaks the DVVSet invariants")
        _check_atoms(vals, _ATOMS, "value")
        previous = actor
    _check_atoms(anonymous, _ATOMS, "value")
    return _new_tuple(DVVSet, payload)


# --- the first release's pickled records -------------------------------------------------------------

class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of its allow-list, `_allowed` (empty by default).

    Every global a pickle names (GLOBAL, STACK_GLOBAL, INST, EXT*) is resolved through
    `find_class`; with no global, a pickle can only build builtin objects.
    """

    _allowed: Mapping[tuple[str, str], Any] = MappingProxyType({})

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_memo(data: bytes) -> None:
    """Refuse a pickle whose memo indexes exceed its length: the unpickler sizes its memo table from
    the largest index, so ``LONG_BINPUT 0x4E4387CC`` in twelve bytes would take gigabytes."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in _MEMO_PUTS and int(arg) > len(data):
                raise pickle.UnpicklingError(f"memo index {arg} in a pickle of {len(data)} bytes")
    except (ValueError, TypeError) as exc:   # genops' own complaint about malformed opcodes
        raise pickle.UnpicklingError(str(exc)) from exc


def dumps(obj: Any) -> bytes:
    """Pickle `obj` with protocol 5 (tests make legacy records with it)."""
    return pickle.dumps(obj, protocol=5)


def safe_loads(data: bytes, allowed: Mapping[tuple[str, str], type] | None = None) -> Any:
    """Unpickle `data`, admitting only the ``(module, name)`` globals in `allowed` (none by default),
    after refusing a memo index larger than the data. Raises `pickle.UnpicklingError`."""
    data = bytes(data)
    _check_memo(data)
    unpickler = _RestrictedUnpickler(io.BytesIO(data))
    if allowed:
        unpickler._allowed = allowed
    return unpickler.load()


def _decode_legacy(fmt: int, data: bytes) -> DVVSet | Crdt:
    try:
        payload = safe_loads(memoryview(data)[1:])
    except Exception as exc:  # a corrupt pickle can fail in many ways
        raise CodecError(f"corrupt record payload: {exc!r}") from exc
    if fmt == FORMAT_CRDT:
        if not (type(payload) is tuple and len(payload) == 3 and type(payload[0]) is str
                and payload[0] in TYPES and type(payload[2]) is tuple):
            raise CodecError("corrupt record: not a (type, state, applied) CRDT")
        return normalize(*payload)
    if not (type(payload) is tuple and len(payload) == 2 and type(payload[0]) is tuple
            and type(payload[1]) is tuple):
        raise CodecError("corrupt record: payload is not an (entries, anonymous) pair")
    for entry in payload[0]:
        if not (type(entry) is tuple and len(entry) == 3 and type(entry[0]) is str and type(entry[1]) is int
                and type(entry[2]) is tuple):
            raise CodecError(f"corrupt record: bad entry {entry!r:.200}")
    return _to_dvvset(payload)
