"""Tests of dotted version vector sets: behaviours by example, then laws over random histories.

Random histories are built the way the cluster builds them: each replica coordinates
writes under its own actor id on its own state, clients write with the context of
any state seen so far (or none), and replicas sync with any state seen so far.
A model with explicit causal histories (sets of value tokens) is the oracle.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from storage.versions import (
    EMPTY,
    DVVSet,
    context_descends,
    descends,
    equal,
    join,
    merge_contexts,
    size,
    sync,
    sync_all,
    update,
    values,
)

no_deadline = settings(deadline=None)  # shared CI machines are slow at times; timing is not the property
ACTORS = ("a", "b", "c")


def test_two_puts_without_context_become_siblings() -> None:
    first = update(None, (), b"x", "a")
    second = update(first, (), b"y", "a")
    assert sorted(values(second)) == [b"x", b"y"]
    assert join(second) == (("a", 2),)


def test_a_put_with_the_joined_context_replaces_every_sibling() -> None:
    siblings = update(update(None, (), b"x", "a"), (), b"y", "b")
    resolved = update(siblings, join(siblings), b"z", "a")
    assert values(resolved) == [b"z"]
    assert join(resolved) == (("a", 2), ("b", 1))


def test_a_put_with_an_old_context_keeps_the_concurrent_sibling() -> None:
    first = update(None, (), b"x", "a")
    old_context = join(first)
    second = update(first, old_context, b"y", "a")
    third = update(second, old_context, b"z", "a")
    assert values(third) == [b"z", b"y"]


def test_counters_increase_past_both_the_stored_and_the_context_counter() -> None:
    stored = update(None, (), b"x", "a")
    assert update(stored, (), b"y", "a").entries[0][1] == 2
    ahead = update(stored, (("a", 7),), b"y", "a")
    assert ahead.entries == (("a", 8, (b"y",)),)


def test_a_context_naming_other_actors_enters_the_history() -> None:
    obj = update(None, (("b", 3), ("c", 0)), b"x", "a")
    assert join(obj) == (("a", 1), ("b", 3))
    assert values(obj) == [b"x"]


def test_a_tombstone_none_is_just_a_value() -> None:
    live = update(None, (), b"x", "a")
    deleted = update(live, join(live), None, "b")
    assert values(deleted) == [None]
    concurrent = update(deleted, join(live), b"y", "a")
    assert values(concurrent) == [b"y", None]


def test_sync_with_none_is_the_identity() -> None:
    obj = update(None, (), b"x", "a")
    assert sync(obj, None) == obj == sync(None, obj)
    assert sync(None, None) is None
    assert sync_all([]) is None


def test_sync_of_two_copies_of_one_dot_keeps_one_copy() -> None:
    obj = update(None, (), b"x", "a")
    assert sync(obj, update(obj, (), b"y", "b")) == update(obj, (), b"y", "b")
    assert size(sync(obj, obj)) == 1


def test_sync_drops_a_value_the_other_side_has_overwritten() -> None:
    old = update(None, (), b"x", "a")
    new = update(old, join(old), b"y", "b")
    assert values(sync(old, new)) == [b"y"]
    assert descends(new, old) and not descends(old, new)


def test_equal_compares_histories_and_dots_not_values() -> None:
    obj = update(None, (), b"x", "a")
    assert equal(obj, DVVSet((("a", 1, ("other",)),)))
    assert not equal(obj, DVVSet((("a", 1, ()),)))
    assert equal(None, EMPTY)


def test_context_helpers_compare_and_merge_pointwise() -> None:
    a, b = (("a", 2), ("b", 1)), (("b", 3),)
    assert merge_contexts(a, b) == (("a", 2), ("b", 3))
    assert context_descends(merge_contexts(a, b), a) and context_descends(a, ())
    assert not context_descends(a, b) and not context_descends(b, a)


def test_anonymous_values_survive_unless_dominated_and_are_not_doubled() -> None:
    anon = DVVSet((("a", 1, ()),), (b"anon",))
    assert values(sync(anon, anon)) == [b"anon"]
    assert values(sync(anon, update(None, (), b"x", "b"))) == [b"x", b"anon"]
    assert values(sync(anon, DVVSet((("a", 2, (b"y",)),)))) == [b"y"]
    assert values(update(anon, (), b"x", "b")) == [b"x", b"anon"]
    assert values(update(anon, join(anon), b"x", "b")) == [b"x"]


# --- random histories -------------------------------------------------------------------

Model = tuple[frozenset[Any], frozenset[Any]]  # (every token in the causal history, live tokens)

steps = st.lists(
    st.tuples(
        st.sampled_from(("put", "blind put", "sync")),
        st.sampled_from(ACTORS),
        st.integers(min_value=0, max_value=1000),  # which earlier state: index modulo the count
    ),
    max_size=25,
)


def _model_update(stored: Model, seen: Model, token: Any) -> Model:
    return stored[0] | seen[0] | {token}, frozenset(v for v in stored[1] if v not in seen[0]) | {token}


def _model_sync(a: Model, b: Model) -> Model:
    live = {v for v in a[1] if v not in b[0] or v in b[1]} | {v for v in b[1] if v not in a[0] or v in a[1]}
    return a[0] | b[0], frozenset(live)


def _run(history: list[tuple[str, str, int]]) -> list[tuple[DVVSet, Model]]:
    """Every state reached by a history, each with its model."""
    empty: tuple[DVVSet, Model] = (EMPTY, (frozenset(), frozenset()))
    current = {actor: empty for actor in ACTORS}
    seen = [empty]
    for step, (kind, actor, pick) in enumerate(history):
        obj, model = current[actor]
        other_obj, other_model = seen[pick % len(seen)]
        if kind == "sync":
            merged = sync(obj, other_obj)
            assert merged is not None
            current[actor] = (merged, _model_sync(model, other_model))
        else:
            if kind == "blind put":
                other_obj, other_model = empty
            token = ("v", step)
            current[actor] = (update(obj, join(other_obj), token, actor), _model_update(model, other_model, token))
        seen.append(current[actor])
    return seen


histories = steps.map(_run)
picks = st.integers(min_value=0, max_value=1000)


def _dots(obj: DVVSet) -> dict[tuple[str, int], Any]:
    return {(actor, n - i): v for actor, n, vals in obj.entries for i, v in enumerate(vals)}


@no_deadline
@given(histories)
def test_every_state_holds_exactly_the_values_an_explicit_causal_model_keeps(
        states: list[tuple[DVVSet, Model]]) -> None:
    for obj, (_, live) in states:
        assert set(values(obj)) == live
        assert len(values(obj)) == size(obj) == len(live)


@no_deadline
@given(histories)
def test_one_dot_names_one_value_across_all_states(states: list[tuple[DVVSet, Model]]) -> None:
    named: dict[tuple[str, int], Any] = {}
    for obj, _ in states:
        for dot, value in _dots(obj).items():
            assert named.setdefault(dot, value) == value


@no_deadline
@given(histories, picks, picks)
def test_sync_is_commutative_and_idempotent(states: list[tuple[DVVSet, Model]], i: int, j: int) -> None:
    a, b = states[i % len(states)][0], states[j % len(states)][0]
    assert sync(a, b) == sync(b, a)
    assert sync(a, a) == a
    assert sync(sync(a, b), b) == sync(a, b)


@no_deadline
@given(histories, picks, picks, picks)
def test_sync_is_associative(states: list[tuple[DVVSet, Model]], i: int, j: int, k: int) -> None:
    a, b, c = (states[n % len(states)][0] for n in (i, j, k))
    assert sync(sync(a, b), c) == sync(a, sync(b, c)) == sync_all([c, a, b])


@no_deadline
@given(histories, picks, picks)
def test_sync_keeps_every_value_the_other_side_has_not_superseded(
    states: list[tuple[DVVSet, Model]], i: int, j: int
) -> None:
    a, b = states[i % len(states)][0], states[j % len(states)][0]
    merged = sync(a, b)
    assert merged is not None
    kept = _dots(merged)
    for mine, theirs in ((a, b), (b, a)):
        covered = dict(join(theirs))
        for (actor, counter), value in _dots(mine).items():
            if counter > covered.get(actor, 0) or (actor, counter) in _dots(theirs):
                assert kept[(actor, counter)] == value
            else:
                assert (actor, counter) not in kept
    assert descends(merged, a) and descends(merged, b)
    assert join(merged) == merge_contexts(join(a), join(b))
    assert len(values(merged)) == len(kept)


@no_deadline
@given(histories, picks, picks, st.sampled_from(ACTORS))
def test_an_update_dominates_its_context_and_the_stored_history(
    states: list[tuple[DVVSet, Model]], i: int, j: int, actor: str
) -> None:
    stored, seen = states[i % len(states)][0], states[j % len(states)][0]
    context = join(seen)
    written = update(stored, context, "new", actor)
    assert context_descends(join(written), context)
    assert descends(written, stored) and not descends(stored, written)
    assert values(written).count("new") == 1


@settings(max_examples=50, deadline=None)
@given(histories, picks, picks)
def test_equal_matches_structural_equality_for_states_of_one_history(
    states: list[tuple[DVVSet, Model]], i: int, j: int
) -> None:
    a, b = states[i % len(states)][0], states[j % len(states)][0]
    assert equal(a, b) == (a == b)
    assert equal(a, b) == (descends(a, b) and descends(b, a) and set(_dots(a)) == set(_dots(b)))
