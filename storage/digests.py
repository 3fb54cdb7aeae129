"""Digests for the anti-entropy trees (`storage.merkle`): key hashes and object hashes.

`key_hash` is the SHA-1 of a key's UTF-8 bytes as an int, the ring's hash too.

`object_hash` is a 64-bit keyed blake2b digest of a key and its object; 0 means "no
object" and is never returned for one. It is canonical: objects that compare equal
(``==``) get equal digests on every node and in every process, whatever the hash
seed or how the object was built. Its input is a tag byte naming the encoding, then
(lengths are 8-byte big-endian, counters and clocks 8-byte signed, text UTF-8 with
lone surrogates passed through, so every field is delimited and the input decodes
back to one object):

- ``R``, an lww register holding a bytes-like value (every lww write): the lengths of
  the key, the node and the ``applied`` repr, the ``wall_ms`` and ``logical`` of the
  timestamp, then the key, the node, ``repr(applied)`` (nothing when empty) and the
  raw value;
- ``D``, a `DVVSet` whose values are all bytes, str or None (what clients store): the
  key, the number of entries and each entry's actor, counter and values, then the
  anonymous values; a value is ``b`` and its bytes, ``s`` and its text, or ``N``;
- ``C``, any other `Crdt`: ``repr((key, type, state, applied))``, CRDT states being
  canonical by construction (sorted builtin tuples of exact types);
- ``E``, any other DVVSet (numbers, containers...): `_encode`, a canonical,
  self-delimiting encoding that gives numbers that are equal (``1``, ``1.0``,
  ``True``) one encoding, sorts dict items and set members, and so on.

The leading tag keeps the encodings apart: a register and a DVVSet holding the same
value never share an input. Objects of other types equal to plain ones (bytearray or
memoryview values, str subclasses, ``True`` or ``1.0`` as a counter) are normalised
first, so they take the encoding of the plain object they equal; a counter or clock
beyond 64 bits takes ``E`` or ``C``, whatever object it is in. The common objects
cost a few struct packs and one blake2b, with no repr of their values.

The format is versioned by the blake2b personalisation `_PERSON`; all nodes of a
cluster must run the same version (trees of different versions never match).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

from storage.crdts import Crdt
from storage.versions import DVVSet

__all__ = ["key_hash", "object_hash"]

_PERSON = b"leaderless.aae3"  # blake2b personalisation: a version tag for the hash format
_BLAKE = hashlib.blake2b(digest_size=8, person=_PERSON)  # copied per digest: cheaper than a new one
_U64 = struct.Struct(">Q")
_LENGTH = struct.Struct(">Q")
_FLOAT = struct.Struct(">d")
_R_HEAD = struct.Struct(">cQQqqQ")      # "R", key length, node length, wall_ms, logical, applied length
_TAG_LENGTH = struct.Struct(">cQ")      # a tag byte and a length
_TWO = struct.Struct(">QQ")             # 1 entry, its actor's length
_COUNTER = struct.Struct(">qQ")         # an entry's counter and its number of values
_ONE_BYTES = struct.Struct(">qQcQ")     # counter, 1 value, "b", its length
_NO_VALUES = _LENGTH.pack(0)            # no anonymous values
_SHA1 = hashlib.sha1
_FROM_BYTES = int.from_bytes
_BYTES_LIKE = (bytes, bytearray, memoryview)


def key_hash(key: str) -> int:
    """SHA-1 of the key's UTF-8 bytes as an int, the same as ``Ring.key_hash``."""
    return _FROM_BYTES(_SHA1(key.encode()).digest(), "big")


def object_hash(key: str, obj: DVVSet | Crdt | None) -> int:
    """A 64-bit digest of `key` and `obj`; 0 for None (no object), never 0 otherwise.

    Equal objects (``==``) give equal hashes on every node and in every process.
    Raises `TypeError` for DVVSet values that are not builtins.
    """
    if obj is None:
        return 0
    digest = _BLAKE.copy()
    if isinstance(obj, Crdt):
        digest.update(_register_body(key, obj) or _crdt_body(key, obj))
    else:
        body = _dvvset_body(key, obj)
        if body is None:
            obj = _normalised(obj)
            body = _dvvset_body(key, obj)
        if body is not None:
            digest.update(body)
        else:
            digest.update(b"E")
            _encode(key, digest.update)
            digest.update(_LENGTH.pack(len(obj.entries)))
            for actor, counter, vals in obj.entries:
                _encode(actor, digest.update)
                _encode(counter, digest.update)
                _encode(tuple(vals), digest.update)
            _encode(tuple(obj.anonymous), digest.update)
    return _U64.unpack(digest.digest())[0] or 1  # keep 0 for "absent"


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # injective, lone surrogates included


def _register_body(key: str, obj: Crdt) -> bytes | None:
    """The ``R`` input of an lww register holding a bytes-like value; None for any other Crdt."""
    state = obj.state
    if obj.type != "register" or type(state) is not tuple or len(state) != 2:
        return None
    ts, value = state
    if not (isinstance(value, _BYTES_LIKE) and isinstance(ts, tuple) and len(ts) == 3):
        return None
    wall, logical, node = ts                        # a Timestamp unpacks as its plain tuple
    if type(wall) is not int or type(logical) is not int or type(node) is not str:
        return None
    if type(value) is not bytes:
        value = bytes(value)                        # equal to its bytes: one encoding
    applied = _utf8(repr(tuple(obj.applied))) if obj.applied else b""
    raw_key, raw_node = _utf8(key), _utf8(node)
    try:
        head = _R_HEAD.pack(b"R", len(raw_key), len(raw_node), wall, logical, len(applied))
    except struct.error:                            # beyond 64 bits: the C encoding
        return None
    return b"".join((head, raw_key, raw_node, applied, value))


def _crdt_body(key: str, obj: Crdt) -> bytes:
    """The ``C`` input: the repr of a Crdt, canonical by construction."""
    return b"C" + _utf8(repr((key, obj.type, obj.state, tuple(obj.applied))))


def _dvvset_body(key: str, obj: DVVSet) -> bytes | None:
    """The ``D`` input when every actor is a str, every counter an int within 64 bits and every
    value bytes, str or None, all of exact types; None otherwise (normalise, or the ``E`` encoding)."""
    entries, anonymous = obj.entries, obj.anonymous
    raw_key = _utf8(key)
    try:
        if len(entries) == 1 and not anonymous:     # the usual object: one writer, one value
            actor, counter, vals = entries[0]
            if len(vals) == 1 and type(vals[0]) is bytes and type(actor) is str and type(counter) is int:
                value, raw_actor = vals[0], _utf8(actor)
                return b"".join((_TAG_LENGTH.pack(b"D", len(raw_key)), raw_key, _TWO.pack(1, len(raw_actor)),
                                 raw_actor, _ONE_BYTES.pack(counter, 1, b"b", len(value)), value, _NO_VALUES))
        parts = [_TAG_LENGTH.pack(b"D", len(raw_key)), raw_key, _LENGTH.pack(len(entries))]
        for actor, counter, vals in entries:
            if type(actor) is not str or type(counter) is not int:
                return None
            raw_actor = _utf8(actor)
            parts += (_LENGTH.pack(len(raw_actor)), raw_actor, _COUNTER.pack(counter, len(vals)))
            if not _values(vals, parts):
                return None
        parts.append(_LENGTH.pack(len(anonymous)))
        if not _values(anonymous, parts):
            return None
    except struct.error:                            # a counter beyond 64 bits: the E encoding
        return None
    return b"".join(parts)


def _values(vals: Any, parts: list[bytes]) -> bool:
    """Append the ``D`` encoding of each value; False if one is not exactly bytes, str or None."""
    for value in vals:
        kind = type(value)
        if kind is bytes:
            parts += (_TAG_LENGTH.pack(b"b", len(value)), value)
        elif kind is str:
            raw = _utf8(value)
            parts += (_TAG_LENGTH.pack(b"s", len(raw)), raw)
        elif value is None:
            parts.append(b"N")
        else:
            return False
    return True


def _normalised(obj: DVVSet) -> DVVSet:
    """An equal DVVSet of exact types where possible: bytes-likes as bytes, str subclasses as str,
    integral numbers as int counters. Other values are left for the ``E`` encoding."""
    return DVVSet(tuple((_exact(actor), _counter(counter), tuple(_exact(v) for v in vals))
                        for actor, counter, vals in obj.entries),
                  tuple(_exact(v) for v in obj.anonymous))


def _exact(value: Any) -> Any:
    if isinstance(value, _BYTES_LIKE):
        return bytes(value)
    if isinstance(value, str):
        return str.__str__(value)
    return value


def _counter(value: Any) -> Any:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    return value


def _encode(value: Any, write: Callable[[bytes], Any]) -> None:
    """Feed a canonical, self-delimiting encoding of a builtin value to `write`.

    Values that compare equal encode equally: numbers that are equal as numbers
    (``1``, ``1.0``, ``True``) share one encoding, bytes and bytearrays one, sets
    and frozensets one, tuple subclasses (named tuples) encode as tuples, and dict
    items and set members are sorted by their encoding, so neither insertion
    order nor ``PYTHONHASHSEED`` matters. Lists and tuples stay distinct, as they
    are unequal. Other types raise `TypeError` (the codec refuses them too).
    """
    if value is None:
        write(b"N")
    elif isinstance(value, float) and not value.is_integer():  # non-integral floats, infinities, NaN
        write(b"f" + _FLOAT.pack(value))
    elif isinstance(value, (int, float)):  # bool and integral floats are their int
        number = int(value)
        raw = number.to_bytes(number.bit_length() // 8 + 1, "big", signed=True)
        write(b"i" + _LENGTH.pack(len(raw)) + raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        write(b"s" + _LENGTH.pack(len(raw)) + raw)
    elif isinstance(value, _BYTES_LIKE):
        data = bytes(value)
        write(b"b" + _LENGTH.pack(len(data)) + data)
    elif isinstance(value, (tuple, list)):
        write((b"t" if isinstance(value, tuple) else b"l") + _LENGTH.pack(len(value)))
        for item in value:
            _encode(item, write)
    elif isinstance(value, (set, frozenset)):
        write(b"S" + _LENGTH.pack(len(value)))
        for raw in sorted(_encoded(item) for item in value):
            write(raw)
    elif isinstance(value, dict):
        write(b"d" + _LENGTH.pack(len(value)))
        for raw_key, raw_value in sorted((_encoded(k), _encoded(v)) for k, v in value.items()):
            write(raw_key)
            write(raw_value)
    else:
        raise TypeError(f"cannot hash a value of type {type(value).__qualname__}: only builtin types")


def _encoded(value: Any) -> bytes:
    parts: list[bytes] = []
    _encode(value, parts.append)
    return b"".join(parts)
