"""How the fields that are not plain data travel: stored objects, errors and replies' results.

``messages`` marks them (`RECORD`, `RECORD_BYTES`, `RECORDS`, `ERROR`, `RESULT`);
`to_wire` turns a message's marked fields into plain data before it is encoded, and
`from_wire` turns them back after a frame was decoded (and type-checked) by msgspec,
raising `ProtocolError` for anything that does not fit. So a stored object crosses the
network as its record (``storage.codec``), an exception as ``(class name, args)`` of a
class of ``actors.errors``, and a result as a small tagged array:

    ["n"]                       None
    ["c", context]              a causal context (a write's answer)
    ["g", values, context]      a GetResult
    ["v", value, context]       a Value (a CRDT read): a set as ["s", [elements]], a map as
                                ["m", [[name, type, value], ...]], anything else as ["a", atom]
    ["p", name, type, n, r, w]  a BucketProps
    ["l", values, tombstone, version, siblings]   a LocalObject (values as in "v")
    ["e", class name, args]     an exception (a failed request's answer)
    ["j", data]                 plain data (status, configuration, a ring version)
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any

import msgspec

from storage.codec import CodecError, decode_object, encode_object

from . import errors
from .errors import LeaderlessError, ProtocolError
from .messages import (ERROR, RECORD, RECORD_BYTES, RECORDS, RESULT, WIRE_TYPES, BucketProps, GetResult,
                       LocalObject, Message, Value, WireField)

_ERRORS: dict[str, type[LeaderlessError]] = {
    name: cls for name in errors.__all__
    if isinstance(cls := getattr(errors, name), type) and issubclass(cls, LeaderlessError)}
_replace = msgspec.structs.replace


def _marked(cls: type[Message]) -> tuple[tuple[str, str], ...]:
    """The fields of ``cls`` that carry a `WireField` marker, with its kind."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found = []
    for field in msgspec.structs.fields(cls):
        for meta in getattr(hints[field.name], "__metadata__", ()):
            if isinstance(meta, WireField):
                found.append((field.name, meta.kind))
    return tuple(found)


MARKED: dict[type, tuple[tuple[str, str], ...]] = {
    cls: marked for cls in WIRE_TYPES if (marked := _marked(cls))}
"""Per wire message class with such fields: ``(field name, kind)``; a class not listed has none."""


# --- stored objects ---------------------------------------------------------------------------

def _record(obj: Any) -> bytes | None:
    return obj if obj is None or type(obj) is bytes else encode_object(obj)


def _object(data: Any) -> Any:
    if data is None:
        return None
    try:
        return decode_object(data)
    except CodecError as exc:
        raise ProtocolError(f"a stored object that does not decode: {exc}") from exc


def _records(items: Any) -> Any:
    if type(items) is dict:
        return {key: _record(obj) for key, obj in items.items()}
    return [(key, _record(obj)) for key, obj in items]


def _objects(items: Any) -> Any:
    if type(items) is dict:
        return {key: _object(data) for key, data in items.items()}
    return [(key, _object(data)) for key, data in items]


# --- errors -----------------------------------------------------------------------------------

def error_to_wire(exc: BaseException | None) -> tuple[str, tuple[Any, ...]] | None:
    if exc is None:
        return None
    name = type(exc).__name__
    if _ERRORS.get(name) is not type(exc):
        return ("LeaderlessError", (f"{name}: {exc}",))
    return (name, tuple(exc.args))


def error_from_wire(data: Any) -> BaseException | None:
    if data is None:
        return None
    try:
        name, args = data
        return _ERRORS[name](*args)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"not an error of leaderless: {data!r:.200}") from exc


# --- results ----------------------------------------------------------------------------------

def _value_to_wire(value: Any) -> list[Any]:
    if type(value) in (frozenset, set):
        return ["s", list(value)]
    if type(value) is dict:
        return ["m", [[name, ftype, _value_to_wire(field)] for (name, ftype), field in value.items()]]
    return ["a", value]


def _value_from_wire(data: Any) -> Any:
    kind, body = data
    if kind == "s":
        return frozenset(body)
    if kind == "m":
        return {(name, ftype): _value_from_wire(field) for name, ftype, field in body}
    if kind == "a":
        return body
    raise ValueError(f"unknown value kind {kind!r}")


def _context(data: Any) -> tuple[tuple[str, int], ...]:
    return tuple((actor, counter) for actor, counter in data)


def result_to_wire(result: Any) -> list[Any]:
    kind = type(result)
    if result is None:
        return ["n"]
    if kind is tuple:
        return ["c", result]
    if kind is GetResult:
        return ["g", result.values, result.context]
    if kind is Value:
        return ["v", _value_to_wire(result.value), result.context]
    if kind is BucketProps:
        return ["p", *result]
    if kind is LocalObject:
        return ["l", [_value_to_wire(v) for v in result.values], result.tombstone, result.version, result.siblings]
    if isinstance(result, BaseException):
        return ["e", *error_to_wire(result)]    # type: ignore[misc]
    return ["j", result]


def result_from_wire(data: Any) -> Any:
    try:
        kind = data[0]
        if kind == "n":
            return None
        if kind == "c":
            return _context(data[1])
        if kind == "g":
            return GetResult(list(data[1]), _context(data[2]))
        if kind == "v":
            return Value(_value_from_wire(data[1]), _context(data[2]))
        if kind == "p":
            return BucketProps(*data[1:])
        if kind == "l":
            return LocalObject([_value_from_wire(v) for v in data[1]], data[2], dict(data[3]), data[4])
        if kind == "e":
            return error_from_wire(data[1:])
        if kind == "j":
            return data[1]
    except ProtocolError:
        raise
    except (TypeError, ValueError, IndexError) as exc:
        raise ProtocolError(f"a malformed result: {data!r:.200}") from exc
    raise ProtocolError(f"a result of unknown kind: {data!r:.200}")


# --- whole messages ---------------------------------------------------------------------------

_TO: dict[str, Callable[[Any], Any]] = {
    RECORD.kind: _record, RECORD_BYTES.kind: _record, RECORDS.kind: _records,
    ERROR.kind: error_to_wire, RESULT.kind: result_to_wire,
}
_FROM: dict[str, Callable[[Any], Any]] = {
    RECORD.kind: _object, RECORD_BYTES.kind: lambda data: data, RECORDS.kind: _objects,
    ERROR.kind: error_from_wire, RESULT.kind: result_from_wire,
}


def to_wire(message: Message) -> Message:
    """``message`` with its marked fields as plain data (itself when it has none)."""
    marked = MARKED.get(type(message))
    if marked is None:
        return message
    return _replace(message, **{name: _TO[kind](getattr(message, name)) for name, kind in marked})


def from_wire(message: Message) -> Message:
    """A decoded ``message`` with its marked fields turned back into objects; ``ProtocolError`` if they do not."""
    marked = MARKED.get(type(message))
    if marked is None:
        return message
    return _replace(message, **{name: _FROM[kind](getattr(message, name)) for name, kind in marked})


__all__ = ["MARKED", "error_from_wire", "error_to_wire", "from_wire", "result_from_wire", "result_to_wire",
           "to_wire"]
