"""Tests of the versioned record format and of the restricted unpickler."""

from __future__ import annotations

import collections
import io
import os
import pickle
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from storage import codec
from storage.codec import FORMAT_CRDT, FORMAT_V1, CodecError, decode_object, dumps, encode_object, safe_loads
from storage.crdts import Crdt
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


class _Named(str):
    """A str subclass: pickling it needs a global, so the codec must refuse it."""


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


# --- fast paths: the same records, the same refusals --------------------------------------------

RECORDS_OF_THE_PREVIOUS_ENCODER = {  # written by the codec before its fast paths: stores hold these
    "siblings": (
        DVVSet((("n1.3f9a1c2e", 2, (b"v2", b"v1")), ("n2.00ff00ff", 1, (None,))), (b"anon",)),
        ("0180059541000000000000008c0b6e312e3366396131633265944b0243027632944302763194869487948c0b6e322e30306666"
         "30306666944b014e8594879486944304616e6f6e94859486942e"),
    ),
    "mixed values": (
        DVVSet((("a", 5, ([1, 2.5], {"k": (True,)}, frozenset({3}), bytearray(b"x"), "s")),), ()),
        ("018005953e000000000000008c0161944b05285d94284b01474004000000000000657d948c016b9488859473284b0391949601"
         "0000000000000078948c0173947494879485942986942e"),
    ),
    "lww": (
        Crdt("register", ((1700000000000, 3, "n1"), b"\x00\xffvalue")),
        ("028005952c000000000000008c087265676973746572948a060068e5cf8b014b038c026e31948794430700ff76616c756594"
         "86942987942e"),
    ),
    "counter": (
        Crdt("counter", (("n1.3f9a1c2e", 1, 5, 0),), (("op-1", 1700000000000),)),
        ("0280059539000000000000008c07636f756e74657294288c0b6e312e3366396131633265944b014b054b00749485948c046f70"
         "2d31948a060068e5cf8b018694859487942e"),
    ),
    "set": (
        Crdt("set", ((("n1.3f9a1c2e", 1),), (("x", (("n1.3f9a1c2e", 1),)),)), (("op-2", 1700000000001),)),
        ("0280059542000000000000008c03736574948c0b6e312e3366396131633265944b01869485948c01789468014b018694859486"
         "94859486948c046f702d32948a060168e5cf8b018694859487942e"),
    ),
}


@pytest.mark.parametrize("name", sorted(RECORDS_OF_THE_PREVIOUS_ENCODER))
def test_records_of_the_previous_encoder_decode_and_plain_ones_are_written_alike(name: str) -> None:
    obj, record = RECORDS_OF_THE_PREVIOUS_ENCODER[name]
    assert decode_object(bytes.fromhex(record)) == obj
    assert decode_object(encode_object(obj)) == obj
    if name in ("siblings", "lww"):  # the fast path writes what the checking pickler wrote
        assert encode_object(obj).hex() == record


def _slow_encoding(obj: DVVSet | Crdt) -> bytes:
    """A record made by the checking pickler alone, as before the fast paths."""
    if isinstance(obj, Crdt):
        fmt, payload = FORMAT_CRDT, (obj.type, obj.state, tuple(obj.applied))
    else:
        fmt, payload = FORMAT_V1, (tuple((a, n, tuple(vals)) for a, n, vals in obj.entries), tuple(obj.anonymous))
    buffer = io.BytesIO(bytes((fmt,)))
    buffer.seek(1)
    codec._BuiltinsPickler(buffer, protocol=5).dump(payload)
    return buffer.getvalue()


@no_deadline
@given(dvvsets(), st.one_of(st.none(), st.binary(max_size=120), st.text(max_size=8), st.integers()),
       st.lists(st.tuples(st.text(max_size=4), st.integers(0, 2**50)), max_size=3))
def test_the_fast_encoders_agree_with_the_checking_pickler(obj: DVVSet, value: Any, applied: list) -> None:
    register = Crdt("register", ((1_700_000_000_000, 2, "n1"), value), tuple(sorted(applied)))
    for made in (obj, register, Crdt("register", None)):
        assert decode_object(encode_object(made)) == decode_object(_slow_encoding(made)) == made


@pytest.mark.parametrize("bad", [
    Crdt("register", ((1, 2, "n"), collections.OrderedDict())),
    Crdt("register", ((1, 2, "n"), 1j)),
    Crdt("register", ((1, 2, _Named("n")), b"v")),
    Crdt("register", ((1, 2, "n"), b"v"), ((_Named("op"), 1),)),
    Crdt("counter", ((_Named("a"), 1, 1, 0),)),
    DVVSet(((_Named("a"), 1, (b"v",)),)),
    DVVSet((("a", 1, (b"v",)),), (_Named("anon"),)),
])
def test_an_object_holding_a_non_builtin_is_still_refused_when_encoding(bad: Any) -> None:
    with pytest.raises(CodecError, match="cannot store a value of type"):
        encode_object(bad)


def test_a_record_naming_any_global_is_refused_whatever_the_opcode() -> None:
    exploits = [
        dumps(update(None, (), b"x", "a")),                      # STACK_GLOBAL of an allowed-on-the-wire class
        b"cos\nsystem\n(S'echo pwned'\ntR.",                     # protocol 0 GLOBAL + REDUCE
        b"(S'echo pwned'\nios\nsystem\n.",                       # INST
        pickle.dumps(collections.OrderedDict(), protocol=2),     # GLOBAL via protocol 2
    ]
    for data in exploits:
        with pytest.raises(pickle.UnpicklingError, match="is not allowed"):
            safe_loads(data)
        for fmt in (FORMAT_V1, FORMAT_CRDT):
            with pytest.raises(CodecError, match="corrupt record payload"):
                decode_object(bytes([fmt]) + data)


def test_an_allow_list_given_to_one_call_is_not_left_behind_for_the_next() -> None:
    obj = update(None, (), b"x", "a")
    allowed = {("storage.versions", "DVVSet"): DVVSet}
    assert safe_loads(dumps(obj), allowed) == obj
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(dumps(obj))
    with pytest.raises(TypeError):
        codec._RestrictedUnpickler._allowed[("os", "system")] = os.system  # type: ignore[index]
    assert safe_loads(memoryview(dumps((1, b"x")))) == (1, b"x")


def test_decoding_accepts_any_bytes_like_record() -> None:
    obj = update(None, (), b"x", "a")
    record = encode_object(obj)
    for data in (record, bytearray(record), memoryview(record)):
        assert decode_object(data) == obj
