"""A replica handed a whole batch at once: reads in it see the batch's own writes and never stale state."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pytest

from actors.membership import Membership
from storage.codec import decode_object
from actors.messages import Ack, Acks, Batch, Built, CoordinatePut, Drop, ReplicaGet, ReplicaGetReply, ReplicaPut, TreeReply, TreeRequest
from actors.replica import ReplicaActor
from actors.ring import Ring
from actors.stats import Stats
from storage import crdts, objects, versions
from storage.merkle import MerkleTree
from storage.store import MemoryStore

WAIT = 5.0


@pytest.fixture
def replica() -> Iterator[tuple[Any, MemoryStore, "queue.Queue[tuple[str, Any]]"]]:
    store = MemoryStore()
    sent: queue.Queue[tuple[str, Any]] = queue.Queue()
    ring = Ring(["n1", "n2", "n3"], partitions=8, target_n=3)
    membership = Membership("n1", ring)
    membership.publish({node: "up" for node in ring.nodes})
    ref = ReplicaActor.start("n1", store, lambda dest, message: sent.put((dest, message)), Stats(), membership)
    try:
        yield ref, store, sent
    finally:
        ref.stop()


def answer_to(sent: "queue.Queue[tuple[str, Any]]", req_id: int) -> Any:
    """The object a read got (a stored record travels encoded; decoded here, as the coordinator does)."""
    while True:
        _, message = sent.get(timeout=WAIT)
        if isinstance(message, ReplicaGetReply) and message.req_id == req_id:
            return decode_object(message.obj) if type(message.obj) is bytes else message.obj


def test_a_get_in_the_same_batch_as_a_put_of_its_key_sees_the_put(replica: Any) -> None:
    ref, store, sent = replica
    store.apply(objects=[("k", versions.update(None, (), b"old", "n2.x"))])
    old = store.get("k")
    ref.tell(Batch([ReplicaGet(1, "co", "k"), ReplicaGet(2, "co", "other"),
                    CoordinatePut(3, "co", "k", b"new", objects.context(old)), ReplicaGet(4, "co", "k")]))
    assert versions.values(answer_to(sent, 1)) == [b"old"]
    assert versions.values(answer_to(sent, 4)) == [b"new"]


def test_a_get_after_a_drop_in_the_same_batch_does_not_see_the_dropped_object(replica: Any) -> None:
    ref, store, sent = replica
    obj = versions.update(None, (), b"handed off", "n2.x")
    store.apply(objects=[("k", obj), ("j", obj)])
    ref.tell(Batch([ReplicaGet(1, "co", "k"), ReplicaGet(2, "co", "j"), Drop([("k", obj)], "handoff"),
                    ReplicaGet(3, "co", "k")]))
    assert answer_to(sent, 1) == obj
    assert answer_to(sent, 3) is None
    assert store.get("k") is None and store.get("j") == obj


def test_a_replica_put_in_a_batch_merges_into_what_is_stored_not_into_nothing(replica: Any) -> None:
    ref, store, sent = replica
    first = versions.update(None, (), b"first", "n2.x")
    store.apply(objects=[("k", first)])
    concurrent = versions.update(None, (), b"second", "n3.y")
    ref.tell(Batch([ReplicaPut(1, "co", "k", concurrent, None), ReplicaGet(2, "co", "k"), ReplicaGet(3, "co", "z")]))
    assert sorted(versions.values(answer_to(sent, 2))) == [b"first", b"second"]


def test_a_batch_holding_a_message_with_an_unhashable_key_fails_that_message_only(replica: Any) -> None:
    ref, store, sent = replica
    obj = versions.update(None, (), b"v", "n2.x")
    store.apply(objects=[("k", obj)])
    ref.tell(Batch([ReplicaGet(1, "co", ["not", "a", "key"]), ReplicaGet(2, "co", "k"), ReplicaGet(3, "co", "j")]))
    assert answer_to(sent, 2) == obj
    assert ref.is_alive()


def tree_reply(sent: "queue.Queue[tuple[str, Any]]", req_id: int) -> Any:
    while True:
        _, message = sent.get(timeout=WAIT)
        if isinstance(message, TreeReply) and message.req_id == req_id:
            return message.data


def test_the_hash_tree_a_peer_reads_holds_every_committed_write_and_only_the_last_of_each_key(replica: Any) -> None:
    ref, store, sent = replica
    ring = Ring(["n1", "n2", "n3"], partitions=8, target_n=3)
    keys = [f"key{i}" for i in range(40)]
    waiting = set()
    for round_ in range(3):                                   # each key written three times, concurrently
        batch = [ReplicaPut(round_ * 100 + i, "co", key, versions.update(None, (), b"v%d" % round_, f"n{round_}.x"),
                            None) for i, key in enumerate(keys)]
        waiting |= {m.req_id for m in batch}
        ref.tell(Batch(batch))
    while waiting:                                            # acks come after the commit
        _, message = sent.get(timeout=WAIT)
        if isinstance(message, Ack):
            waiting.discard(message.req_id)
        elif isinstance(message, Acks):                       # one commit's acks to one coordinator
            waiting.difference_update(message.req_ids)
    expected = MerkleTree()
    for key in keys:
        assert len(versions.values(store.get(key))) == 3
        expected.update((ring.partition_of(key), 3), key, store.get(key))   # (partition, the bucket's n)
    ref.tell(TreeRequest(2000, "co", 0, "partitions"))                    # before any partition caught up
    assert set(tree_reply(sent, 2000)) == set(expected.partitions())
    for i, partition in enumerate(sorted({ring.partition_of(key) for key in keys})):
        ref.tell(TreeRequest(1000 + i, "co", partition, "buckets", (), 3))
        assert tree_reply(sent, 1000 + i) == expected.buckets((partition, 3))
    ref.tell(TreeRequest(2001, "co", 0, "partitions"))
    assert tree_reply(sent, 2001) == {p: expected.key_count(p) for p in expected.partitions()}


def test_the_acknowledgements_of_one_commit_reach_each_coordinator_as_one_message(replica: Any) -> None:
    ref, store, sent = replica
    puts = [ReplicaPut(i, "co1" if i % 2 else "co2", f"k{i}", versions.update(None, (), b"v", "n2.x"), None)
            for i in range(10)]
    ref.tell(Batch(puts))
    got: dict[str, list[int]] = {}
    while sum(len(ids) for ids in got.values()) < 10:
        dest, message = sent.get(timeout=WAIT)
        assert isinstance(message, Acks), message
        got.setdefault(dest, []).extend(message.req_ids)
    assert sorted(got["co1"]) == [1, 3, 5, 7, 9] and sorted(got["co2"]) == [0, 2, 4, 6, 8]
    assert all(store.get(f"k{i}") is not None for i in range(10))   # acknowledged only once committed


def built(sent: queue.Queue[tuple[str, Any]], req_id: int) -> Any:
    while True:
        _, message = sent.get(timeout=WAIT)
        if isinstance(message, Built) and message.req_id == req_id:
            return message.obj


@pytest.mark.parametrize("kind, op, value_of", [
    ("siblings", None, lambda obj: sorted(versions.values(obj))),
    ("crdt:counter", ("increment", 1), lambda obj: crdts.value(obj))])
def test_a_key_built_again_after_this_replica_dropped_it_gets_dots_no_replica_has_seen(
        replica: Any, kind: str, op: Any, value_of: Any) -> None:
    # As a fallback, this node coordinated a write of "k", handed it off to the primaries and
    # dropped its copy. When it coordinates "k" again (a blind put, or an increment), it has no
    # copy to count its own dots from: reusing them, the primaries would take the new write for
    # one they already hold, acknowledge it, and keep only the old one (Riak's kv679).
    ref, _, sent = replica
    ref.tell(CoordinatePut(1, "co", "k", b"first", (), kind=kind, op=op, op_id="op-1" if op else None))
    first = built(sent, 1)
    ref.tell(Drop([("k", first)], "handoff"))
    ref.tell(CoordinatePut(2, "co", "k", b"second", (), kind=kind, op=op, op_id="op-2" if op else None))
    second = built(sent, 2)
    held_by_the_primaries = objects.merge(first, second)
    assert value_of(held_by_the_primaries) == ([b"first", b"second"] if kind == "siblings" else 2)


def test_only_the_dropped_key_gets_a_new_actor_id_and_keeps_it_for_its_later_writes(replica: Any) -> None:
    # A new id for the whole replica would add a version-vector entry to every key it writes next.
    ref, _, sent = replica
    ref.tell(CoordinatePut(1, "co", "k", b"first", ()))
    ref.tell(CoordinatePut(2, "co", "other", b"one", ()))
    k1, other1 = built(sent, 1), built(sent, 2)
    ref.tell(Drop([("k", k1)], "handoff"))
    ref.tell(CoordinatePut(3, "co", "k", b"second", ()))
    k2 = built(sent, 3)
    ref.tell(CoordinatePut(4, "co", "k", b"third", objects.context(k2)))
    ref.tell(CoordinatePut(5, "co", "other", b"two", objects.context(other1)))
    k3, other2 = built(sent, 4), built(sent, 5)
    assert dict(objects.context(k1)).keys() != dict(objects.context(k2)).keys()
    assert dict(objects.context(k3)).keys() == dict(objects.context(k2)).keys()    # its own id, kept
    assert dict(objects.context(other2)) == {actor: 2 for actor in dict(objects.context(other1))}
    assert versions.values(k3) == [b"third"] and versions.values(other2) == [b"two"]
