"""The linearizability checker (Wing–Gong/Lowe over a compare-and-set register), on hand-made histories."""

from __future__ import annotations

import random

import pytest

from actors.linearizable import RegisterOp, check_register


def op(process: int, kind: str, invoked: float, completed: float | None, value=None, result=None) -> RegisterOp:
    return RegisterOp(process, kind, invoked, completed, value, result)


def test_a_sequential_history_is_linearizable() -> None:
    history = [op(1, "write", 0, 1, "a"), op(1, "read", 2, 3, result="a"), op(1, "cas", 4, 5, ("a", "b"), True),
               op(1, "read", 6, 7, result="b"), op(1, "cas", 8, 9, ("a", "c"), False)]
    assert check_register(history)["valid"] is True


def test_a_read_concurrent_with_a_write_may_see_either_value() -> None:
    for seen in (None, "a"):
        assert check_register([op(1, "write", 0, 10, "a"), op(2, "read", 1, 2, result=seen)])["valid"] is True


def test_a_read_that_misses_a_write_completed_before_it_began_is_not_linearizable() -> None:
    verdict = check_register([op(1, "write", 0, 1, "a"), op(2, "read", 2, 3, result=None)])
    assert verdict["valid"] is False and verdict["cannot_follow"].kind == "read"


def test_two_unique_claims_that_both_succeeded_are_not_linearizable() -> None:
    history = [op(1, "cas", 0, 5, (None, "alice"), True), op(2, "cas", 1, 6, (None, "bob"), True)]
    assert check_register(history)["valid"] is False


def test_a_claim_reported_failed_while_the_name_was_free_is_not_linearizable() -> None:
    history = [op(1, "cas", 0, 1, (None, "alice"), False), op(2, "read", 2, 3, result=None)]
    assert check_register(history)["valid"] is False


def test_an_indeterminate_write_may_take_effect_later_or_never() -> None:
    took = [op(1, "write", 0, None, "a"), op(2, "read", 5, 6, result=None), op(2, "read", 7, 8, result="a")]
    never = [op(1, "write", 0, None, "a"), op(2, "read", 5, 6, result=None)]
    assert check_register(took)["valid"] is True and check_register(never)["valid"] is True
    flip_back = took + [op(2, "read", 9, 10, result=None)]        # it cannot take effect twice
    assert check_register(flip_back)["valid"] is False


def test_a_value_nobody_wrote_is_not_linearizable() -> None:
    assert check_register([op(1, "write", 0, 1, "a"), op(2, "read", 2, 3, result="z")])["valid"] is False


def test_a_random_history_of_a_real_register_is_always_linearizable() -> None:
    rng = random.Random(7)
    for _ in range(50):
        value, clock, history = None, 0.0, []
        pending: list[tuple[int, str, float, object]] = []
        for _ in range(30):                              # operations overlap: each takes effect at one instant
            process = rng.randrange(4)
            kind = rng.choice(["read", "write", "cas"])
            invoked = clock
            clock += rng.random()
            if kind == "read":
                history.append(op(process, "read", invoked, clock + rng.random(), result=value))
            elif kind == "write":
                new = rng.choice("abc")
                value = new
                history.append(op(process, "write", invoked, clock + rng.random(), new))
            else:
                expected, new = rng.choice([None, "a", "b", "c"]), rng.choice("abc")
                swapped = value == expected
                value = new if swapped else value
                done = None if rng.random() < 0.1 and swapped else clock + rng.random()
                history.append(op(process, "cas", invoked, done, (expected, new), swapped))
        assert check_register(history)["valid"] is True, history


def test_a_search_too_large_for_its_limit_is_unknown_not_a_verdict() -> None:
    history = [op(i, "write", 0, 100, i) for i in range(60)] + [op(99, "read", 200, 201, result=-1)]
    verdict = check_register(history, time_limit=0.2)
    assert verdict["valid"] in ("unknown", False)
    if verdict["valid"] == "unknown":
        assert verdict["reason"] in ("time limit", "state limit")


@pytest.mark.parametrize("value", ["a", None])
def test_an_empty_history_and_a_lone_read_of_the_initial_value_are_linearizable(value) -> None:
    assert check_register([])["valid"] is True
    assert check_register([op(1, "read", 0, 1, result=value)], initial=value)["valid"] is True


# --- over a chaos history (actors.serial_workloads) ------------------------------------------------

def test_a_history_of_claims_with_two_winners_of_one_name_is_not_linearizable() -> None:
    from actors.history import Op
    from actors.serial_workloads import MISMATCH, check_linearizable

    history = [
        Op(1, "claim", "name:0", "p1", 0.0, 1.0, "ok"),
        Op(2, "claim", "name:0", "p2", 0.5, 1.5, "ok"),                  # a second winner
        Op(3, "claim", "name:1", "p3", 0.0, 1.0, "ok"),
        Op(4, "claim", "name:1", "p4", 0.2, 1.2, "fail", MISMATCH),      # lost to p3: fine
        Op(5, "claim", "name:1", "p5", 0.3, None, "info"),               # indeterminate, never took
        Op("final", "final-read", "name:1", None, 2.0, 2.1, "ok", "p3"),
    ]
    verdict = check_linearizable(history)
    assert verdict["valid"] is False and verdict["not_linearizable"] == ["name:0"]
    assert verdict["two_winners"] == ["name:0"] and verdict["indeterminate"] == 1
    assert check_linearizable(history[2:])["valid"] is True


def test_a_mismatch_reported_while_the_name_was_free_is_caught() -> None:
    from actors.history import Op
    from actors.serial_workloads import MISMATCH, check_linearizable

    history = [Op(1, "claim", "name:0", "p1", 0.0, 1.0, "fail", MISMATCH),
               Op("final", "final-read", "name:0", None, 2.0, 2.1, "ok", None)]
    assert check_linearizable(history)["valid"] is False
    refused = [Op(1, "claim", "name:0", "p1", 0.0, 1.0, "fail", "InvalidRequest: bad"),   # never ran
               Op("final", "final-read", "name:0", None, 2.0, 2.1, "ok", None)]
    assert check_linearizable(refused)["valid"] is True
