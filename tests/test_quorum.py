"""Quorum arithmetic: option resolution and the pure write/read tallies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.errors import QuorumValueError
from actors.quorum import ReadTally, WriteTally, resolve
from storage import versions


@pytest.mark.parametrize("value, n, expected", [
    ("one", 3, 1), ("quorum", 3, 2), ("quorum", 5, 3), ("all", 5, 5), (2, 3, 2), ("2", 3, 2), (None, 3, 2),
])
def test_names_and_integers_resolve_against_n(value, n, expected) -> None:
    assert resolve("w", value, 2, n) == expected


@pytest.mark.parametrize("value, message", [
    (4, "larger than n=3"), (0, "at least 1"), (-1, "at least 1"), ("most", "not an integer"), (2.5, "not an integer"),
    (True, "not an integer"),
])
def test_each_violation_has_its_own_message(value, message) -> None:
    with pytest.raises(QuorumValueError, match=message):
        resolve("w", value, 2, 3)


@given(n=st.integers(1, 9), data=st.data())
def test_resolved_values_always_lie_between_one_and_n(n, data) -> None:
    value = data.draw(st.one_of(st.sampled_from(["one", "quorum", "all"]), st.integers(1, n)))
    assert 1 <= resolve("r", value, 1, n) <= n


def test_a_write_is_enough_at_w_acks_and_final_when_every_target_answered() -> None:
    tally = WriteTally(needed=2, targets=("a", "b", "c"))
    tally.add_ack("a")
    assert not tally.enough
    tally.add_ack("a")                       # a duplicate ack counts once
    assert not tally.enough
    tally.add_ack("b")
    assert tally.enough and not tally.final
    tally.add_failure("c")
    assert tally.final


def test_a_write_is_hopeless_once_too_many_targets_failed() -> None:
    tally = WriteTally(needed=3, targets=("a", "b", "c"))
    tally.add_ack("a")
    assert not tally.hopeless
    tally.add_failure("b")
    assert tally.hopeless and not tally.enough


def test_a_write_with_fewer_targets_than_w_is_hopeless_from_the_start() -> None:
    assert WriteTally(needed=3, targets=("a", "b")).hopeless


@given(acks=st.lists(st.sampled_from("abcde"), max_size=10), fails=st.lists(st.sampled_from("abcde"), max_size=10),
       w=st.integers(1, 5))
def test_enough_and_hopeless_are_never_both_true(acks, fails, w) -> None:
    tally = WriteTally(needed=w, targets=tuple("abcde"))
    for a in acks:
        tally.add_ack(a)
    for f in fails:
        tally.add_failure(f)
    assert not (tally.enough and tally.hopeless)
    assert len(tally.acked) + len(tally.failed) <= 5


def test_a_read_merges_answers_and_names_the_replicas_behind() -> None:
    old = versions.update(None, (), b"v1", "x")
    new = versions.update(old, versions.join(old), b"v2", "x")
    tally = ReadTally(needed=2, targets=("a", "b", "c"))
    tally.add_answer("a", new)
    tally.add_answer("b", old)
    assert tally.enough and not tally.final
    tally.add_answer("c", None)
    assert tally.final
    assert versions.values(tally.merged()) == [b"v2"]
    assert sorted(tally.behind()) == ["b", "c"]


def test_a_read_of_a_key_nobody_has_needs_no_repair() -> None:
    tally = ReadTally(needed=2, targets=("a", "b"))
    tally.add_answer("a", None)
    tally.add_answer("b", None)
    assert tally.merged() is None and tally.behind() == []
