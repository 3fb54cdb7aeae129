"""Tests of the hybrid logical clock: monotonic under bad wall clocks, and causally later writes win."""

from __future__ import annotations

import threading

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from storage.hlc import MAX_LOGICAL, HybridClock, Timestamp, pack

no_deadline = settings(deadline=None)  # shared CI machines are slow at times; timing is not the property
HOUR = 3600.0


class FakeWall:
    """A wall clock the test sets by hand, in seconds."""

    def __init__(self, seconds: float = 1_700_000_000.0) -> None:
        self.seconds = seconds

    def __call__(self) -> float:
        return self.seconds


timestamps = st.builds(
    Timestamp,
    st.integers(min_value=0, max_value=2**44),
    st.integers(min_value=0, max_value=MAX_LOGICAL),
    st.sampled_from(("a", "b", "c")),
)


def test_now_follows_the_wall_clock_while_it_moves_forward() -> None:
    wall = FakeWall(1000.0)
    clock = HybridClock("a", wall)
    assert clock.now() == Timestamp(1_000_000, 0, "a")
    wall.seconds = 1000.5
    assert clock.now() == Timestamp(1_000_500, 0, "a")
    assert clock.now() == Timestamp(1_000_500, 1, "a")


def test_now_is_strictly_increasing_when_the_wall_clock_jumps_backwards() -> None:
    wall = FakeWall(1000.0)
    clock = HybridClock("a", wall)
    issued = [clock.now()]
    for seconds in (999.0, 500.0, 1000.0, 0.0, 1000.001, 1000.001, 10.0):
        wall.seconds = seconds
        issued.append(clock.now())
    assert issued == sorted(set(issued))
    assert all(ts.wall_ms >= 1_000_000 for ts in issued)


def test_a_causally_later_write_on_a_correct_clock_beats_a_write_from_a_clock_an_hour_ahead() -> None:
    true_time = FakeWall()
    fast = HybridClock("a", lambda: true_time() + HOUR)
    correct = HybridClock("b", true_time)
    ts_a = fast.now()  # A writes with its clock an hour fast
    true_time.seconds += 1.0
    assert correct.now() < ts_a  # a write that never saw A's loses to it: that is LWW
    ts_b = correct.after(ts_a)  # B saw A's write (a read, a merge) and writes after it
    assert ts_b > ts_a
    assert ts_b.wall_ms == ts_a.wall_ms  # B does not jump further ahead than what it saw
    assert correct.now() > ts_b


def test_a_fast_clock_stops_winning_once_real_time_passes_it() -> None:
    true_time = FakeWall()
    fast = HybridClock("a", lambda: true_time() + HOUR)
    correct = HybridClock("b", true_time)
    ts_a = fast.now()
    true_time.seconds += 2 * HOUR
    assert correct.now() > ts_a  # the skew only matters within the skew


def test_observe_alone_issues_nothing_but_the_next_now_is_greater() -> None:
    clock = HybridClock("b", FakeWall(10.0))
    remote = Timestamp(50_000, 7, "zzz")
    clock.observe(remote)
    assert clock.now() == Timestamp(50_000, 8, "b")
    clock.observe(Timestamp(1, 0, "a"))  # an older timestamp changes nothing
    assert clock.now() == Timestamp(50_000, 9, "b")


def test_after_none_is_now() -> None:
    clock = HybridClock("a", FakeWall(1.0))
    assert clock.after(None) == Timestamp(1000, 0, "a")


@no_deadline
@given(timestamps, st.floats(min_value=0, max_value=2e10))
def test_after_is_strictly_greater_than_its_argument(ts: Timestamp, seconds: float) -> None:
    clock = HybridClock("b", FakeWall(seconds))
    assert clock.after(ts) > ts
    assert clock.after(ts) > ts


def test_logical_overflow_borrows_a_millisecond_and_stays_packable() -> None:
    clock = HybridClock("a", FakeWall(1.0))
    clock.observe(Timestamp(1000, MAX_LOGICAL - 1, "z"))
    first, second, third = clock.now(), clock.now(), clock.now()
    assert first == Timestamp(1000, MAX_LOGICAL, "a")
    assert second == Timestamp(1001, 0, "a") and third == Timestamp(1001, 1, "a")
    assert pack(first) < pack(second) < pack(third)


@given(timestamps, timestamps)
def test_pack_orders_like_the_timestamp_without_its_node(x: Timestamp, y: Timestamp) -> None:
    assert (pack(x) < pack(y)) == ((x.wall_ms, x.logical) < (y.wall_ms, y.logical))
    assert pack(x) == x.wall_ms << 16 | x.logical


@pytest.mark.parametrize(
    "bad",
    [Timestamp(1, MAX_LOGICAL + 1, "a"), Timestamp(-1, 0, "a"), Timestamp(1, -1, "a"),
     Timestamp(1, 0, 7), Timestamp(1.5, 0, "a"), (1, 2)],  # type: ignore[arg-type]
)
def test_malformed_timestamps_are_refused(bad: Timestamp) -> None:
    clock = HybridClock("a", FakeWall(1.0))
    with pytest.raises(ValueError):
        clock.observe(bad)
    with pytest.raises(ValueError):
        clock.after(bad)
    with pytest.raises(ValueError):
        pack(bad)
    assert clock.now() == Timestamp(1000, 0, "a")  # nothing of the bad timestamp was merged


def test_concurrent_callers_get_distinct_increasing_timestamps() -> None:
    clock = HybridClock("a", FakeWall(1.0))  # a frozen wall clock: every tick is a logical one
    per_thread: list[list[Timestamp]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def run(out: list[Timestamp]) -> None:
        start.wait()
        for _ in range(2000):
            out.append(clock.now())

    threads = [threading.Thread(target=run, args=(out,)) for out in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    issued = [ts for out in per_thread for ts in out]
    assert len(set(issued)) == len(issued) == 8000
    assert all(out == sorted(out) for out in per_thread)


# --- random interleavings --------------------------------------------------------------------

NODES = ("a", "b", "c")
events = st.lists(
    st.tuples(
        st.sampled_from(("now", "observe", "after", "tick", "jump back")),
        st.sampled_from(NODES),
        st.integers(min_value=0, max_value=1000),  # which earlier timestamp: index modulo the count
    ),
    max_size=60,
)


@no_deadline
@given(events, st.lists(st.floats(min_value=-2 * HOUR, max_value=2 * HOUR), min_size=3, max_size=3))
def test_every_now_is_greater_than_everything_that_clock_issued_or_observed(
    history: list[tuple[str, str, int]], skews: list[float]
) -> None:
    true_time = FakeWall()
    walls = {node: FakeWall(true_time() + skew) for node, skew in zip(NODES, skews)}
    clocks = {node: HybridClock(node, walls[node]) for node in NODES}
    known: dict[str, list[Timestamp]] = {node: [] for node in NODES}  # issued or observed, per clock
    sent: list[Timestamp] = [Timestamp(0, 0, "origin")]
    for kind, node, pick in history:
        clock, other = clocks[node], sent[pick % len(sent)]
        if kind == "tick":
            walls[node].seconds += 0.0005 * (pick + 1)
        elif kind == "jump back":
            walls[node].seconds -= 0.01 * pick
        elif kind == "observe":
            clock.observe(other)
            known[node].append(other)
        else:
            if kind == "after":
                ts = clock.after(other)
                known[node].append(other)
            else:
                ts = clock.now()
            assert all(ts > earlier for earlier in known[node])
            assert ts.node == node and 0 <= ts.logical <= MAX_LOGICAL
            known[node].append(ts)
            sent.append(ts)
