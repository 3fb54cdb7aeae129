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
    NotPresent,
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
    assert obj.state == ((("a", 3, 3, 1), ("b", 1, 4, 0)), ())
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


def test_removing_an_element_the_replica_does_not_hold_without_a_context_is_refused() -> None:
    obj = run_ops(None, "set", "a", ("add", 1))
    with pytest.raises(NotPresent, match="2"):
        apply(obj, "set", ("remove", 2), "a", "op-x", ts())
    with pytest.raises(NotPresent, match="3"):
        apply(obj, "set", ("remove_all", (1, 3)), "a", "op-y", ts())
    with pytest.raises(NotPresent, match="'g'"):
        apply(run_ops(None, "map", "a", ("update", "f", "flag", ("enable",))), "map", ("remove", "g"), "a", None, ts())


def test_a_remove_with_a_context_that_covers_nothing_here_changes_no_value_but_moves_the_context() -> None:
    obj = run_ops(None, "set", "a", ("add", 1))
    after = apply(obj, "set", ("remove_all", (3, b"x")), "a", "op-z", ts(), context(obj))
    assert value(after) == value(obj) == frozenset({1})
    assert descends(after, obj) and not descends(obj, after)


def test_a_remove_built_on_a_replica_with_no_copy_takes_what_the_client_read_once_states_merge() -> None:
    # Issue 17's cart: the primary holds {soap, book, dvd}; a client read it, then its remove of
    # book was built by a fallback holding nothing. The remove waits there, deferred, and takes
    # book when the fallback's state meets the primary's; an add the client never saw stays.
    primary = run_ops(None, "set", "a", ("add_all", ("soap", "book", "dvd")))
    read = context(primary)
    fallback = apply(None, "set", ("remove", "book"), "b", "op-rm", ts(2000, 0, "b"), read)
    assert value(fallback) == frozenset() and fallback.state[2] != ()           # deferred, not lost
    later = run_ops(primary, "set", "c", ("remove", "dvd"), ("add", "milk"))      # the other side
    healed = merge(later, fallback)
    assert value(healed) == value(merge(fallback, later)) == frozenset({"soap", "milk"})
    assert healed is not None and healed.state[2] == ()                        # carried out, forgotten
    re_added = run_ops(primary, "set", "d", ("add", "book"))                   # not observed by the remove
    assert value(merge(fallback, re_added)) == frozenset({"soap", "book", "dvd"})


def test_a_deferred_field_removal_takes_only_the_observed_updates_of_the_field() -> None:
    base = run_ops(None, "map", "a", ("update", "tags", "set", ("add", "x")), ("update", "on", "flag", ("enable",)))
    seen = context(base)
    removed = apply(None, "map", ("remove", "tags"), "b", "op-r", ts(2000, 0, "b"), seen)
    disabled = apply(removed, "map", ("update", "on", "flag", ("disable",)), "b", "op-d", ts(2001, 0, "b"), seen)
    concurrent = run_ops(base, "map", "c", ("update", "tags", "set", ("add", "y")))
    assert value(merge_all(base, disabled, concurrent)) == {("tags", "set"): frozenset({"y"}),
                                                            ("on", "flag"): False}


def test_a_deferred_disable_leaves_an_enable_it_did_not_observe() -> None:
    on = run_ops(None, "flag", "a", ("enable",))
    off = apply(None, "flag", ("disable",), "b", "op-off", ts(2000, 0, "b"), context(on))
    assert value(merge(on, off)) is False
    again = run_ops(on, "flag", "c", ("enable",))
    assert value(merge_all(on, off, again)) is True


def test_a_retry_built_by_a_second_replica_counts_once_when_the_states_meet() -> None:
    first = apply(None, "counter", ("increment", 4), "a", "retry-me", ts(1000, 0, "a"))
    second = apply(None, "counter", ("increment", 4), "b", "retry-me", ts(1001, 0, "b"))   # a froze; b built it
    other = apply(None, "counter", ("decrement", 1), "c", "other", ts(1002, 0, "c"))
    assert value(merge_all(first, second, other)) == value(merge_all(other, second, first)) == 3
    merged = merge(first, second)
    assert merged is not None and merged.state[1] == (("b", 1, 4, 0),)       # the larger build is cancelled
    more = apply(merged, "counter", ("increment", 1), "b", "next", ts(1003, 0, "b"))
    assert value(merge(more, first)) == 5


def test_records_of_the_first_release_are_read_in_todays_shapes() -> None:
    from storage.crdts import normalize
    assert normalize("counter", (("a", 2, 3, 1),), (("op", 5),)) == Crdt("counter", ((("a", 2, 3, 1),), ()),
                                                                        (("op", 5, ()),))
    assert normalize("set", ((("a", 1),), ((1, (("a", 1),)),)), ()) == Crdt(
        "set", ((("a", 1),), ((1, (("a", 1),)),), ()), ())
    today = run_ops(None, "counter", "a", ("increment", 1))
    assert normalize(*today) == today


def test_a_set_after_adding_and_removing_1000_elements_holds_only_its_version_vector() -> None:
    obj = new("set")
    for i in range(1000):
        obj = run_ops(obj, "set", ACTORS[i % 3], ("add", f"item-{i}"))
        obj = run_ops(obj, "set", ACTORS[(i + 1) % 3], ("remove", f"item-{i}"))
    assert value(obj) == frozenset()
    vector, elements, deferred = obj.state
    assert elements == () and deferred == ()
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
    assert [op_id for op_id, _, _ in obj.applied] == ["new"]


def test_a_lagging_coordinator_stamps_its_id_no_older_than_the_newest_one_held() -> None:
    obj = apply(None, "counter", ("increment", 1), "a", "ahead", ts(10 * WINDOW_MS, 0, "a"))
    obj = apply(obj, "counter", ("increment", 1), "b", "behind", ts(1000, 0, "b"))
    assert {op_id: wall for op_id, wall, _ in obj.applied} == {"ahead": 10 * WINDOW_MS, "behind": 10 * WINDOW_MS}


BUILD = st.one_of(st.just(()), st.tuples(st.sampled_from("ab"), st.integers(1, 3), st.integers(0, 2), st.just(0)))
applied_lists = st.lists(st.tuples(st.sampled_from("pqrstuvw"), st.integers(0, 3 * WINDOW_MS), BUILD),
                         max_size=6).map(lambda items: tuple(sorted(set(items))))


@no_deadline
@given(applied_lists, applied_lists, applied_lists)
def test_trimming_applied_ids_keeps_merge_associative(a: tuple, b: tuple, c: tuple) -> None:
    # (A set: in a counter, two builds of one id meeting just as the window passes them may be
    # cancelled in one grouping and not in another; cancellations only grow, so replicas still
    # converge once every state has met every other. Within the window, merge is a join.)
    objs = [Crdt("set", ((), (), ()), applied) for applied in (a, b, c)]
    x, y, z = (merge(o, new("set")) for o in objs)  # trimmed as any merged state is
    assert merge(merge(x, y), z) == merge(x, merge(y, z)) == merge(merge(z, x), y)
    merged = merge(merge(x, y), z)
    assert merged is not None and list(merged.applied) == sorted(merged.applied)


@no_deadline
@given(applied_lists, applied_lists, applied_lists)
def test_a_counters_cancellations_converge_whatever_the_order_states_meet_in(a: tuple, b: tuple, c: tuple) -> None:
    objs = [Crdt("counter", ((), ()), applied) for applied in (a, b, c)]
    x, y, z = (merge(o, new("counter")) for o in objs)
    one, two, three = merge(merge(x, y), z), merge(x, merge(y, z)), merge(merge(z, x), y)
    assert merge(merge(one, two), three) == merge(three, merge(two, one)) == merge(merge(three, one), two)


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
    ("set", ("add", 1 << 63), "64-bit"),
    ("register", ("assign", -(1 << 63) - 1), "64-bit"),
    ("counter", ("increment", 1 << 64), "64-bit"),
    ("set", ("add_all", "abc"), "tuple of elements"),
    ("register", ("assign", [1]), "bytes, str, int or None"),
    ("flag", ("enable", 1), "takes 0 argument"),
    ("map", ("update", "f", "map", ("enable",)), "field's type"),
    ("map", ("update", 3, "flag", ("enable",)), "field name"),
    ("map", ("update", "f", "flag", ("increment", 1)), "flag has no operation"),
    ("map", ("remove", ("f", "nope")), "field name or a (name, type) pair"),
    ("set", ("add", 1.5), "str, bytes or int"),
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


Atom = tuple[Any, ...]
Kill = tuple[Any, ...]      # a remove carried as data: (what it targets, the tokens its client had seen)
Model = tuple[frozenset[int], frozenset[Atom], frozenset[Kill]]   # (tokens seen, live atoms, removes)
EMPTY_MODEL: Model = (frozenset(), frozenset(), frozenset())


class Oracle:
    """Explicit causal histories: each operation is a token; nothing is compressed or forgotten.

    A remove kills the atoms it targets whose token its client had seen (the tokens of the state
    it was based on), wherever and whenever they meet it; counters count each operation id once."""

    def __init__(self, type_: str) -> None:
        self.type = type_
        self.amounts: dict[str, int] = {}  # counter: op id -> signed amount
        self.op_ids: dict[int, str] = {}   # token -> op id
        self.assigns: dict[int, tuple[Timestamp, Any]] = {}  # register: token -> (timestamp, value)

    @staticmethod
    def _alive(atom: Atom, kills: frozenset[Kill]) -> bool:
        return not any(Oracle._kills(kill, atom) for kill in kills)

    @staticmethod
    def _kills(kill: Kill, atom: Atom) -> bool:
        target, observed = kill
        if atom[-1] not in observed:
            return False
        if target[0] == "field":                       # a field and everything in it
            name = target[1]
            key = atom[1]
            return isinstance(key, tuple) and (key[0] == name if len(target) == 2 else key == (name, target[2]))
        if target[0] == "element":
            return atom[0] == "element" and atom[1] == target[1] and atom[2] == target[2]
        return atom[0] == "flag" and atom[1] == target[1]

    @staticmethod
    def merge(a: Model, b: Model) -> Model:
        (seen_a, live_a, kills_a), (seen_b, live_b, kills_b) = a, b
        live = (live_a & live_b) | {x for x in live_a - live_b if x[-1] not in seen_b} | {
            x for x in live_b - live_a if x[-1] not in seen_a}
        kills = kills_a | kills_b
        return seen_a | seen_b, frozenset(x for x in live if Oracle._alive(x, kills)), kills

    def apply(self, model: Model, op: tuple, actor: str, stamp: Timestamp, token: int, op_id: str,
              observed: frozenset[int] | None = None) -> Model:
        seen, live, kills = model
        self.op_ids[token] = op_id
        if self.type == "counter":
            self.amounts[op_id] = op[1] if op[0] == "increment" else -op[1]
        elif self.type == "register":
            self.assigns[token] = (stamp, op[1])
        else:
            new_kills: set[Kill] = set()
            live = frozenset(self._field_op(set(live), None, self.type, op, actor, stamp, token, new_kills,
                                            seen if observed is None else observed))
            kills = kills | new_kills
            live = frozenset(x for x in live if self._alive(x, kills))
        return seen | {token}, live, kills

    def _field_op(self, live: set[Atom], field: Any, type_: str, op: tuple, actor: str, stamp: Timestamp,
                  token: int, kills: set[Kill], observed: frozenset[int]) -> set[Atom]:
        def drop(kind: str, match: Callable[[Atom], bool] = lambda atom: True) -> set[Atom]:
            return {x for x in live if not (x[0] == kind and x[1] == field and match(x))}

        if type_ == "map":
            if op[0] == "remove":
                target = ("field", op[1]) if isinstance(op[1], str) else ("field", *op[1])
                kills.add((target, observed))
                return live
            key = (op[1], op[2])
            live = {x for x in live if not (x[0] == "present" and x[1] == key)} | {("present", key, token)}
            return self._field_op(live, key, op[2], op[3], actor, stamp, token, kills, observed)
        if type_ == "set":
            touched = {op[1]} if op[0] in ("add", "remove") else set(op[1])
            if op[0].startswith("add"):
                return drop("element", lambda x: x[2] in touched) | {("element", field, e, token) for e in touched}
            kills.update((("element", field, e), observed) for e in touched)
            return live
        if type_ == "flag":
            if op[0] == "enable":
                return drop("flag") | {("flag", field, token)}
            kills.add((("flag", field), observed))
            return live
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
        seen, live, _ = model
        if self.type == "counter":
            return sum(self.amounts[op_id] for op_id in {self.op_ids[t] for t in seen})
        if self.type == "register":
            return max((self.assigns[t] for t in seen), key=lambda a: a[0], default=(None, None))[1]
        if self.type == "map":
            return {key: self._field_value(live, key, key[1]) for kind, key, *_ in live if kind == "present"}
        return self._field_value(live, None, self.type)

    @staticmethod
    def _field_value(live: frozenset[Atom], field: Any, type_: str) -> Any:
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
            st.sampled_from(("op", "op", "merge", "retry", "observed")),
            st.sampled_from(ACTORS),
            st.integers(0, 1000),  # which earlier state or operation: index modulo the count
            ops,
        ),
        max_size=30,
    )


def run(type_: str, history: list[Step], oracle: Oracle) -> tuple[Seen, dict[str, Crdt]]:
    """Play a history on three replicas; every state reached, with its model, and the replicas' last states.

    ``op``: an operation on the replica's own state (a remove takes what that replica holds);
    ``observed``: the operation as a client sends it after reading an earlier state anywhere (a
    remove takes what that read observed, even on a replica that is behind); ``retry``: an earlier
    operation again, with its id, on any replica (one that has not seen it builds it a second time).
    """
    current: dict[str, tuple[Crdt, Model]] = {actor: (new(type_), EMPTY_MODEL) for actor in ACTORS}
    seen: Seen = [(new(type_), EMPTY_MODEL)]
    sent: list[tuple[str, tuple, Any, frozenset[int] | None]] = []  # (op_id, op, context, observed tokens)
    for token, (kind, actor, pick, op) in enumerate(history, start=1):
        obj, model = current[actor]
        stamp = Timestamp(pick, token, actor)  # random wall clocks; the logical part keeps stamps distinct
        if kind == "merge":
            other_obj, other_model = seen[pick % len(seen)]
            merged = merge(obj, other_obj)
            assert merged is not None
            current[actor] = (merged, oracle.merge(model, other_model))
        else:
            op_id, ctx, observed = f"op-{token}", None, None
            if kind == "observed" and type_ not in ("counter", "register"):
                read_obj, read_model = seen[pick % len(seen)]
                ctx, observed = context(read_obj), read_model[0]
            elif kind == "retry":
                if not sent:
                    continue
                op_id, op, ctx, observed = sent[pick % len(sent)]
                if any(applied_id == op_id for applied_id, _, _ in obj.applied):   # seen here: a no-op
                    assert apply(obj, type_, op, actor, op_id, stamp, ctx) is obj
                    continue
            try:
                updated = apply(obj, type_, op, actor, op_id, stamp, ctx)
            except NotPresent:
                assert ctx is None                     # a remove without a context of what is not here
                continue
            assert descends(updated, obj)
            assert context(updated) != context(obj) or type_ == "register"  # a losing assignment moves nothing
            current[actor] = (updated, oracle.apply(model, op, actor, stamp, token, op_id, observed))
            if kind != "retry":
                sent.append((op_id, op, ctx, observed))
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
    if type_ in ("register", "map"):
        # A retry built by a second replica is a second assignment with a later stamp (register) or,
        # in a map's counter field, a second increment (documented): not the value computed below.
        history = [("merge" if kind == "retry" else kind, *rest) for kind, *rest in history]
    _, last = run(type_, history, Oracle(type_))
    ops = [(op, Timestamp(pick, token, actor))
           for token, (kind, actor, pick, op) in enumerate(history, start=1) if kind in ("op", "observed")]
    assert value(merge_all(*last.values())) == expected_value(type_, ops)


def test_a_hot_key_remembers_only_the_newest_operation_ids() -> None:
    from storage import crdts
    from storage.hlc import Timestamp
    obj = None
    for i in range(crdts.MAX_APPLIED + 200):
        obj = crdts.apply(obj, "counter", ("increment", 1), "a", f"op{i:05d}", Timestamp(1_000 + i, 0, "a"))
    assert crdts.value(obj) == crdts.MAX_APPLIED + 200
    assert len(obj.applied) == crdts.MAX_APPLIED
    assert min(wall for _, wall, _ in obj.applied) == 1_200               # the oldest 200 were dropped
    again = crdts.apply(obj, "counter", ("increment", 1), "a", "op01199", Timestamp(5_000, 0, "a"))
    assert crdts.value(again) == crdts.value(obj)                         # a recent retry still counts once


@given(parts=st.lists(st.lists(st.tuples(st.sampled_from([f"id{i}" for i in range(12)]), st.integers(0, 30),
                                          st.one_of(st.just(()), st.tuples(st.just("a"), st.integers(1, 3),
                                                                           st.just(1), st.just(0)))),
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
