"""Tests of the server-merged CRDTs: behaviours by example, then laws over random histories.

Random histories are built the way the cluster builds them: three replicas each
coordinate operations under their own actor id on their own state, merge any
state seen so far, and receive retries of operations they may already hold. A
model with explicit causal histories is the oracle: every operation is a unique
token, a state is the set of tokens it has seen plus its live data tagged with
tokens, and merging keeps what both sides hold or what the other side never saw.
The implementation must give the model's values with compressed version vectors
and canonical states.
"""

from __future__ import annotations

import itertools
import pickle
import re
from collections.abc import Callable, Iterator
from functools import reduce
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from storage.codec import dumps, safe_loads
from storage.crdts import (
    FIELD_TYPES,
    TYPES,
    WINDOW_MS,
    Crdt,
    CrdtError,
    apply,
    context,
    descends,
    equal,
    merge,
    new,
    value,
)
from storage.hlc import HybridClock, Timestamp

no_deadline = settings(deadline=None)  # shared CI machines are slow at times; timing is not the property
ACTORS = ("a", "b", "c")


def ts(wall_ms: int = 1000, logical: int = 0, node: str = "a") -> Timestamp:
    return Timestamp(wall_ms, logical, node)


_op_numbers = itertools.count(1)


def run_ops(obj: Crdt | None, type_: str, actor: str, *ops: tuple[Any, ...]) -> Crdt:
    """Apply operations in turn at one replica, each with a fresh id and timestamp."""
    for op in ops:
        number = next(_op_numbers)
        obj = apply(obj, type_, op, actor, f"op-{number}", ts(1000, number, actor))
    assert obj is not None
    return obj


def merge_all(*objs: Crdt | None) -> Crdt | None:
    return reduce(merge, objs, None)


# --- counter ---------------------------------------------------------------------------------

def test_plus_five_on_one_replica_and_minus_two_on_another_merge_to_three() -> None:
    left = run_ops(None, "counter", "a", ("increment", 5))
    right = run_ops(None, "counter", "b", ("decrement", 2))
    assert value(merge(left, right)) == value(merge(right, left)) == 3


def test_a_counter_keeps_one_entry_per_actor() -> None:
    mine = run_ops(None, "counter", "a", ("increment", 1), ("increment", 2), ("decrement", 1))
    obj = merge(mine, run_ops(None, "counter", "b", ("increment", 4)))
    assert obj is not None
    assert obj.state == (("a", 3, 3, 1), ("b", 1, 4, 0))
    assert value(obj) == 6 and context(obj) == (("a", 3), ("b", 1))


# --- set -------------------------------------------------------------------------------------

def test_a_concurrent_add_and_remove_of_the_same_element_keep_it() -> None:
    both = run_ops(None, "set", "a", ("add", "milk"))
    removed = run_ops(both, "set", "a", ("remove", "milk"))
    re_added = run_ops(both, "set", "b", ("add", "milk"))  # b had seen the first add too
    assert value(merge(removed, re_added)) == value(merge(re_added, removed)) == frozenset({"milk"})


def test_an_element_removed_after_being_seen_does_not_come_back_when_states_merge() -> None:
    phone = run_ops(None, "set", "a", ("add_all", ("milk", "eggs")))
    laptop = phone  # the other device read the same cart from another replica
    laptop = run_ops(laptop, "set", "b", ("remove", "milk"))
    merged = merge(phone, laptop)  # the stale replica's state comes back through repair
    assert value(merged) == frozenset({"eggs"})
    # What a union of plain sets (the Dynamo paper's cart) would have done:
    naive_phone, naive_laptop = {"milk", "eggs"}, {"milk", "eggs"} - {"milk"}
    assert naive_phone | naive_laptop == {"milk", "eggs"}  # milk is back: the anomaly


def test_removing_an_absent_element_changes_no_value_but_moves_the_context() -> None:
    obj = run_ops(None, "set", "a", ("add", 1))
    after = run_ops(obj, "set", "a", ("remove", 2), ("remove_all", (3, b"x")))
    assert value(after) == value(obj) == frozenset({1})
    assert descends(after, obj) and not descends(obj, after)


def test_a_set_after_adding_and_removing_1000_elements_holds_only_its_version_vector() -> None:
    obj = new("set")
    for i in range(1000):
        obj = run_ops(obj, "set", ACTORS[i % 3], ("add", f"item-{i}"))
        obj = run_ops(obj, "set", ACTORS[(i + 1) % 3], ("remove", f"item-{i}"))
    assert value(obj) == frozenset()
    vector, elements = obj.state
    assert elements == ()
    assert sum(n for _, n in vector) == 2000 and len(vector) == 3
    assert len(pickle.dumps(obj.state)) < 60


def test_set_elements_of_different_types_are_distinct_and_sorted() -> None:
    obj = run_ops(None, "set", "a", ("add_all", ("1", 1, b"1")))
    assert value(obj) == frozenset({"1", 1, b"1"})
    assert [e for e, _ in obj.state[1]] == [1, "1", b"1"]


# --- flag ------------------------------------------------------------------------------------

def test_a_concurrent_enable_and_disable_leave_the_flag_enabled() -> None:
    enabled = run_ops(None, "flag", "a", ("enable",))
    disabled = run_ops(enabled, "flag", "b", ("disable",))
    enabled_again = run_ops(enabled, "flag", "c", ("enable",))
    assert value(disabled) is False and value(merge(enabled, disabled)) is False
    assert value(merge(disabled, enabled_again)) is value(merge(enabled_again, disabled)) is True


# --- register --------------------------------------------------------------------------------

def test_the_write_with_the_greater_timestamp_wins_whatever_the_merge_order() -> None:
    older = apply(None, "register", ("assign", b"old"), "a", None, ts(5000, 0, "a"))
    newer = apply(None, "register", ("assign", b"new"), "b", None, ts(5000, 1, "b"))
    assert value(merge(older, newer)) == value(merge(newer, older)) == b"new"
    assert value(apply(newer, "register", ("assign", b"late"), "a", None, ts(4000, 0, "a"))) == b"new"
    assert context(newer) == (("@hlc", 5000 << 16 | 1),)


def test_a_causally_later_write_wins_over_a_write_from_a_clock_an_hour_ahead() -> None:
    now = [1_700_000_000.0]
    fast, correct = HybridClock("a", lambda: now[0] + 3600), HybridClock("b", lambda: now[0])
    first = apply(None, "register", ("assign", "from the fast clock"), "a", None, fast.now())
    now[0] += 1
    stamp = correct.after(Timestamp(*first.state[0]))  # b read a's write before writing
    second = apply(first, "register", ("assign", "after reading it"), "b", None, stamp)
    assert value(merge(first, second)) == value(merge(second, first)) == "after reading it"


def test_a_register_never_assigned_reads_none() -> None:
    assert value(new("register")) is None and context(new("register")) == ()
    assert value(None) is None


# --- map -------------------------------------------------------------------------------------

def test_a_map_updates_fields_of_different_types() -> None:
    obj = run_ops(None, "map", "a",
                  ("update", "views", "counter", ("increment", 3)),
                  ("update", "tags", "set", ("add_all", ("red", "blue"))),
                  ("update", "name", "register", ("assign", "priya")),
                  ("update", "vip", "flag", ("enable",)),
                  ("update", "views", "set", ("add", "home")))  # same name, another type: another field
    assert value(obj) == {("views", "counter"): 3, ("tags", "set"): frozenset({"red", "blue"}),
                          ("name", "register"): "priya", ("vip", "flag"): True, ("views", "set"): frozenset({"home"})}


def test_removing_a_field_by_name_or_by_name_and_type() -> None:
    obj = run_ops(None, "map", "a", ("update", "x", "counter", ("increment", 1)), ("update", "x", "flag", ("enable",)),
                  ("update", "y", "flag", ("enable",)))
    assert set(value(run_ops(obj, "map", "b", ("remove", ("x", "flag"))))) == {("x", "counter"), ("y", "flag")}
    removed = run_ops(obj, "map", "b", ("remove", "x"))
    assert value(removed) == {("y", "flag"): True}
    assert value(merge(obj, removed)) == {("y", "flag"): True}  # the stale state does not bring x back


def test_an_update_concurrent_with_a_field_remove_keeps_the_field_reset_to_the_concurrent_updates() -> None:
    base = run_ops(None, "map", "a", ("update", "cart", "set", ("add_all", ("milk", "eggs"))),
                   ("update", "n", "counter", ("increment", 5)), ("update", "who", "register", ("assign", "a")))
    removed = run_ops(base, "map", "a", ("remove", "cart"), ("remove", "n"), ("remove", "who"))
    updated = run_ops(base, "map", "b", ("update", "cart", "set", ("add", "tea")),
                      ("update", "n", "counter", ("increment", 2)), ("update", "who", "register", ("assign", "b")))
    merged = merge(removed, updated)
    assert merged == merge(updated, removed)
    assert value(merged) == {("cart", "set"): frozenset({"tea"}), ("n", "counter"): 2, ("who", "register"): "b"}


def test_a_counter_field_incremented_on_the_replica_whose_increments_were_removed_keeps_its_running_total() -> None:
    """The documented imprecision of counter fields (Riak's embedded counters have it too)."""
    base = run_ops(None, "map", "a", ("update", "n", "counter", ("increment", 5)))
    removed = run_ops(base, "map", "b", ("remove", "n"))
    again = run_ops(base, "map", "a", ("update", "n", "counter", ("increment", 2)))
    assert value(merge(removed, again)) == {("n", "counter"): 7}


def test_a_disabled_flag_field_still_exists() -> None:
    obj = run_ops(None, "map", "a", ("update", "f", "flag", ("disable",)))
    assert value(obj) == {("f", "flag"): False}


# --- idempotent retries ----------------------------------------------------------------------

@pytest.mark.parametrize(("type_", "op", "expected"), [
    ("counter", ("increment", 4), 4),
    ("set", ("add", "milk"), frozenset({"milk"})),
    ("map", ("update", "n", "counter", ("increment", 4)), {("n", "counter"): 4}),
])
def test_an_operation_delivered_twice_counts_once_even_via_another_replica(
    type_: str, op: tuple[Any, ...], expected: Any
) -> None:
    first = apply(None, type_, op, "a", "retry-me", ts(1000, 0, "a"))
    assert apply(first, type_, op, "a", "retry-me", ts(1001, 0, "a")) is first
    elsewhere = merge(new(type_), first)  # the state reached replica b; then the retry did
    retried = apply(elsewhere, type_, op, "b", "retry-me", ts(1002, 0, "b"))
    assert retried is elsewhere
    assert value(merge(first, retried)) == expected


def test_operation_ids_are_forgotten_after_the_window() -> None:
    obj = apply(None, "counter", ("increment", 1), "a", "old", ts(1000, 0, "a"))
    obj = apply(obj, "counter", ("increment", 1), "a", "new", ts(1000 + WINDOW_MS + 1, 0, "a"))
    assert [op_id for op_id, _ in obj.applied] == ["new"]


def test_a_lagging_coordinator_stamps_its_id_no_older_than_the_newest_one_held() -> None:
    obj = apply(None, "counter", ("increment", 1), "a", "ahead", ts(10 * WINDOW_MS, 0, "a"))
    obj = apply(obj, "counter", ("increment", 1), "b", "behind", ts(1000, 0, "b"))
    assert dict(obj.applied) == {"ahead": 10 * WINDOW_MS, "behind": 10 * WINDOW_MS}


applied_lists = st.dictionaries(st.sampled_from("pqrstuvw"), st.integers(0, 3 * WINDOW_MS), max_size=6).map(
    lambda d: tuple(sorted(d.items())))


@no_deadline
@given(applied_lists, applied_lists, applied_lists)
def test_trimming_applied_ids_keeps_merge_associative(a: tuple, b: tuple, c: tuple) -> None:
    objs = [Crdt("counter", (), applied) for applied in (a, b, c)]
    x, y, z = (merge(o, new("counter")) for o in objs)  # trimmed as any merged state is
    assert merge(merge(x, y), z) == merge(x, merge(y, z)) == merge(merge(z, x), y)
    merged = merge(merge(x, y), z)
    assert merged is not None and list(merged.applied) == sorted(merged.applied)


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("type_", "op", "message"), [
    ("counter", ("increment", True), "int >= 0"),
    ("counter", ("increment", -1), "int >= 0"),
    ("counter", ("increment", 1.0), "int >= 0"),
    ("counter", ("add", 1), "no operation 'add'"),
    ("counter", ("increment",), "takes 1 argument"),
    ("counter", "increment", "non-empty tuple"),
    ("counter", (["increment"], 1), "no operation"),
    ("set", ("add", 1.5), "str, bytes or int"),
    ("set", ("add", True), "str, bytes or int"),
    ("set", ("add_all", "abc"), "tuple of elements"),
    ("register", ("assign", [1]), "bytes, str, int or None"),
    ("flag", ("enable", 1), "takes 0 argument"),
    ("map", ("update", "f", "map", ("enable",)), "field's type"),
    ("map", ("update", 3, "flag", ("enable",)), "field name"),
    ("map", ("update", "f", "flag", ("increment", 1)), "flag has no operation"),
    ("map", ("remove", ("f", "nope")), "field name or a (name, type) pair"),
    ("map", ("clear",), "map has no operation"),
])
def test_bad_operations_raise_a_clear_error(type_: str, op: Any, message: str) -> None:
    with pytest.raises(CrdtError, match=re.escape(message)):
        apply(None, type_, op, "a", "op", ts())


def test_type_mismatches_and_unknown_types_raise() -> None:
    counter = run_ops(None, "counter", "a", ("increment", 1))
    with pytest.raises(CrdtError, match="is a counter, not a set"):
        apply(counter, "set", ("add", 1), "a", None, ts())
    with pytest.raises(CrdtError, match="cannot merge a counter with a set"):
        merge(counter, new("set"))
    with pytest.raises(CrdtError, match="unknown CRDT type"):
        new("hyperloglog")
    with pytest.raises(CrdtError, match="ts must be a Timestamp"):
        apply(None, "counter", ("increment", 1), "a", None, (1, 2))  # type: ignore[arg-type]
    assert not equal(counter, new("set"))


def test_none_is_the_absent_object() -> None:
    obj = run_ops(None, "set", "a", ("add", 1))
    assert merge(None, obj) is obj and merge(obj, None) is obj and merge(None, None) is None
    assert descends(obj, None) and not descends(None, obj) and descends(None, new("set"))
    assert equal(None, new("map")) and equal(None, None) and not equal(None, obj)
    assert context(None) == () and value(None) is None


# --- random histories ------------------------------------------------------------------------

ELEMENTS = st.sampled_from((1, 2, "x", "y", b"x"))
NAMES = st.sampled_from(("f", "g"))
counter_ops = st.tuples(st.sampled_from(("increment", "decrement")), st.integers(0, 5))
set_ops = st.one_of(
    st.tuples(st.sampled_from(("add", "remove")), ELEMENTS),
    st.tuples(st.sampled_from(("add_all", "remove_all")), st.lists(ELEMENTS, max_size=3).map(tuple)),
)
register_ops = st.tuples(st.just("assign"), st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(("x", b"x"))))
flag_ops = st.sampled_from((("enable",), ("disable",)))
FIELD_OPS = {"counter": counter_ops, "set": set_ops, "register": register_ops, "flag": flag_ops}
map_ops = st.one_of(
    *(st.tuples(st.just("update"), NAMES, st.just(ftype), inner) for ftype, inner in FIELD_OPS.items()),
    st.tuples(st.just("remove"), st.one_of(NAMES, st.tuples(NAMES, st.sampled_from(FIELD_TYPES)))),
)
OPS = {**FIELD_OPS, "map": map_ops}

# Operations whose effects commute: any order, any replicas, any merges give one value.
commuting_map_ops = st.one_of(
    st.tuples(st.just("update"), NAMES, st.just("counter"), counter_ops),
    st.tuples(st.just("update"), NAMES, st.just("set"), st.tuples(st.just("add"), ELEMENTS)),
    st.tuples(st.just("update"), NAMES, st.just("register"), register_ops),
    st.tuples(st.just("update"), NAMES, st.just("flag"), st.just(("enable",))),
)
COMMUTING_OPS = {
    "counter": counter_ops,
    "set": st.tuples(st.just("add"), ELEMENTS),
    "register": register_ops,
    "flag": st.just(("enable",)),
    "map": commuting_map_ops,
}


Model = tuple[frozenset[int], frozenset[tuple[Any, ...]]]  # (tokens seen, live atoms; an atom's last item is its token)
EMPTY_MODEL: Model = (frozenset(), frozenset())


class Oracle:
    """Explicit causal histories: each operation is a token; nothing is compressed or forgotten."""

    def __init__(self, type_: str) -> None:
        self.type = type_
        self.amounts: dict[int, int] = {}  # counter: token -> signed amount
        self.assigns: dict[int, tuple[Timestamp, Any]] = {}  # register: token -> (timestamp, value)

    @staticmethod
    def merge(a: Model, b: Model) -> Model:
        (seen_a, live_a), (seen_b, live_b) = a, b
        live = (live_a & live_b) | {x for x in live_a - live_b if x[-1] not in seen_b} | {
            x for x in live_b - live_a if x[-1] not in seen_a}
        return seen_a | seen_b, frozenset(live)

    def apply(self, model: Model, op: tuple, actor: str, stamp: Timestamp, token: int) -> Model:
        seen, live = model
        if self.type == "counter":
            self.amounts[token] = op[1] if op[0] == "increment" else -op[1]
        elif self.type == "register":
            self.assigns[token] = (stamp, op[1])
        else:
            live = frozenset(self._field_op(set(live), None, self.type, op, actor, stamp, token))
        return seen | {token}, live

    def _field_op(self, live: set[tuple[Any, ...]], field: Any, type_: str, op: tuple, actor: str,
                  stamp: Timestamp, token: int) -> set[tuple[Any, ...]]:
        def drop(kind: str, match: Callable[[tuple[Any, ...]], bool] = lambda atom: True) -> set[tuple[Any, ...]]:
            return {x for x in live if not (x[0] == kind and x[1] == field and match(x))}

        if type_ == "map":
            if op[0] == "remove":
                gone = (lambda f: f[0] == op[1]) if isinstance(op[1], str) else (lambda f: f == tuple(op[1]))
                return {x for x in live if not gone(x[1])}
            key = (op[1], op[2])
            live = {x for x in live if not (x[0] == "present" and x[1] == key)} | {("present", key, token)}
            return self._field_op(live, key, op[2], op[3], actor, stamp, token)
        if type_ == "set":
            touched = {op[1]} if op[0] in ("add", "remove") else set(op[1])
            live = drop("element", lambda x: x[2] in touched)
            return live | {("element", field, e, token) for e in touched} if op[0].startswith("add") else live
        if type_ == "flag":
            return drop("flag") | ({("flag", field, token)} if op[0] == "enable" else set())
        if type_ == "counter":  # a field's counter: one running total per actor, under its latest token
            mine = [x for x in live if x[0] == "count" and x[1] == field and x[2] == actor]
            inc, dec = sum(x[3] for x in mine), sum(x[4] for x in mine)
            inc, dec = (inc + op[1], dec) if op[0] == "increment" else (inc, dec + op[1])
            return drop("count", lambda x: x[2] == actor) | {("count", field, actor, inc, dec, token)}
        assert type_ == "register"  # a field's register: an assignment replaces older ones it has seen
        current = [x for x in live if x[0] == "assign" and x[1] == field]
        if all(stamp > x[2] for x in current):
            return drop("assign") | {("assign", field, stamp, op[1], token)}
        return live

    def value(self, model: Model) -> Any:
        seen, live = model
        if self.type == "counter":
            return sum(self.amounts[t] for t in seen)
        if self.type == "register":
            return max((self.assigns[t] for t in seen), key=lambda a: a[0], default=(None, None))[1]
        if self.type == "map":
            return {key: self._field_value(live, key, key[1]) for kind, key, *_ in live if kind == "present"}
        return self._field_value(live, None, self.type)

    @staticmethod
    def _field_value(live: frozenset[tuple[Any, ...]], field: Any, type_: str) -> Any:
        atoms = [x for x in live if x[1] == field]
        if type_ == "set":
            return frozenset(x[2] for x in atoms if x[0] == "element")
        if type_ == "flag":
            return any(x[0] == "flag" for x in atoms)
        if type_ == "counter":
            return sum(x[3] - x[4] for x in atoms if x[0] == "count")
        assigns = [x for x in atoms if x[0] == "assign"]
        return max(assigns, key=lambda x: x[2])[3] if assigns else None


Step = tuple[str, str, int, Any]
Seen = list[tuple[Crdt, Model]]


def steps(ops: st.SearchStrategy[tuple]) -> st.SearchStrategy[list[Step]]:
    return st.lists(
        st.tuples(
            st.sampled_from(("op", "op", "merge", "retry")),
            st.sampled_from(ACTORS),
            st.integers(0, 1000),  # which earlier state or operation: index modulo the count
            ops,
        ),
        max_size=30,
    )


def run(type_: str, history: list[Step], oracle: Oracle) -> tuple[Seen, dict[str, Crdt]]:
    """Play a history on three replicas; every state reached, with its model, and the replicas' last states."""
    current: dict[str, tuple[Crdt, Model]] = {actor: (new(type_), EMPTY_MODEL) for actor in ACTORS}
    seen: Seen = [(new(type_), EMPTY_MODEL)]
    sent: list[tuple[str, tuple]] = []  # (op_id, op) of every operation so far
    for token, (kind, actor, pick, op) in enumerate(history, start=1):
        obj, model = current[actor]
        stamp = Timestamp(pick, token, actor)  # random wall clocks; the logical part keeps stamps distinct
        if kind == "op":
            updated = apply(obj, type_, op, actor, f"op-{token}", stamp)
            assert descends(updated, obj)
            assert context(updated) != context(obj) or type_ == "register"  # a losing assignment moves nothing
            current[actor] = (updated, oracle.apply(model, op, actor, stamp, token))
            sent.append((f"op-{token}", op))
        elif kind == "merge":
            other_obj, other_model = seen[pick % len(seen)]
            merged = merge(obj, other_obj)
            assert merged is not None
            current[actor] = (merged, oracle.merge(model, other_model))
        elif sent:
            op_id, op = sent[pick % len(sent)]
            if any(applied_id == op_id for applied_id, _ in obj.applied):  # this replica has the first attempt
                assert apply(obj, type_, op, actor, op_id, stamp) is obj
        seen.append(current[actor])
    return seen, {actor: state for actor, (state, _) in current.items()}


@st.composite
def histories(draw: st.DrawFn, type_: str) -> tuple[Seen, dict[str, Crdt], Oracle]:
    oracle = Oracle(type_)
    seen, last = run(type_, draw(steps(OPS[type_])), oracle)
    return seen, last, oracle


picks = st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 1000)), min_size=1, max_size=8)
each_type = pytest.mark.parametrize("type_", TYPES)
# Each example plays a 30-step history and checks many states of it; 30 histories per type and
# property keep the whole file well under 15 s on a shared two-core machine.
history_settings = settings(deadline=None, max_examples=30)


def triples(seen: Seen, chosen: list[tuple[int, int, int]]) -> Iterator[tuple[Crdt, Crdt, Crdt]]:
    for i, j, k in chosen:
        yield seen[i % len(seen)][0], seen[j % len(seen)][0], seen[k % len(seen)][0]


@each_type
@history_settings
@given(data=st.data())
def test_every_state_has_the_value_of_an_explicit_causal_history(type_: str, data: st.DataObject) -> None:
    seen, last, oracle = data.draw(histories(type_))
    for obj, model in seen:
        assert value(obj) == oracle.value(model)
    everything = reduce(Oracle.merge, (model for _, model in seen))
    assert value(merge_all(*last.values(), *(obj for obj, _ in seen))) == oracle.value(everything)


@each_type
@history_settings
@given(data=st.data(), chosen=picks)
def test_merge_is_commutative_associative_and_idempotent(type_: str, data: st.DataObject,
                                                         chosen: list[tuple[int, int, int]]) -> None:
    seen, _, _ = data.draw(histories(type_))
    for a, b, c in triples(seen, chosen):
        assert merge(a, b) == merge(b, a)
        assert merge(merge(a, b), c) == merge(a, merge(b, c))
        assert merge(a, a) == a and merge(merge(a, b), b) == merge(a, b)


@each_type
@history_settings
@given(data=st.data(), chosen=picks)
def test_a_merge_descends_both_sides_and_descends_means_merging_changes_nothing(
    type_: str, data: st.DataObject, chosen: list[tuple[int, int, int]]
) -> None:
    seen, _, _ = data.draw(histories(type_))
    for a, b, _ in triples(seen, chosen):
        merged = merge(a, b)
        assert merged is not None
        assert descends(merged, a) and descends(merged, b)
        assert descends(a, b) == (merged.state == a.state)
        assert equal(a, b) == (descends(a, b) and descends(b, a))


@each_type
@history_settings
@given(data=st.data())
def test_states_with_the_same_history_are_equal(type_: str, data: st.DataObject) -> None:
    seen, _, _ = data.draw(histories(type_))
    by_model: dict[Model, Any] = {}
    for obj, model in seen:
        assert by_model.setdefault(model, obj.state) == obj.state
        assert safe_loads(dumps(obj.state)) == obj.state  # builtins only: no global needed to load it


@st.composite
def groupings(draw: st.DrawFn, objs: list[Crdt]) -> Crdt | None:
    """Merge ``objs`` in a random order as a random binary tree."""
    order = draw(st.permutations(objs))

    def tree(items: list[Crdt]) -> Crdt | None:
        if len(items) == 1:
            return items[0]
        cut = draw(st.integers(1, len(items) - 1))
        return merge(tree(items[:cut]), tree(items[cut:]))

    return tree(list(order))


@each_type
@history_settings
@given(data=st.data())
def test_merging_states_in_any_order_and_grouping_gives_one_state(type_: str, data: st.DataObject) -> None:
    seen, last, _ = data.draw(histories(type_))
    objs = list(last.values()) + [obj for obj, _ in data.draw(st.lists(st.sampled_from(seen), max_size=3))]
    assert data.draw(groupings(objs)) == data.draw(groupings(objs)) == merge_all(*objs)


def expected_value(type_: str, ops: list[tuple[tuple, Timestamp]]) -> Any:
    """The value of commuting operations, computed without any causality."""
    if type_ == "counter":
        return sum(n if name == "increment" else -n for (name, n), _ in ops)
    if type_ == "set":
        return frozenset(e for (_, e), _ in ops)
    if type_ == "flag":
        return bool(ops)
    if type_ == "register":
        return max(ops, key=lambda o: o[1])[0][1] if ops else None
    fields: dict[tuple[str, str], list[tuple[tuple, Timestamp]]] = {}
    for (_, name, ftype, inner), stamp in ops:
        fields.setdefault((name, ftype), []).append((inner, stamp))
    return {key: expected_value(key[1], inner_ops) for key, inner_ops in fields.items()}


@each_type
@history_settings
@given(data=st.data())
def test_commuting_operations_give_one_value_whatever_their_order_replicas_and_merges(
    type_: str, data: st.DataObject
) -> None:
    history = data.draw(steps(COMMUTING_OPS[type_]))
    _, last = run(type_, history, Oracle(type_))
    ops = [(op, Timestamp(pick, token, actor))
           for token, (kind, actor, pick, op) in enumerate(history, start=1) if kind == "op"]
    assert value(merge_all(*last.values())) == expected_value(type_, ops)


def test_a_hot_key_remembers_only_the_newest_operation_ids() -> None:
    from storage import crdts
    from storage.hlc import Timestamp
    obj = None
    for i in range(crdts.MAX_APPLIED + 200):
        obj = crdts.apply(obj, "counter", ("increment", 1), "a", f"op{i:05d}", Timestamp(1_000 + i, 0, "a"))
    assert crdts.value(obj) == crdts.MAX_APPLIED + 200
    assert len(obj.applied) == crdts.MAX_APPLIED
    assert min(wall for _, wall in obj.applied) == 1_200                  # the oldest 200 were dropped
    again = crdts.apply(obj, "counter", ("increment", 1), "a", "op01199", Timestamp(5_000, 0, "a"))
    assert crdts.value(again) == crdts.value(obj)                         # a recent retry still counts once


@given(parts=st.lists(st.dictionaries(st.sampled_from([f"id{i}" for i in range(12)]), st.integers(0, 30),
                                      max_size=8), min_size=3, max_size=3))
def test_capping_the_operation_ids_keeps_merge_associative_and_commutative(parts) -> None:
    import storage.crdts as module
    saved = module.MAX_APPLIED
    module.MAX_APPLIED = 4
    try:
        a, b, c = (module._trim(p) for p in parts)
        assert all(len(x) <= 4 for x in (a, b, c))
        merge = module._merge_applied
        assert merge(merge(a, b), c) == merge(a, merge(b, c))
        assert merge(a, b) == merge(b, a)
        assert merge(a, a) == a
    finally:
        module.MAX_APPLIED = saved
