"""Tests of the versioned record format and of the restricted unpickler."""

from __future__ import annotations

import collections
import os
import pickle
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from storage.codec import FORMAT_V1, CodecError, decode_object, dumps, encode_object, safe_loads
from storage.versions import DVVSet, update

no_deadline = settings(deadline=None)  # shared CI machines are slow at times; timing is not the property
stored_values = st.one_of(st.none(), st.binary(max_size=40))


@st.composite
def dvvsets(draw: st.DrawFn) -> DVVSet:
    """Well-formed DVVSets: sorted actors, at most `counter` values per entry."""
    actors = draw(st.lists(st.text(min_size=1, max_size=8), unique=True, max_size=5))
    entries = []
    for actor in sorted(actors):
        counter = draw(st.integers(min_value=1, max_value=2**40))
        vals = draw(st.lists(stored_values, max_size=min(counter, 4)))
        entries.append((actor, counter, tuple(vals)))
    return DVVSet(tuple(entries), tuple(draw(st.lists(stored_values, max_size=2))))


@no_deadline
@given(dvvsets())
def test_every_dvvset_survives_an_encode_decode_round_trip(obj: DVVSet) -> None:
    data = encode_object(obj)
    assert data[0] == FORMAT_V1
    assert decode_object(data) == obj


def test_builtin_values_of_every_kind_round_trip() -> None:
    value = (b"x", "s", 1, 2**100, 1.5, True, None, [1], {"k": (2,)}, {3}, frozenset({4}), bytearray(b"y"))
    obj = update(None, (), value, "a")
    assert decode_object(encode_object(obj)) == obj


@pytest.mark.parametrize("value", [collections.OrderedDict(), 1j, os.system, DVVSet(())])
def test_a_value_that_needs_a_global_is_refused_when_encoding(value: Any) -> None:
    with pytest.raises(CodecError, match="cannot store a value of type"):
        encode_object(update(None, (), value, "a"))


def test_empty_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(CodecError, match="empty record"):
        decode_object(b"")


def test_an_unknown_format_byte_is_refused() -> None:
    data = encode_object(update(None, (), b"x", "a"))
    with pytest.raises(CodecError, match="unknown record format byte 7"):
        decode_object(bytes([7]) + data[1:])


@no_deadline
@given(dvvsets(), st.data())
def test_truncated_data_is_refused(obj: DVVSet, data: st.DataObject) -> None:
    record = encode_object(obj)
    cut = data.draw(st.integers(min_value=1, max_value=len(record) - 1))
    with pytest.raises(CodecError):
        decode_object(record[:cut])


@pytest.mark.parametrize(
    "payload",
    [
        (("a", 1, (b"x",)),),  # not an (entries, anonymous) pair
        ((("a", 0, ()),), ()),  # zero counter
        ((("a", 1, (b"x", b"y")),), ()),  # more values than counter
        ((("b", 1, ()), ("a", 1, ())), ()),  # actors out of order
        ((("a", "1", ()),), ()),  # counter of the wrong type
    ],
)
def test_a_payload_that_breaks_the_dvvset_invariants_is_refused(payload: Any) -> None:
    with pytest.raises(CodecError, match="corrupt record"):
        decode_object(bytes([FORMAT_V1]) + dumps(payload))


class _Exploit:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_a_pickle_that_references_os_system_is_refused_by_safe_loads() -> None:
    data = dumps(_Exploit())
    with pytest.raises(pickle.UnpicklingError, match="is not allowed"):
        safe_loads(data)
    with pytest.raises(CodecError, match="corrupt record payload"):
        decode_object(bytes([FORMAT_V1]) + data)


def test_safe_loads_admits_exactly_the_classes_of_its_allow_list() -> None:
    obj = update(None, (), b"x", "a")
    allowed = {("storage.versions", "DVVSet"): DVVSet}
    assert safe_loads(dumps(obj), allowed) == obj
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(dumps(obj))
    assert safe_loads(dumps((1, b"x", None))) == (1, b"x", None)
