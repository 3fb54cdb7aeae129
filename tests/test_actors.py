"""The coordinator and replica actors, in one process, over a fake network with a fake clock.

Each test starts one coordinator (node n0) and replicas n1, n2, n3 with in-memory stores
(see ``tests/fakes.py``); the fixture stops every actor afterwards. Deadlines move only when
a test advances the fake clock and tells a ``Tick``; tests wait on reply queues, the
network's record of sent messages and the stores, never on sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import msgspec
import pykka
import pytest

from actors.errors import InvalidRequest, QuorumFailed, QuorumValueError, StorageFull
from actors.coordinator import BUILD_MARGIN
from actors.messages import (Ack, BucketProps, Built, ClientGet, ClientPut, ClientUpdate, CoordinatePut, GetResult, Refused,
                             ReplicaGet, ReplicaGetReply, ReplicaPut)
from actors.replica import local_object
from storage import versions
from storage.versions import DVVSet

from fakes import FakeCluster, FakeConnection
from waiting import wait_for

NODES = ("n1", "n2", "n3")
TIMEOUT = 3.0


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    try:
        yield FakeCluster(NODES, timeout=TIMEOUT)
    finally:
        pykka.ActorRegistry.stop_all()


@pytest.fixture
def reading_all() -> Iterator[FakeCluster]:
    """A cluster whose every read asks all n replicas (read_repair_chance 1.0, as Riak always does)."""
    try:
        yield FakeCluster(NODES, timeout=TIMEOUT, read_repair_chance=1.0)
    finally:
        pykka.ActorRegistry.stop_all()


def holds(*expected: bytes) -> Callable[[DVVSet | None], bool]:
    """A store condition: the object's sibling values are exactly ``expected`` (in any order)."""
    return lambda obj: sorted(versions.values(obj)) == sorted(expected)


def stored_on_all_three(cluster: FakeCluster, value: bytes) -> tuple[str, list[str]]:
    """A key led by n1, written with w=3, and its primaries in preference order."""
    key = cluster.key_led_by("n1")
    cluster.put(key, value, w=3).ok()
    return key, cluster.primaries(key)


def is_tombstone(obj: DVVSet | None) -> bool:
    """A store condition: the object is a tombstone, as ``inspect`` reports it."""
    view = local_object(obj)
    return view is not None and view.tombstone


# --- the healthy path -------------------------------------------------------------------------


def test_a_put_acknowledged_at_w2_is_readable_at_r2_and_every_replica_stores_it(cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    context = cluster.put(key, b"v1", w=2).ok()

    read = cluster.get(key, r=2).ok()

    assert read == GetResult([b"v1"], context)
    for node in NODES:
        cluster.stores[node].wait_for(key, holds(b"v1"))


def test_two_puts_without_context_become_siblings_and_a_put_with_the_context_of_a_read_replaces_both(
        cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    cluster.put(key, b"apples").ok()
    cluster.put(key, b"pears").ok()

    both = cluster.get(key).ok()
    assert sorted(both.values) == [b"apples", b"pears"]

    cluster.put(key, b"apples+pears", context=both.context).ok()
    assert cluster.get(key).ok().values == [b"apples+pears"]
    for node in NODES:
        cluster.stores[node].wait_for(key, holds(b"apples+pears"))


def test_a_delete_makes_a_later_get_return_no_values_and_leaves_a_tombstone_on_every_replica(
        cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n2")
    cluster.put(key, b"doomed").ok()
    seen = cluster.get(key).ok()

    cluster.put(key, None, context=seen.context).ok()

    after = cluster.get(key).ok()
    assert after.values == []
    assert versions.context_descends(after.context, seen.context) and after.context != seen.context
    for node in NODES:
        stored = cluster.stores[node].wait_for(key, is_tombstone)
        assert versions.values(stored) == [None]


# --- partitions and unreachable replicas --------------------------------------------------


def test_with_n3_partitioned_away_w2_writes_succeed_and_w3_writes_fail_with_quorum_failed_at_the_deadline(
        cluster: FakeCluster) -> None:
    cluster.net.partition("n3")
    key = cluster.key_led_by("n1")

    cluster.put(key, b"two of three", w=2).ok()

    pending = cluster.put(key, b"all three", w=3)
    req_id = cluster.net.wait_sent(CoordinatePut, value=b"all three")[0].message.req_id
    cluster.net.wait_sent(Ack, count=2, dest="n0", delivered=True, req_id=req_id)
    cluster.settle("coordinator")
    assert pending.replies.empty(), "W=3 answered with only two replicas reachable"

    cluster.advance(TIMEOUT + 0.01)

    error = pending.failure()
    assert isinstance(error, QuorumFailed)
    assert (error.needed, error.got, sorted(error.replicas)) == (3, 2, ["n1", "n2"])
    assert cluster.stores["n3"].get(key) is None
    assert cluster.stats.get("put.quorum_failed") == 1


def test_a_put_whose_coordinating_replica_is_unreachable_is_rerouted_to_the_next_replica_and_succeeds(
        cluster: FakeCluster) -> None:
    cluster.net.on_drop = cluster.net.report_unreachable
    cluster.net.partition("n1")
    key = cluster.key_led_by("n1")
    _, second, third = cluster.primaries(key)

    cluster.put(key, b"rerouted", w=2).ok()            # no Tick, no clock change: the Unreachable did it

    coordinate = cluster.net.sent(CoordinatePut)
    assert [(s.dest, s.delivered) for s in coordinate] == [("n1", False), (second, True)]
    assert cluster.stats.get("put.rerouted") == 1
    for node in (second, third):
        cluster.stores[node].wait_for(key, holds(b"rerouted"))
    assert cluster.stores["n1"].get(key) is None


def test_a_put_whose_coordinating_replica_never_answers_is_rerouted_once_its_build_window_and_margin_have_passed(
        cluster: FakeCluster) -> None:
    cluster.net.partition("n1")                          # dropped silently: no Unreachable
    key = cluster.key_led_by("n1")
    _, second, third = cluster.primaries(key)
    pending = cluster.put(key, b"slowly", w=2)
    cluster.net.wait_sent(CoordinatePut, dest="n1", delivered=False)

    cluster.advance(TIMEOUT / 3 * (1 + BUILD_MARGIN) - 0.05)
    cluster.settle("coordinator")
    assert cluster.stats.get("put.rerouted") == 0
    assert pending.replies.empty()
    assert cluster.net.sent(CoordinatePut, dest=second) == []

    cluster.advance(0.1)

    pending.ok()
    assert cluster.stats.get("put.rerouted") == 1
    assert [s.dest for s in cluster.net.sent(CoordinatePut)] == ["n1", second]
    for node in (second, third):
        cluster.stores[node].wait_for(key, holds(b"slowly"))


# --- read repair ----------------------------------------------------------------------------


def test_a_get_that_finds_a_replica_without_the_key_repairs_it_with_the_merged_object(
        reading_all: FakeCluster) -> None:
    cluster = reading_all
    key = cluster.key_led_by("n1")
    cluster.net.partition("n3")
    cluster.put(key, b"missed by n3", w=2).ok()
    cluster.net.heal("n3")
    assert cluster.stores["n3"].get(key) is None

    assert cluster.get(key, r=2).ok().values == [b"missed by n3"]

    repaired = cluster.stores["n3"].wait_for(key, holds(b"missed by n3"))
    assert versions.equal(repaired, cluster.stores["n1"].get(key))
    assert cluster.stats.get("read_repairs") == 1
    [repair] = cluster.net.sent(ReplicaPut, dest="n3", delivered=True)
    assert repair.message.want_ack is False


def test_a_get_that_finds_a_replica_with_an_older_version_repairs_it_with_the_merged_object(
        reading_all: FakeCluster) -> None:
    cluster = reading_all
    key = cluster.key_led_by("n2")
    cluster.put(key, b"old", w=3).ok()
    context = cluster.get(key, r=3).ok().context
    cluster.net.partition("n3")
    cluster.put(key, b"new", context=context, w=2).ok()
    cluster.net.heal("n3")
    assert versions.values(cluster.stores["n3"].get(key)) == [b"old"]

    assert cluster.get(key, r=3).ok().values == [b"new"]

    repaired = cluster.stores["n3"].wait_for(key, holds(b"new"))
    assert versions.equal(repaired, cluster.stores["n2"].get(key))
    assert cluster.stats.get("read_repairs") == 1


def test_a_get_whose_replicas_all_agree_repairs_nothing(reading_all: FakeCluster) -> None:
    cluster = reading_all
    key = cluster.key_led_by("n3")
    cluster.put(key, b"same everywhere", w=3).ok()

    cluster.get(key, r=2).ok()
    cluster.net.wait_sent(ReplicaGet, count=3)              # every replica asked
    cluster.settle(*NODES)
    cluster.settle("coordinator")

    assert cluster.stats.get("read_repairs") == 0
    assert cluster.net.sent(ReplicaPut, want_ack=False) == []



# --- which replicas a read asks ---------------------------------------------------------------


def test_a_get_at_r2_asks_two_replicas_and_repairs_a_stale_one_among_them(cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    first, second, third = cluster.primaries(key)
    cluster.net.partition(second)
    cluster.put(key, b"missed", w=2).ok()
    cluster.net.heal(second)

    assert cluster.get(key, r=2).ok().values == [b"missed"]

    asked = [s.dest for s in cluster.net.wait_sent(ReplicaGet, count=2)]
    assert asked == [first, second]                  # no latency seen yet: preference order
    cluster.stores[second].wait_for(key, holds(b"missed"))
    cluster.settle(*NODES)
    cluster.settle("coordinator")
    assert len(cluster.net.sent(ReplicaGet)) == 2 and cluster.stats.get("read_repairs") == 1


def test_a_get_asks_a_skipped_replica_at_once_when_an_asked_one_is_unreachable(cluster: FakeCluster) -> None:
    key, (first, second, third) = stored_on_all_three(cluster, b"v")
    cluster.net.on_drop = cluster.net.report_unreachable
    cluster.net.partition(first)

    assert cluster.get(key, r=2).ok().values == [b"v"]       # no clock advance: no deadline was needed

    assert sorted(s.dest for s in cluster.net.sent(ReplicaGet)) == sorted([first, second, third])


def test_a_get_whose_replica_is_slow_asks_a_skipped_one_after_the_speculation_delay(cluster: FakeCluster) -> None:
    key, (first, second, third) = stored_on_all_three(cluster, b"v")
    cluster.net.hold(lambda s: isinstance(s.message, ReplicaGet) and s.dest == second)
    pending = cluster.get(key, r=2)
    cluster.net.wait_sent(ReplicaGet, dest=first)
    assert not cluster.net.sent(ReplicaGet, dest=third)

    cluster.advance(0.05)                            # past the delay (its floor: no reads timed yet)

    assert pending.ok().values == [b"v"]
    assert [s.dest for s in cluster.net.sent(ReplicaGet)] == [first, third]
    assert cluster.stats.get("get.speculative") == 1
    cluster.net.release()


def test_reads_prefer_the_replica_that_answered_faster(cluster: FakeCluster) -> None:
    key, (first, second, third) = stored_on_all_three(cluster, b"v")
    slow = first
    cluster.net.hold(lambda s: isinstance(s.message, ReplicaGet) and s.dest == slow)
    pending = cluster.get(key, r=2)
    cluster.net.wait_sent(ReplicaGetReply, src=second)
    cluster.settle("coordinator")                    # the fast answer is timed before the clock moves
    cluster.advance(0.05)                            # the slow replica's answer comes 50 ms late
    pending.ok()
    cluster.net.release()
    cluster.net.wait_sent(ReplicaGetReply, src=slow)
    cluster.settle("coordinator")
    before = len(cluster.net.sent(ReplicaGet))

    cluster.get(key, r=2).ok()

    asked = [s.dest for s in cluster.net.wait_sent(ReplicaGet, count=before + 2)[before:]]
    assert slow not in asked and sorted(asked) == sorted([second, third])

# --- invalid requests -----------------------------------------------------------------------


@pytest.mark.parametrize("request_, error", [
    pytest.param(ClientPut(7, "", b"v"), InvalidRequest, id="put-with-an-empty-key"),
    pytest.param(ClientPut(7, "k", b"v", w=4), QuorumValueError, id="put-with-w4-over-n3"),
    pytest.param(ClientPut(7, "k", "not bytes"), InvalidRequest,  # type: ignore[arg-type]
                 id="put-with-a-str-value"),
    pytest.param(ClientGet(7, ""), InvalidRequest, id="get-with-an-empty-key"),
    pytest.param(ClientGet(7, "k", r=4), QuorumValueError, id="get-with-r4-over-n3"),
])
def test_an_invalid_request_is_answered_with_its_own_error_type_and_the_coordinator_keeps_serving(
        cluster: FakeCluster, request_: ClientPut | ClientGet, error: type[InvalidRequest]) -> None:
    conn = FakeConnection()
    cluster.coordinator.tell(msgspec.structs.replace(request_, reply_to=conn))

    reply = conn.reply()
    assert reply.req_id == 7 and reply.ok is False
    assert type(reply.result) is error
    assert cluster.net.sent() == [], "an invalid request reached a replica"

    cluster.put("still-serving", b"yes").ok()
    assert cluster.get("still-serving").ok().values == [b"yes"]


# --- full stores ------------------------------------------------------------------------------


def test_a_put_that_no_replica_can_store_fails_with_storage_full_and_nothing_is_acknowledged(
        cluster: FakeCluster) -> None:
    for store in cluster.stores.values():
        store.full = True
    key = cluster.key_led_by("n1")

    error = cluster.put(key, b"no room", w=2).failure()

    assert isinstance(error, StorageFull)
    assert all(store.get(key) is None for store in cluster.stores.values())
    assert [s.message.ok for s in cluster.net.sent(Ack)].count(True) == 0
    assert cluster.stats.get("put.quorum_failed") == 1
    # The client hears of the failure once two replicas refused; n1's own refusal may count just after.
    wait_for(lambda: cluster.replica_stats["n1"].get("writes.refused_full") == 1, timeout=5,
             what="n1 counting its refused write", explain=lambda: cluster.replica_stats["n1"])


def test_a_put_that_only_one_replica_can_store_fails_at_w2_without_waiting_for_the_deadline(
        cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    cluster.stores["n2"].full = cluster.stores["n3"].full = True

    error = cluster.put(key, b"one copy", w=2).failure()        # the clock never moves

    assert isinstance(error, StorageFull), repr(error)
    assert cluster.stores["n2"].get(key) is None and cluster.stores["n3"].get(key) is None
    nacks = [s for s in cluster.net.sent(Ack) if not s.message.ok]
    assert sorted(s.src for s in nacks) == ["n2", "n3"]
    assert all(isinstance(s.message.error, StorageFull) for s in nacks)
    assert cluster.stats.get("put.quorum_failed") == 1


def test_a_put_that_two_replicas_can_store_succeeds_at_w2_despite_one_full_store(cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    cluster.stores["n3"].full = True

    cluster.put(key, b"two copies", w=2).ok()

    for node in ("n1", "n2"):
        cluster.stores[node].wait_for(key, holds(b"two copies"))
    assert cluster.stores["n3"].get(key) is None


# --- requests that must not kill an actor ---------------------------------------------------
# Each of these killed an actor at commit f46ad7d (a tell whose handler raises stops a Pykka actor).


@pytest.mark.parametrize("op", ["get", "put"])
def test_a_key_that_is_not_valid_unicode_is_refused_as_invalid_and_kills_no_actor(
        cluster: FakeCluster, op: str) -> None:
    bad = "k\ud800"                                      # survives pickling, so a client can send it
    conn = cluster.get(bad) if op == "get" else cluster.put(bad, b"v")
    dead = cluster.settle("coordinator") + cluster.settle(*NODES)

    assert dead == [], f"actors killed by one request: {dead}"
    assert type(conn.reply(timeout=0.5).result) is InvalidRequest


def test_a_context_with_a_negative_counter_is_refused_as_invalid_and_kills_no_replica(cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    conn = cluster.put(key, b"v", context=(("some-actor", -1),))
    dead = cluster.settle("coordinator") + cluster.settle(*NODES)

    assert dead == [], f"actors killed by one request: {dead}"
    assert type(conn.reply(timeout=0.5).result) is InvalidRequest


@pytest.mark.parametrize("op", ["get", "put"])
def test_a_request_with_a_timeout_that_is_not_a_number_is_refused_as_invalid_and_the_coordinator_survives(
        cluster: FakeCluster, op: str) -> None:
    conn = cluster.get("k", timeout="soon") if op == "get" else cluster.put("k", b"v", timeout="soon")

    assert cluster.settle("coordinator") == [], "the coordinator died"
    assert type(conn.reply(timeout=0.5).result) is InvalidRequest


def test_a_put_with_a_nan_timeout_is_refused_as_invalid_instead_of_never_expiring(cluster: FakeCluster) -> None:
    cluster.net.partition("n2", "n3")                    # so only a deadline could end the request
    conn = cluster.put(cluster.key_led_by("n1"), b"v", timeout=float("nan"))
    cluster.advance(1e9)
    cluster.settle("coordinator")

    assert type(conn.reply(timeout=0.5).result) is InvalidRequest


def test_a_dot_handed_out_by_a_replica_whose_commit_failed_is_never_reused_for_another_value(
        cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    cluster.stores["n1"].full = True
    cluster.put(key, b"first", w=2).ok()                   # n2 and n3 store it under n1's new dot; n1 does not
    for node in ("n2", "n3"):
        cluster.stores[node].wait_for(key, holds(b"first"))
    cluster.stores["n1"].full = False

    cluster.put(key, b"second", w=3).ok()                  # no context: concurrent with "first"

    assert sorted(cluster.get(key, r=3).ok().values) == [b"first", b"second"]
    for node in NODES:
        assert b"second" in versions.values(cluster.stores[node].get(key)), f"{node} lost an acknowledged write"


# --- a slow coordinating replica: the write is built once -------------------------------


def test_a_put_rerouted_away_from_a_slow_coordinating_replica_reads_back_as_one_value(cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    cluster.net.partition("n1")
    pending = cluster.put(key, b"once", w=2)
    [slow] = cluster.net.wait_sent(CoordinatePut, dest="n1", delivered=False)
    cluster.advance(TIMEOUT / 3 * (1 + BUILD_MARGIN) + 0.01)
    pending.ok()
    cluster.net.heal("n1")
    cluster.net.replicas["n1"].tell(slow.message)          # the slow replica gets to it at last, and refuses
    cluster.net.wait_sent(Refused, src="n1")

    assert cluster.get(key, r=3).ok().values == [b"once"]
    assert cluster.replica_stats["n1"].get("put.too_late_to_build") == 1


def test_an_increment_whose_first_replica_was_paused_moves_on_only_once_it_refuses_and_counts_once(cluster: FakeCluster) -> None:
    props = BucketProps("hits", "counter", 3, 2, 2)
    cluster.membership.buckets["hits"] = props
    key = "hits\x00" + cluster.key_led_by("n1", prefix="page")
    plain = key.split("\x00", 1)[1]
    cluster.net.partition("n1")                          # paused: the operation waits in its socket
    pending = FakeConnection()
    cluster.coordinator.tell(ClientUpdate(1001, "hits", plain, ("increment", 1), "op-1", reply_to=pending))
    [late] = cluster.net.wait_sent(CoordinatePut, dest="n1", delivered=False)
    cluster.advance(TIMEOUT / 3 * (1 + BUILD_MARGIN) + 0.01)
    cluster.settle("coordinator")
    assert [s.dest for s in cluster.net.sent(CoordinatePut)] == ["n1"]   # silence: n1 may have built it
    cluster.net.heal("n1")
    cluster.net.replicas["n1"].tell(late.message)        # n1 resumes, finds the operation too late, refuses
    cluster.net.wait_sent(Refused, src="n1")
    pending.ok()                                         # built by the next replica instead
    conn = FakeConnection()
    cluster.coordinator.tell(ClientGet(1002, plain, bucket="hits", r=3, reply_to=conn))
    assert conn.ok().value == 1
    held = cluster.stores["n1"].get(key)                 # n1 holds the other replica's increment only
    assert held is None or not any(entry[0].startswith("n1.") for entry in held.state[0])


def test_a_put_refused_by_full_stores_fails_with_the_same_error_whatever_order_the_answers_arrive_in(
        cluster: FakeCluster) -> None:
    key = cluster.key_led_by("n1")
    cluster.stores["n2"].full = cluster.stores["n3"].full = True

    cluster.net.hold(lambda s: isinstance(s.message, Ack) and s.src in ("n2", "n3"))
    n1_first = cluster.put(key, b"a", w=2)
    cluster.net.wait_sent(Ack, src="n1", delivered=True)
    cluster.net.release()
    error_when_n1_answers_first = n1_first.failure()

    cluster.net.hold(lambda s: isinstance(s.message, Ack) and s.src == "n1")
    n1_last = cluster.put(key, b"b", w=2)
    error_when_n1_answers_last = n1_last.failure()
    cluster.net.release()

    assert type(error_when_n1_answers_first) is type(error_when_n1_answers_last) is StorageFull, (
        error_when_n1_answers_first, error_when_n1_answers_last)


def test_an_unreadable_record_in_a_read_answer_counts_as_no_answer(cluster: FakeCluster) -> None:
    key, (first, second, third) = stored_on_all_three(cluster, b"v")
    cluster.net.hold(lambda s: isinstance(s.message, ReplicaGetReply) and s.src == first)
    pending = cluster.get(key, r=2)
    [ask] = cluster.net.wait_sent(ReplicaGet, dest=first)

    cluster.coordinator.tell(ReplicaGetReply(ask.message.req_id, first, b"\x01not a record"))

    assert pending.ok().values == [b"v"]
    assert sorted(s.dest for s in cluster.net.sent(ReplicaGet)) == sorted([first, second, third])
    cluster.net.release()


def test_an_increment_whose_first_replica_stays_silent_is_not_built_elsewhere_and_fails_at_its_deadline(
        cluster: FakeCluster) -> None:
    cluster.membership.buckets["hits"] = BucketProps("hits", "counter", 3, 2, 2)
    plain = cluster.key_led_by("n1", prefix="page")
    cluster.net.hold(lambda s: isinstance(s.message, Built) and s.src == "n1")   # n1 builds; its answer is lost
    pending = FakeConnection()
    cluster.coordinator.tell(ClientUpdate(1001, "hits", plain, ("increment", 1), "op-1", reply_to=pending))
    cluster.net.wait_sent(Ack, src="n1")                 # built and committed there
    cluster.advance(TIMEOUT / 3 * (1 + BUILD_MARGIN) + 0.01)
    cluster.settle("coordinator")
    assert [s.dest for s in cluster.net.sent(CoordinatePut)] == ["n1"]
    cluster.advance(TIMEOUT)
    assert isinstance(pending.failure(), QuorumFailed)   # indeterminate for the client: n1 did apply it
    cluster.net.release()
    conn = FakeConnection()                              # a retry with the same op id meets n1 again
    cluster.coordinator.tell(ClientUpdate(1002, "hits", plain, ("increment", 1), "op-1", reply_to=conn))
    conn.ok()
    read = FakeConnection()
    cluster.coordinator.tell(ClientGet(1003, plain, bucket="hits", r=3, reply_to=read))
    assert read.ok().value == 1


# --- operations: built by the first reachable primary, counted once ------------------------------

def test_an_operation_is_built_by_the_first_reachable_primary_not_by_the_fallback_in_the_down_primarys_slot(
) -> None:
    cluster = FakeCluster(("n1", "n2", "n3", "n4"), timeout=TIMEOUT)
    try:
        cluster.membership.buckets["carts"] = BucketProps("carts", "set", 3, 2, 2)
        plain = next(f"cart-{i}" for i in range(10_000)
                     if cluster.ring.primaries(f"carts\x00cart-{i}", 3)[0] == "n4")
        first, second, _ = cluster.ring.primaries(f"carts\x00{plain}", 3)
        cluster.membership.publish({"n1": "up", "n2": "up", "n3": "up", "n4": "down"})
        targets = cluster.membership.preference_list(f"carts\x00{plain}", 3)
        assert targets[0][1] == first                    # a fallback holds the down primary's slot...
        conn = FakeConnection()
        cluster.coordinator.tell(ClientUpdate(1, "carts", plain, ("add", "soap"), "op-1", reply_to=conn))
        conn.ok()
        [built_by] = cluster.net.sent(CoordinatePut)
        assert built_by.dest == second                   # ...but the first primary that is up builds it
    finally:
        pykka.ActorRegistry.stop_all()


def test_an_increment_built_again_by_the_next_primary_after_the_first_froze_counts_once(cluster: FakeCluster) -> None:
    cluster.membership.buckets["hits"] = BucketProps("hits", "counter", 3, 2, 2)
    plain = cluster.key_led_by("n1", prefix="page")
    key = "hits\x00" + plain
    while cluster.primaries(key)[0] != "n1":             # a key of the bucket that n1 leads
        plain += "x"
        key = "hits\x00" + plain
    cluster.net.hold(lambda sent: sent.src == "n1")      # n1 builds the increment, then freezes before answering
    first = FakeConnection()
    cluster.coordinator.tell(ClientUpdate(1, "hits", plain, ("increment", 5), "op-once", timeout=1.0,
                                          reply_to=first))
    cluster.stores["n1"].wait_for(key, lambda obj: obj is not None)
    cluster.advance(1.01)
    assert type(first.reply().result) is QuorumFailed   # indeterminate: the client retries with the same id
    cluster.membership.publish({"n1": "down", "n2": "up", "n3": "up"})
    retry = FakeConnection()
    cluster.coordinator.tell(ClientUpdate(2, "hits", plain, ("increment", 5), "op-once", reply_to=retry))
    retry.ok()                                           # built a second time, by n2: it had not seen the first
    cluster.net.release()
    cluster.membership.publish({"n1": "up", "n2": "up", "n3": "up"})
    read = FakeConnection()
    cluster.coordinator.tell(ClientGet(3, plain, bucket="hits", r=3, reply_to=read))
    assert read.ok().value == 5                          # both builds met in the merge: counted once
