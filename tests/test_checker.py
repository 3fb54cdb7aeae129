"""The chaos checkers on hand-made histories: pure functions, no cluster, including histories that must fail."""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from actors import InvalidRequest, LocalObject, QuorumFailed, RequestTimeout
from actors.checker import (
    check_convergence,
    check_counter,
    check_delete,
    check_map,
    check_orset,
    check_register,
    check_set,
)
from actors.errors import ConnectionError_
from actors.history import History, Op, outcome_of


def op(process: int | str, kind: str, key: str | None, value: Any = None, start: float = 0.0, end: float | None = 1.0,
       outcome: str = "ok", result: Any = None) -> Op:
    return Op(process, kind, key, value, start, end, outcome, result)


def add(value: str, outcome: str = "ok", key: str = "s", start: float = 0.0, end: float = 1.0, process: int = 0) -> Op:
    return op(process, "add", key, value, start, end, outcome)


def read(key: str, values: list[Any], start: float, end: float, process: int = 9) -> Op:
    return op(process, "read", key, None, start, end, "ok", values)


def write(process: int, key: str, value: Any, observed: list[Any] | None, start: float, end: float,
          outcome: str = "ok") -> Op:
    return op(process, "write", key, value, start, end, outcome, {"observed": observed})


# --- history -------------------------------------------------------------------------------

def test_write_errors_that_may_have_been_applied_are_indeterminate_and_refusals_and_failed_reads_are_failures(
        ) -> None:
    assert outcome_of("add", QuorumFailed(2, 1, ["n1"])) == "info"
    assert outcome_of("write", RequestTimeout("slow")) == "info"
    assert outcome_of("add", ConnectionError_("closed before the reply")) == "info"
    assert outcome_of("add", InvalidRequest("key too long")) == "fail"
    assert outcome_of("read", QuorumFailed(2, 1, ["n1"])) == "fail"
    assert outcome_of("read", RequestTimeout("slow")) == "fail"


def test_the_history_records_invocation_and_completion_from_many_threads_and_round_trips_as_json(tmp_path) -> None:
    ticks = itertools.count()
    lock = threading.Lock()

    def clock() -> float:
        with lock:
            return float(next(ticks))

    history = History(clock=clock)

    def worker(process: int) -> None:
        for i in range(200):
            handle = history.invoke(process, "add", "s", f"p{process}-{i}")
            history.complete(handle, "ok" if i % 3 else "info", {"attempts": 1})

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ops = history.ops
    assert len(ops) == 1600 and all(o.completed_at is not None and o.completed_at > o.invoked_at for o in ops)
    assert history.counts() == {"add": {"ok": 1064, "fail": 0, "info": 536}}
    path = tmp_path / "history.json"
    history.dump(path)
    assert History.load(path) == ops
    assert json.loads(path.read_text())[0]["kind"] == "add"


def test_an_op_that_never_completes_stays_indeterminate_and_one_cannot_complete_twice() -> None:
    history = History()
    pending = history.invoke(1, "add", "s", "a")
    done = history.invoke(1, "add", "s", "b")
    history.complete(done, "fail", "refused")
    assert history.ops[pending].outcome == "info" and history.ops[pending].completed_at is None
    try:
        history.complete(done, "ok")
    except ValueError as exc:
        assert "already completed" in str(exc)
    else:
        raise AssertionError("completing twice was accepted")


# --- the set checker ---------------------------------------------------------------------------

def test_a_run_where_every_acknowledged_add_is_read_back_is_valid() -> None:
    history = [add("a"), add("b"), add("c", key="t")]
    result = check_set(history, {"s": ["a", "b"], "t": ["c"]})
    assert result["valid"] and result["acknowledged"] == 3
    assert (result["lost"], result["unexpected"], result["recovered"]) == (0, 0, 0)


def test_an_acknowledged_add_missing_from_the_final_read_is_lost() -> None:
    result = check_set([add("a"), add("b"), add("c")], {"s": ["a", "c"]})
    assert not result["valid"]
    assert result["lost"] == 1 and result["lost_elements"] == [("s", "b")]


def test_a_value_nobody_added_is_unexpected() -> None:
    result = check_set([add("a")], {"s": ["a", "zombie"]})
    assert not result["valid"]
    assert result["unexpected"] == 1 and result["unexpected_elements"] == [("s", "zombie")]


def test_an_element_that_turns_up_under_another_key_is_both_lost_and_unexpected() -> None:
    result = check_set([add("a", key="s")], {"s": [], "t": ["a"]})
    assert result["lost_elements"] == [("s", "a")] and result["unexpected_elements"] == [("t", "a")]


def test_an_indeterminate_add_that_shows_up_is_recovered_not_lost_and_one_that_does_not_is_neither() -> None:
    result = check_set([add("a"), add("b", "info"), add("c", "info")], {"s": ["a", "b"]})
    assert result["valid"]
    assert result["recovered"] == 1 and result["recovered_elements"] == [("s", "b")]
    assert result["lost"] == 0 and result["indeterminate"] == 2


def test_an_add_that_certainly_failed_but_shows_up_makes_the_run_invalid() -> None:
    result = check_set([add("a"), add("b", "fail")], {"s": ["a", "b"]})
    assert not result["valid"] and result["failed_present_elements"] == [("s", "b")]
    assert result["unexpected"] == 0


def test_a_key_whose_final_read_failed_cannot_be_confirmed_and_makes_the_run_invalid() -> None:
    result = check_set([add("a"), add("b", key="t")], {"s": ["a"], "t": None})
    assert not result["valid"] and result["unread_keys"] == ["t"] and result["lost"] == 0


def test_a_read_that_misses_an_add_acknowledged_before_it_began_is_stale_and_a_concurrent_one_is_not() -> None:
    history = [add("a", start=0, end=1), add("b", start=2, end=5),
               read("s", ["a"], 3, 4),          # b not acknowledged yet: not stale
               read("s", ["b"], 6, 7),          # misses a, acknowledged at 1: stale
               read("s", ["a", "b"], 6, 7)]
    result = check_set(history, {"s": ["a", "b"]})
    assert result["valid"] and result["reads"] == 3 and result["stale_reads"] == 1


@given(elements=st.lists(st.text("abcdefgh", min_size=1, max_size=4), unique=True, max_size=30), data=st.data())
def test_any_subset_of_acknowledged_adds_removed_from_the_final_read_is_reported_exactly_as_lost(
        elements: list[str], data: st.DataObject) -> None:
    removed = data.draw(st.sets(st.sampled_from(elements)) if elements else st.just(set()))
    result = check_set([add(e) for e in elements], {"s": [e for e in elements if e not in removed]})
    assert result["lost"] == len(removed)
    assert result["lost_elements"] == sorted(("s", e) for e in removed)
    assert result["valid"] == (not removed)
    assert result["unexpected"] == 0


# --- histories from a toy store, correct and deliberately broken ----------------------------------

class ToyStore:
    """One key in siblings mode: a write replaces the siblings its read saw and keeps the rest.

    ``drop_siblings`` breaks the merge (a write replaces every sibling, seen or not);
    ``ack_before_durable`` acknowledges writes that only reach disk at the next ``flush``,
    and ``crash`` forgets what was not flushed.
    """

    def __init__(self, drop_siblings: bool = False, ack_before_durable: bool = False) -> None:
        self.drop_siblings = drop_siblings
        self.ack_before_durable = ack_before_durable
        self.memory: dict[int, frozenset[str]] = {}
        self.disk: dict[int, frozenset[str]] = {}
        self.ids = itertools.count(1)

    def read(self) -> tuple[set[str], frozenset[int]]:
        return set().union(*self.memory.values()), frozenset(self.memory)

    def write(self, elements: set[str], seen: frozenset[int]) -> None:
        kept = {} if self.drop_siblings else {i: v for i, v in self.memory.items() if i not in seen}
        self.memory = {**kept, next(self.ids): frozenset(elements)}
        if not self.ack_before_durable:
            self.flush()

    def flush(self) -> None:
        self.disk = dict(self.memory)

    def crash(self) -> None:
        self.memory = dict(self.disk)


def drive(store: ToyStore, steps: list[int], flush_after: int | None = None,
          crash_after: int | None = None) -> tuple[History, dict[str, Any]]:
    """Clients take turns (``steps`` says whose): a turn reads, the client's next turn writes back with
    one new element; the store flushes and crashes after the turns given."""
    ticks = itertools.count()
    history = History(clock=lambda: float(next(ticks)))
    pending: dict[int, tuple[int, set[str], frozenset[int]]] = {}
    seq = itertools.count()
    for turn, client in enumerate(steps):
        if client not in pending:
            element = f"p{client}-{next(seq)}"
            handle = history.invoke(client, "add", "s", element)
            elements, seen = store.read()
            pending[client] = (handle, elements | {element}, seen)
        else:
            handle, elements, seen = pending.pop(client)
            store.write(elements, seen)
            history.complete(handle, "ok")
        if turn == flush_after:
            store.flush()
        if turn == crash_after:
            store.crash()
    return history, {"s": sorted(store.read()[0])}


def test_two_concurrent_acknowledged_adds_both_survive_in_a_store_that_keeps_siblings() -> None:
    history, final = drive(ToyStore(), [0, 1, 0, 1])
    result = check_set(history, final)
    assert result["valid"] and result["acknowledged"] == 2 and final == {"s": ["p0-0", "p1-1"]}


def test_a_store_that_drops_siblings_on_merge_is_caught_losing_a_concurrent_acknowledged_add() -> None:
    history, final = drive(ToyStore(drop_siblings=True), [0, 1, 0, 1])
    result = check_set(history, final)
    assert not result["valid"]
    assert result["acknowledged"] == 2 and result["lost_elements"] == [("s", "p0-0")]


def test_a_store_that_acknowledges_before_the_write_is_durable_is_caught_losing_an_add_after_a_crash() -> None:
    history, final = drive(ToyStore(ack_before_durable=True), [0, 0, 1, 1, 2, 2], flush_after=1, crash_after=5)
    result = check_set(history, final)
    assert final == {"s": ["p0-0"]} and result["acknowledged"] == 3
    assert not result["valid"] and result["lost_elements"] == [("s", "p1-1"), ("s", "p2-2")]
    history, final = drive(ToyStore(), [0, 0, 1, 1, 2, 2], crash_after=5)      # durable at ack: nothing lost
    assert check_set(history, final)["valid"]


@settings(max_examples=200)
@given(st.lists(st.integers(0, 3), max_size=40))
def test_no_interleaving_of_clients_on_a_correct_store_is_ever_flagged(steps: list[int]) -> None:
    history, final = drive(ToyStore(), steps)
    result = check_set(history, final)
    assert result["valid"] and result["lost"] == 0 and result["unexpected"] == 0
    assert result["acknowledged"] == sum(1 for o in history.ops if o.outcome == "ok")


@given(st.lists(st.integers(0, 3), max_size=40))
def test_the_sibling_dropping_store_is_flagged_exactly_when_a_write_clobbered_an_add_it_had_not_seen(
        steps: list[int]) -> None:
    history, final = drive(ToyStore(drop_siblings=True), steps)
    result = check_set(history, final)
    correct_final = drive(ToyStore(), steps)[1]
    assert result["valid"] == (final == correct_final)
    assert result["lost"] == len(set(correct_final["s"]) - set(final["s"]))


# --- the register checker ----------------------------------------------------------------------

def single_writer_history() -> list[Op]:
    return [write(1, "r", 1, [], 0, 1), write(1, "r", 2, [1], 2, 3), write(1, "r", 3, [2], 4, 5)]


def test_a_single_writer_register_whose_final_value_is_the_last_acknowledged_write_is_valid() -> None:
    result = check_register(single_writer_history(), {"r": [3]})
    assert result["valid"] and result["single_writer_keys"] == ["r"] and result["acknowledged"] == 3
    assert result["lost"] == 0


def test_a_final_value_older_than_the_last_acknowledged_write_is_flagged() -> None:
    result = check_register(single_writer_history(), {"r": [2]})
    assert not result["valid"] and result["stale_final"] == ["r"] and result["lost_writes"] == [("r", 3)]


def test_a_later_indeterminate_write_may_be_the_final_value() -> None:
    history = single_writer_history() + [write(1, "r", 4, [3], 6, 7, outcome="info")]
    result = check_register(history, {"r": [4]})
    assert result["valid"] and result["recovered"] == 1


def test_an_acknowledged_write_no_later_write_observed_must_survive_as_a_sibling() -> None:
    # the writer's second read was stale (missed 2), so 3 did not replace 2: both must remain
    history = [write(1, "r", 1, [], 0, 1), write(1, "r", 2, [1], 2, 3), write(1, "r", 3, [1], 4, 5)]
    assert check_register(history, {"r": [2, 3]})["valid"]
    result = check_register(history, {"r": [3]})
    assert not result["valid"] and result["lost_writes"] == [("r", 2)] and result["stale_final"] == []


def test_reads_older_than_an_acknowledged_write_are_stale_unless_a_sibling_is_current() -> None:
    history = single_writer_history() + [
        read("r", [1], 3.5, 3.6),               # 2 acknowledged at 3: stale
        read("r", [1, 2], 3.5, 3.6),            # siblings, one current: not stale
        read("r", [2], 4.5, 4.6),               # 3 not acknowledged yet: not stale
        read("r", [], 1.5, 1.6),                # nothing, though 1 was acknowledged: stale
        read("r", [3], 0.5, 0.6),               # a read from the future is not stale
    ]
    result = check_register(history, {"r": [3]})
    assert result["reads"] == 5 and result["stale_reads"] == 2 and result["stale_reads_single_writer"] == 2


def test_on_a_multi_writer_key_a_write_replaced_by_one_that_observed_it_is_not_lost() -> None:
    history = [write(1, "m", 10, [], 0, 1), write(2, "m", 20, [10], 2, 3), write(1, "m", 11, [20], 4, 5),
               write(2, "m", 21, [], 4, 5)]     # concurrent with 11, observed nothing: a sibling
    result = check_register(history, {"m": [11, 21]})
    assert result["valid"] and result["multi_writer_keys"] == ["m"]
    result = check_register(history, {"m": [11]})
    assert not result["valid"] and result["lost_writes"] == [("m", 21)]


def test_on_a_multi_writer_key_a_read_that_misses_an_acknowledged_write_and_everything_after_it_is_stale() -> None:
    history = [write(1, "m", 10, [], 0, 1), write(2, "m", 20, [10], 2, 3),
               read("m", [10], 4, 5),            # 20 acknowledged at 3 and replaced 10: stale
               read("m", [20], 4, 5),
               read("m", [10], 2.5, 2.6)]        # 20 still in flight: not stale
    result = check_register(history, {"m": [20]})
    assert result["stale_reads_multi_writer"] == 1 and result["valid"]


def test_a_register_value_nobody_wrote_is_unexpected() -> None:
    result = check_register(single_writer_history(), {"r": [3, 99]})
    assert not result["valid"] and result["unexpected_values"] == [("r", 99)]


# --- the counter checker -----------------------------------------------------------------------

def inc(delta: int, start: float, end: float, outcome: str = "ok", key: str = "c") -> Op:
    return op(0, "increment", key, delta, start, end, outcome)


def counter_read(value: int, start: float, end: float, key: str = "c") -> Op:
    return op(1, "read", key, None, start, end, "ok", value)


def test_counter_reads_between_acknowledged_and_attempted_increments_are_valid() -> None:
    history = [inc(1, 0, 1), inc(1, 2, 3), inc(5, 2, 6, "info"), counter_read(2, 4, 5), counter_read(7, 4, 7)]
    result = check_counter(history, {"c": 7})
    assert result["valid"] and result["reads"] == 3 and result["stale_reads"] == 0
    assert (result["acknowledged"], result["indeterminate"], result["attempted"]) == (2, 1, 3)
    assert result["acknowledged_sum"] == {"c": 2} and result["attempted_sum"] == {"c": 7}


def test_a_counter_read_above_what_was_attempted_counted_something_twice_and_is_flagged() -> None:
    history = [inc(1, 0, 1), inc(1, 2, 3), inc(5, 2, 6, "fail"), counter_read(3, 4, 5)]
    result = check_counter(history, {"c": 7})
    assert not result["valid"] and result["unexpected"] == 2
    assert [(e["kind"], e["value"], e["lower"], e["upper"]) for e in result["errors"]] == [
        ("read", 3, 2, 2), ("final-read", 7, 2, 2)]


def test_a_final_counter_read_below_the_acknowledged_sum_lost_increments() -> None:
    result = check_counter([inc(1, 0, 1), inc(4, 2, 3), inc(2, 2, 3, "info")], {"c": 3})
    assert not result["valid"] and result["lost"] == 1 and result["errors"][0]["lower"] == 5
    assert check_counter([inc(1, 0, 1), inc(4, 2, 3)], {"c": None})["unread_keys"] == ["c"]


def test_a_read_during_the_run_that_missed_acknowledged_increments_is_stale_or_in_strict_mode_an_error() -> None:
    history = [inc(1, 0, 1), inc(1, 2, 3), counter_read(1, 4, 5)]
    relaxed = check_counter(history, {"c": 2})
    assert relaxed["valid"] and relaxed["stale_reads"] == 1 and relaxed["stale_read_times"] == [4]
    strict = check_counter(history, {"c": 2}, strict=True)
    assert not strict["valid"] and strict["errors"][0]["value"] == 1 and strict["lost"] == 0


def test_a_concurrent_increment_may_or_may_not_be_counted_and_decrements_lower_the_bound() -> None:
    history = [inc(3, 0, 1), inc(2, 1.5, 10), inc(-1, 1.5, 10, "info"), counter_read(2, 2, 3),
               counter_read(5, 2, 3), counter_read(6, 2, 3)]
    result = check_counter(history)
    assert [e["value"] for e in result["errors"]] == [6]
    assert result["errors"][0]["lower"] == 2 and result["errors"][0]["upper"] == 5


# --- convergence -------------------------------------------------------------------------------

def obj(*values: bytes, tombstone: bool = False) -> LocalObject:
    return LocalObject(list(values), tombstone, {"n1": len(values)}, len(values))


def test_replicas_holding_the_same_siblings_in_any_order_have_converged() -> None:
    inspections = {"n1": {"k": obj(b"a", b"b")}, "n2": {"k": obj(b"b", b"a")}, "n3": {"k": obj(b"a", b"b")}}
    result = check_convergence(inspections, {"k": ["n1", "n2", "n3"]})
    assert result["converged"] and result["divergent"] == 0


def test_a_replica_that_differs_is_named_with_its_key() -> None:
    inspections = {"n1": {"k": obj(b"a"), "j": obj(b"x")}, "n2": {"k": obj(b"a", b"b"), "j": obj(b"x")},
                   "n3": {"k": obj(b"a"), "j": obj(b"x")}}
    result = check_convergence(inspections, {"k": ["n1", "n2", "n3"], "j": ["n1", "n2", "n3"]})
    assert not result["converged"] and list(result["divergent_keys"]) == ["k"]
    states = result["divergent_keys"]["k"]
    assert states["n2"]["values"] == 2 and states["n1"] == states["n3"] != states["n2"]


def test_a_missing_copy_a_tombstone_and_an_unreachable_replica_all_count_as_divergent() -> None:
    primaries = {"k": ["n1", "n2"]}
    assert not check_convergence({"n1": {"k": obj(b"a")}, "n2": {"k": None}}, primaries)["converged"]
    assert not check_convergence({"n1": {"k": obj(tombstone=True)}, "n2": {"k": obj()}}, primaries)["converged"]
    result = check_convergence({"n1": {"k": obj(b"a")}}, primaries)
    assert not result["converged"] and result["divergent_keys"]["k"]["n2"] == "unknown"
    assert check_convergence({"n1": {"k": None}, "n2": {"k": None}}, primaries)["converged"]


def test_check_convergence_compares_crdt_values_by_content_even_maps_and_sets() -> None:
    a = LocalObject([{("f", "set"): frozenset({"x", "y"}), ("g", "flag"): True}], False, {"n1": 2}, 1)
    b = LocalObject([{("g", "flag"): True, ("f", "set"): frozenset({"y", "x"})}], False, {"n1": 2}, 1)
    c = LocalObject([{("g", "flag"): True, ("f", "set"): frozenset({"x"})}], False, {"n1": 2}, 1)
    assert check_convergence({"n1": {"k": a}, "n2": {"k": b}}, {"k": ["n1", "n2"]})["converged"]
    assert not check_convergence({"n1": {"k": a}, "n2": {"k": c}}, {"k": ["n1", "n2"]})["converged"]


# --- copy counts --------------------------------------------------------------------------------

def test_exactly_the_primaries_holding_a_key_is_an_exact_copy_count_and_a_tombstone_counts_as_a_copy() -> None:
    inspections = {"n1": {"k": obj(b"a"), "d": obj(tombstone=True), "never": None},
                   "n2": {"k": obj(b"a"), "d": obj(tombstone=True), "never": None},
                   "n3": {"k": None, "d": None, "never": None}}
    primaries = {"k": ["n1", "n2"], "d": ["n1", "n2"], "never": ["n2", "n3"]}
    result = check_convergence(inspections, primaries, copies=True)
    assert result["converged"] and result["copies_exact"] and result["copy_failures"] == 0
    assert result["copy_counts"] == {"0": 1, "2": 2}          # a key nobody wrote (or a reaped tombstone): 0


def test_a_copy_left_on_a_fallback_or_an_old_owner_is_a_wrong_copy_count_even_when_the_primaries_agree() -> None:
    inspections = {"n1": {"k": obj(b"a")}, "n2": {"k": obj(b"a")}, "n3": {"k": obj(b"a")}, "n4": {"k": None}}
    result = check_convergence(inspections, {"k": ["n1", "n2"]}, copies=True)      # a bucket with n=2
    assert not result["converged"] and not result["copies_exact"] and result["divergent"] == 0
    assert result["wrong_copies"]["k"] == {"holders": ["n1", "n2", "n3"], "primaries": ["n1", "n2"], "copies": 3,
                                           "expected": 2}
    assert check_convergence(inspections, {"k": ["n1", "n2"]})["converged"]       # without copies: not checked


def test_a_bucket_with_n_1_whose_only_copy_sits_on_the_wrong_node_is_caught() -> None:
    inspections = {"n1": {"k": None}, "n2": {"k": obj(b"a")}, "n3": {"k": None}}
    result = check_convergence(inspections, {"k": ["n1"]}, copies=True)
    assert not result["converged"] and result["copy_failures"] == 1 and result["divergent"] == 0   # one primary


# --- OR-sets: adds and removes ---------------------------------------------------------------------

def rm(value: str, outcome: str = "ok", key: str = "s", start: float = 2.0, end: float = 3.0, process: int = 1) -> Op:
    return op(process, "remove", key, value, start, end, outcome)


def test_an_or_set_run_that_keeps_what_was_added_and_drops_what_was_removed_is_valid() -> None:
    history = [add("a"), add("b"), add("c"), add("d", "info"), add("e", "info"), add("f"), add("g"),
               rm("b"), rm("c", "info"), rm("f", "info"), rm("g", "fail")]      # g: NotPresent, nothing removed
    result = check_orset(history, {"s": ["a", "c", "d", "g"]})   # c: remove indeterminate, d: add indeterminate
    assert result["valid"], result
    assert (result["lost"], result["resurrected"], result["unexpected"]) == (0, 0, 0)
    assert result["removed"] == 1 and result["kept"] == 2 and result["recovered"] == 1 and result["removed_maybe"] == 2
    assert result["acknowledged"] == 6 and result["removes"] == {"ok": 1, "info": 2, "fail": 1}


def test_an_element_whose_remove_was_acknowledged_and_that_comes_back_is_resurrected() -> None:
    result = check_orset([add("a"), add("b"), rm("a"), rm("b")], {"s": ["a"]})
    assert not result["valid"] and result["resurrected"] == 1 and result["resurrected_elements"] == [("s", "a")]
    assert result["lost"] == 0 and result["removed"] == 1


def test_an_add_that_may_be_concurrent_with_an_acknowledged_remove_may_survive_it() -> None:
    late = add("a", start=0.0, end=2.5)                    # still in flight when the remove began at 2.0
    assert check_orset([late, rm("a")], {"s": ["a"]})["valid"]
    assert check_orset([add("a", "info"), rm("a")], {"s": ["a"]})["valid"]
    assert not check_orset([add("a", end=1.9), rm("a")], {"s": ["a"]})["valid"]


def test_an_acknowledged_add_that_no_remove_took_is_lost_when_missing_even_after_a_failed_remove() -> None:
    result = check_orset([add("a"), add("b"), rm("b", "fail")], {"s": ["a"]})
    assert not result["valid"] and result["lost_elements"] == [("s", "b")] and result["resurrected"] == 0


def test_or_set_values_nobody_added_unread_keys_and_certainly_failed_adds_make_the_run_invalid() -> None:
    assert check_orset([add("a")], {"s": ["a", "ghost"]})["unexpected_elements"] == [("s", "ghost")]
    assert check_orset([add("a"), add("b", key="t")], {"s": ["a"], "t": None})["unread_keys"] == ["t"]
    result = check_orset([add("a", "fail")], {"s": ["a"]})
    assert not result["valid"] and result["failed_present"] == 1


def test_an_or_set_read_that_misses_an_acknowledged_element_not_yet_removed_is_stale() -> None:
    history = [add("a", end=1.0), add("b", end=1.0), rm("b", start=5.0, end=6.0),
               read("s", ["a"], 2.0, 3.0),          # misses b, whose remove began only at 5: stale
               read("s", ["a"], 5.5, 6.5),          # b is being removed: not stale
               read("s", ["a", "b"], 2.0, 3.0)]
    result = check_orset(history, {"s": ["a"]})
    assert result["valid"] and result["reads"] == 3
    assert result["stale_reads"] == 1 and result["stale_read_times"] == [2.0]


class ToyOrSet:
    """An OR-set with unique elements; ``forget_removes`` breaks it: a remove acknowledged while a
    replica was behind is dropped when the replicas merge (the bug issue 17 found)."""

    def __init__(self, forget_removes: bool = False) -> None:
        self.forget_removes = forget_removes
        self.elements: set[str] = set()
        self.forgotten: set[str] = set()

    def add(self, element: str) -> None:
        self.elements.add(element)

    def remove(self, element: str) -> bool:
        if element not in self.elements:
            return False                                      # NotPresent
        self.elements.discard(element)
        if self.forget_removes:
            self.forgotten.add(element)
        return True

    def final(self) -> set[str]:
        return self.elements | self.forgotten


def drive_orset(store: ToyOrSet, script: list[tuple[str, int]]) -> tuple[list[Op], dict[str, list[str]]]:
    """Sequential ops: ("add", i) adds element ei, ("remove", i) removes it."""
    ops, clock = [], itertools.count()
    for verb, i in script:
        start, element = float(next(clock)), f"e{i}"
        if verb == "add":
            store.add(element)
            ops.append(op(0, "add", "s", element, start, start + 0.5, "ok"))
        else:
            ops.append(op(1, "remove", "s", element, start, start + 0.5, "ok" if store.remove(element) else "fail"))
    return ops, {"s": sorted(store.final())}


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 6)), max_size=30))
def test_no_sequence_of_adds_and_removes_on_a_correct_or_set_is_flagged_and_forgotten_removes_always_are(
        script: list[tuple[str, int]]) -> None:
    seen: set[int] = set()
    script = [(v, i) for v, i in script if (v == "add" and i not in seen and not seen.add(i)) or v == "remove"]
    ops, final = drive_orset(ToyOrSet(), script)
    assert check_orset(ops, final)["valid"]
    broken_ops, broken_final = drive_orset(ToyOrSet(forget_removes=True), script)
    result = check_orset(broken_ops, broken_final)
    removed = sum(1 for o in broken_ops if o.kind == "remove" and o.outcome == "ok")
    assert result["resurrected"] == removed and result["valid"] == (removed == 0)


# --- maps: field updates and removes ---------------------------------------------------------------

def upd(field: str, ftype: str, verb: str, arg: Any = None, outcome: str = "ok", start: float = 0.0,
        end: float = 1.0, key: str = "m") -> Op:
    return op(0, "field-update", key, {"field": field, "type": ftype, "op": verb, "arg": arg}, start, end, outcome)


def field_rm(field: str, ftype: str, outcome: str = "ok", start: float = 2.0, end: float = 3.0, key: str = "m") -> Op:
    return op(0, "field-remove", key, {"field": field, "type": ftype}, start, end, outcome)


def elem_rm(field: str, element: str, outcome: str = "ok", start: float = 2.0, end: float = 3.0,
            key: str = "m") -> Op:
    return op(0, "elem-remove", key, {"field": field, "type": "set", "element": element}, start, end, outcome)


def map_history() -> list[Op]:
    return [upd("p0.reg0", "register", "assign", "v1"), upd("p0.reg0", "register", "assign", "v2", start=1, end=1.5),
            upd("p0.set", "set", "add", "x"), upd("p0.set", "set", "add", "y"), elem_rm("p0.set", "x"),
            upd("p0.t1", "flag", "enable"), field_rm("p0.t1", "flag"),
            upd("p0.t2", "set", "add", "z"), field_rm("p0.t2", "set"),
            upd("p0.t3", "register", "assign", "w")]


def test_a_map_that_keeps_updated_fields_and_drops_removed_ones_and_elements_is_valid() -> None:
    final = {"m": [["p0.reg0", "register", "v1"], ["p0.set", "set", ["y"]], ["p0.t3", "register", "w"]]}
    result = check_map(map_history(), final)
    assert result["valid"], result
    assert result["acknowledged"] == 10 and result["removes"] == {"ok": 3, "info": 0, "fail": 0}
    assert result["removed"] == 5            # x, t1 and its truth, t2 and its element z
    dict_form = {"m": {("p0.reg0", "register"): "v2", ("p0.set", "set"): frozenset({"y"}),
                       ("p0.t3", "register"): "w"}}
    assert check_map(map_history(), dict_form)["valid"]        # which assignment wins is not judged


def test_a_removed_map_field_or_set_element_that_comes_back_is_resurrected() -> None:
    final = {"m": [["p0.reg0", "register", "v1"], ["p0.set", "set", ["x", "y"]], ["p0.t1", "flag", True],
                   ["p0.t3", "register", "w"]]}
    result = check_map(map_history(), final)
    assert not result["valid"] and result["resurrected"] == 3
    assert result["resurrected_elements"] == [("m", ("elem", "p0.set", "x")), ("m", ("field", "p0.t1", "flag")),
                                              ("m", ("flag", "p0.t1"))]


def test_a_map_field_or_element_that_was_acknowledged_and_never_removed_must_be_there() -> None:
    final = {"m": [["p0.set", "set", []], ["p0.t3", "flag", True]]}
    result = check_map(map_history(), final)
    assert not result["valid"]
    assert ("m", ("field", "p0.reg0", "register")) in result["lost_elements"]
    assert ("m", ("elem", "p0.set", "y")) in result["lost_elements"]
    assert ("m", ("field", "p0.t3", "register")) in result["lost_elements"]
    assert ("m", ("field", "p0.t3", "flag")) in result["unexpected_elements"]


def test_a_register_field_holding_a_value_nobody_assigned_is_unexpected_and_a_false_acknowledged_flag_is_lost(
        ) -> None:
    final = {"m": [["p0.reg0", "register", "v9"], ["p0.set", "set", ["y"]], ["p0.t3", "register", "w"]]}
    result = check_map(map_history(), final)
    assert not result["valid"] and result["unexpected_elements"] == [("m", ("p0.reg0", "v9"))]
    history = [upd("p0.f", "flag", "enable")]
    result = check_map(history, {"m": [["p0.f", "flag", False]]})
    assert not result["valid"] and result["lost_elements"] == [("m", ("flag", "p0.f"))]


def test_indeterminate_map_updates_and_removes_may_go_either_way() -> None:
    history = [upd("p0.t1", "register", "assign", "a", outcome="info"), upd("p0.t2", "flag", "enable"),
               field_rm("p0.t2", "flag", outcome="info")]
    for final in ({"m": []}, {"m": [["p0.t1", "register", "a"], ["p0.t2", "flag", True]]}):
        assert check_map(history, final)["valid"], final


# --- deletes -------------------------------------------------------------------------------------

def delete(process: int, key: str, value: str, observed: list[Any] | None, start: float, end: float,
           outcome: str = "ok") -> Op:
    return op(process, "delete", key, value, start, end, outcome, {"observed": observed})


def delete_history() -> list[Op]:
    return [write(1, "k", 1, [], 0, 1), write(1, "k", 2, [1], 2, 3), delete(1, "k", "d1", [2], 4, 5),
            write(1, "k", 3, [], 6, 7), delete(1, "j", "d2", [], 0, 1), write(1, "j", 10, [], 2, 3)]


def test_a_key_written_deleted_and_written_again_that_holds_its_last_write_is_valid() -> None:
    result = check_delete(delete_history(), {"k": [3], "j": [10]})
    assert result["valid"], result
    assert result["acknowledged"] == 6 and result["deletes"] == {"ok": 2, "info": 0, "fail": 0}


def test_a_value_an_acknowledged_delete_observed_that_comes_back_is_resurrected() -> None:
    result = check_delete(delete_history(), {"k": [2, 3], "j": [10]})
    assert not result["valid"] and result["resurrected_values"] == [("k", 2)]
    result = check_delete(delete_history(), {"k": [1, 3], "j": [10]})      # observed through 2's read
    assert not result["valid"] and result["resurrected_values"] == [("k", 1)]


def test_the_last_acknowledged_write_after_a_delete_is_not_lost_and_a_deleted_key_may_read_empty() -> None:
    result = check_delete(delete_history(), {"k": [], "j": [10]})
    assert not result["valid"] and result["lost_writes"] == [("k", 3)]
    history = delete_history()[:3] + [delete(1, "k", "d3", [], 6, 7, outcome="info")]
    result = check_delete(history, {"k": [], "j": None})
    assert result["lost"] == 0 and result["unread_keys"] == ["j"]
    assert check_delete(delete_history()[:3], {"k": []})["valid"]


def test_a_delete_whose_read_missed_a_write_leaves_that_write_standing_beside_the_tombstone() -> None:
    history = [write(1, "k", 1, [], 0, 1), delete(1, "k", "d1", [], 2, 3)]      # a stale read saw nothing
    assert check_delete(history, {"k": [1]})["valid"]
    assert not check_delete(history, {"k": []})["valid"]                         # 1 was never deleted: lost


def test_a_delete_that_certainly_failed_deletes_nothing_and_unknown_values_are_unexpected() -> None:
    history = [write(1, "k", 1, [], 0, 1), delete(1, "k", "d1", [1], 2, 3, outcome="fail")]
    assert check_delete(history, {"k": []})["lost_writes"] == [("k", 1)]
    assert check_delete(history, {"k": [1, 7]})["unexpected_values"] == [("k", 7)]


def test_a_counter_read_above_the_attempted_sum_is_over_counted() -> None:
    history = [inc(2, 0, 1), inc(3, 0, 1, "info"), counter_read(6, 2, 3)]
    result = check_counter(history, {"c": 5})
    assert not result["valid"] and result["over_counted"] == 1 and result["unexpected"] == 1
    assert check_counter(history, {"c": 2})["over_counted"] == 1                # the read, not the final
    assert check_counter([inc(2, 0, 1), inc(3, 0, 1, "info")], {"c": 5})["over_counted"] == 0
