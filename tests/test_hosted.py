"""Actors hosted on a node's I/O loop, and the replica's committer that keeps disk waits off that loop."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from actors.coordinator import CoordinatorActor, Settings
from actors.ioloop import IOLoop
from actors.mailbox import Actor, hosted_actor, hosted_by
from actors.membership import Membership
from actors.messages import (
    Ack,
    Acks,
    Batch,
    Built,
    ClientGet,
    ClientPut,
    CoordinatePut,
    Drop,
    ReplicaGet,
    ReplicaGetReply,
    ReplicaPut,
    Tick,
)
from actors.replica import ReplicaActor
from actors.ring import Ring
from actors.stats import Stats
from storage import versions
from storage.codec import CodecError, decode_object
from storage.store import MemoryStore, StoreFull
from fakes import FakeConnection

WAIT = 5.0


class Recorder(Actor):
    """Notes which thread handled each message; fails on "boom"."""

    def __init__(self, seen: "queue.Queue[tuple[Any, str]]") -> None:
        super().__init__()
        self.seen = seen
        self.stopped = threading.Event()

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        self.seen.put((message, threading.current_thread().name))
        return message * 2

    def on_stop(self) -> None:
        self.seen.put(("stopped", threading.current_thread().name))


def test_a_hosted_actor_runs_every_message_on_the_loop_thread_in_order(loop: IOLoop) -> None:
    seen: queue.Queue[tuple[Any, str]] = queue.Queue()
    threads_before = threading.active_count()
    with hosted_by(loop):
        ref = Recorder.start(seen)
    assert threading.active_count() == threads_before          # no thread of its own
    senders = [threading.Thread(target=lambda base=base: [ref.tell(base + i) for i in range(200)])
               for base in (0, 1000, 2000)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    got = [seen.get(timeout=WAIT) for _ in range(600)]
    assert {thread for _, thread in got} == {"io-test"}
    for base in (0, 1000, 2000):                                 # each sender's messages in its order
        assert [m for m, _ in got if base <= m < base + 1000] == list(range(base, base + 200))
    assert ref.ask(21, timeout=WAIT) == 42                      # ask from another thread gets the answer
    assert seen.get(timeout=WAIT) == (21, "io-test")
    ref.stop(timeout=WAIT)
    assert seen.get(timeout=WAIT) == ("stopped", "io-test")
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(1)


def test_a_failing_hosted_actor_stops_alone_and_the_loop_serves_the_others(loop: IOLoop) -> None:
    seen: queue.Queue[tuple[Any, str]] = queue.Queue()
    with hosted_by(loop):
        doomed = Recorder.start(seen)
        other = Recorder.start(seen)
    with pytest.raises(ValueError):
        doomed.ask("boom", timeout=WAIT)                        # an ask gets the exception; the actor lives
    assert doomed.ask(1, timeout=WAIT) == 2
    doomed.tell("boom")                                          # a tell that fails stops that actor
    assert other.ask(5, timeout=WAIT) == 10
    for _ in range(100):
        if not doomed.is_alive():
            break
        other.ask(0, timeout=WAIT)
    assert not doomed.is_alive()
    assert loop.alive
    other.stop(timeout=WAIT)


class GatedStore(MemoryStore):
    """A store whose object writes wait until the test opens the gate (a slow disk), or fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail: Exception | None = None

    def apply(self, objects: Any = (), hints: Any = (), deletes: Any = ()) -> None:
        objects = list(objects)
        if objects:
            self.entered.set()
            assert self.gate.wait(WAIT), "the test never opened the gate"
            if self.fail is not None:
                raise self.fail
        super().apply(objects=objects, hints=hints, deletes=deletes)


@pytest.fixture
def gated(loop: IOLoop) -> Iterator[tuple[Any, GatedStore, "queue.Queue[tuple[str, Any]]"]]:
    store = GatedStore()
    sent: queue.Queue[tuple[str, Any]] = queue.Queue()
    ring = Ring(["n1", "n2", "n3"], partitions=8, target_n=3)
    membership = Membership("n1", ring)
    membership.publish({node: "up" for node in ring.nodes})
    with hosted_by(loop):
        ref = ReplicaActor.start("n1", store, lambda dest, message: sent.put((dest, message)), Stats(), membership)
    try:
        yield ref, store, sent
    finally:
        store.gate.set()
        ref.stop(timeout=WAIT)


def next_of(sent: "queue.Queue[tuple[str, Any]]", kind: type | tuple[type, ...]) -> Any:
    while True:
        _, message = sent.get(timeout=WAIT)
        if isinstance(message, kind):
            return message


def acked_ids(message: Any) -> list[int]:
    return list(message.req_ids) if isinstance(message, Acks) else [message.req_id]


def test_a_hosted_replica_serves_reads_while_its_commit_waits_on_the_disk_and_acks_only_after(gated: Any) -> None:
    ref, store, sent = gated
    first = versions.update(None, (), b"first", "n2.x")
    ref.tell(ReplicaPut(1, "co", "k", first, None))
    assert store.entered.wait(WAIT)                           # the commit is stuck on the "disk"
    second = versions.update(None, (), b"second", "n3.y")
    ref.tell(ReplicaPut(2, "co", "k", second, None))          # staged for the next group
    ref.tell(ReplicaGet(3, "co", "k"))
    answer = next_of(sent, ReplicaGetReply)                   # answered with the commit still stuck
    obj = decode_object(answer.obj) if type(answer.obj) is bytes else answer.obj
    assert sorted(versions.values(obj)) == [b"first", b"second"]
    assert sent.empty()                                       # and nothing acknowledged yet
    assert store.get("k") is None
    store.gate.set()
    acked: list[int] = []
    while sorted(acked) != [1, 2]:
        acked += acked_ids(next_of(sent, (Ack, Acks)))
    assert sorted(versions.values(store.get("k"))) == [b"first", b"second"]


def test_a_failed_group_commit_answers_every_write_in_it_with_the_error_and_the_replica_goes_on(gated: Any) -> None:
    ref, store, sent = gated
    store.fail = StoreFull("disk full")
    ref.tell(ReplicaPut(1, "co", "k", versions.update(None, (), b"v", "n2.x"), None))
    store.gate.set()
    nack = next_of(sent, Ack)
    assert nack.req_id == 1 and not nack.ok and "disk full" in str(nack.error)
    store.fail = None
    ref.tell(ReplicaPut(2, "co", "j", versions.update(None, (), b"w", "n2.x"), None))
    ack = next_of(sent, (Ack, Acks))
    assert acked_ids(ack) == [2] and getattr(ack, "ok", True)
    assert store.get("k") is None and versions.values(store.get("j")) == [b"w"]


def test_a_drop_behind_an_ack_waiting_for_the_commit_in_flight_runs_once_that_commit_is_done(gated: Any) -> None:
    ref, store, sent = gated
    obj = versions.update(None, (), b"v", "n2.x")
    handed_off = versions.update(None, (), b"handed off", "n2.x")
    store.gate.set()
    store.apply(objects=[("j", handed_off)])
    store.gate.clear()
    store.entered.clear()
    ref.tell(ReplicaPut(1, "co", "k", obj, None))
    assert store.entered.wait(WAIT)                           # k's commit is stuck on the "disk"
    # The same object again: nothing new, but its ack must wait for k's commit. Then a drop, then a read.
    ref.tell(Batch([ReplicaPut(2, "co", "k", obj, None), Drop([("j", handed_off)], "handoff"),
                    ReplicaGet(3, "co", "j")]))
    store.gate.set()
    acked: list[int] = []
    while sorted(acked) != [1, 2]:
        acked += acked_ids(next_of(sent, (Ack, Acks)))
    assert next_of(sent, ReplicaGetReply).obj is None        # the read waited for the drop
    assert store.get("j") is None and store.get("k") == obj


class OwnNode:
    """A coordinator and its node's replica hosted on one loop, wired as ``Node`` wires them; the
    test plays the network: every message they send lands on ``sent``, and ``route`` delivers one."""

    def __init__(self, loop: IOLoop, store: GatedStore) -> None:
        store.gate.set()                                    # the disk is fast unless a test closes the gate
        self.store = store
        self.sent: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.remote: dict[str, Any] = {}                   # what the other replicas were sent, by key
        ring = Ring(["n1", "n2", "n3"], partitions=8, target_n=3)
        membership = Membership("n1", ring)
        membership.publish({node: "up" for node in ring.nodes})
        self.stats = Stats()

        def send(dest: str, message: Any) -> None:
            self.sent.put((dest, message))

        with hosted_by(loop):
            self.replica = ReplicaActor.start("n1", store, send, Stats(), membership)
            self.coordinator = CoordinatorActor.start("n1", membership, send, Settings(read_repair_chance=0.0),
                                                      self.stats, local_replica=hosted_actor(self.replica))

    def route(self, dest: str, message: Any) -> None:
        """Deliver one sent message: to this node's actors, or answer it as the other replicas would."""
        if dest != "n1":
            if isinstance(message, CoordinatePut):          # built there (a write nobody wrote before)
                self.remote[message.key] = versions.update(None, (), message.value, f"{dest}.x")
                self.coordinator.tell(Built(message.req_id, dest, self.remote[message.key]))
                self.coordinator.tell(Ack(message.req_id, dest, True))
            elif isinstance(message, ReplicaPut):
                self.remote[message.key] = message.obj
                self.coordinator.tell(Ack(message.req_id, dest, True))
            elif isinstance(message, ReplicaGet):          # the remote replicas hold what was sent them
                self.coordinator.tell(ReplicaGetReply(message.req_id, dest, self.remote.get(message.key)))
        elif isinstance(message, (Ack, Acks, Built, ReplicaGetReply)):
            self.coordinator.tell(message)
        else:
            self.replica.tell(message)

    def run_until_replied(self, conn: FakeConnection, tick: float = 0.0) -> list[tuple[str, Any]]:
        """Route what is sent until ``conn`` has its reply (telling the coordinator a ``Tick`` ``tick``
        seconds ahead whenever nothing is sent); everything routed, in order."""
        routed = []
        deadline = time.monotonic() + WAIT
        while conn.replies.empty():
            assert time.monotonic() < deadline, f"no reply within {WAIT}s; routed {routed}"
            try:
                dest, message = self.sent.get(timeout=0.05)
            except queue.Empty:
                if tick:
                    self.coordinator.tell(Tick(time.monotonic() + tick))
                continue
            routed.append((dest, message))
            self.route(dest, message)
            assert len(routed) < 100, routed
        return routed

    def put(self, req_id: int, key: str, value: bytes, tick: float = 0.0) -> tuple[FakeConnection, list[Any]]:
        """A client put through this node's coordinator, run until answered: its connection, what was routed."""
        conn = FakeConnection()
        self.coordinator.tell(ClientPut(req_id, key, value, (), reply_to=conn))
        return conn, self.run_until_replied(conn, tick)

    def __enter__(self) -> "OwnNode":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.store.gate.set()                               # a commit a failed test left waiting goes on
        self.coordinator.stop(timeout=WAIT)
        self.replica.stop(timeout=WAIT)


def test_a_coordinator_calls_its_own_replica_to_build_and_to_read_and_sends_messages_while_a_drop_holds_them(
        loop: IOLoop) -> None:
    store = GatedStore()
    with OwnNode(loop, store) as node:
        conn, routed = node.put(1, "k", b"v1")
        assert conn.ok() and versions.values(store.get("k")) == [b"v1"]
        assert not [m for dest, m in routed if dest == "n1" and isinstance(m, (CoordinatePut, Built))]
        assert sorted(dest for dest, message in routed if isinstance(message, ReplicaPut)) == ["n2", "n3"]

        conn = FakeConnection()
        node.coordinator.tell(ClientGet(2, "k", r=2, reply_to=conn))
        routed = node.run_until_replied(conn)
        assert conn.ok().values == [b"v1"]
        asked = [dest for dest, message in routed if isinstance(message, ReplicaGet)]
        assert len(asked) == 1 and asked[0] != "n1"       # this node's replica answered by a call

        # A drop waits for the commit in flight, and holds back what comes after it: a put and a read
        # now go to the replica as messages, handled only after the drop.
        store.gate.clear()
        store.entered.clear()
        node.replica.tell(ReplicaPut(99, "n2", "j", versions.update(None, (), b"j", "n2.x"), None))
        assert store.entered.wait(WAIT)
        node.replica.tell(Drop([("gone", versions.update(None, (), b"x", "n2.x"))], "handoff"))
        conn = FakeConnection()
        node.coordinator.tell(ClientPut(3, "k", b"v2", (), reply_to=conn))
        dest, message = node.sent.get(timeout=WAIT)
        assert (dest, type(message)) == ("n1", CoordinatePut)
        reader = FakeConnection()
        node.coordinator.tell(ClientGet(4, "j", r=2, reply_to=reader))
        asked = [node.sent.get(timeout=WAIT), node.sent.get(timeout=WAIT)]
        assert sorted((d, type(m).__name__) for d, m in asked)[0] == ("n1", "ReplicaGet")
        node.route(dest, message)
        for dest, message in asked:
            node.route(dest, message)
        store.gate.set()
        node.run_until_replied(conn)
        assert conn.ok() and sorted(versions.values(store.get("k"))) == [b"v1", b"v2"]
        node.run_until_replied(reader)
        assert reader.ok().values == [b"j"]


class UnreadableStore(GatedStore):
    """A store whose record of one key cannot be decoded (a corrupt record)."""

    def get(self, key: str) -> Any:
        if key == "bad":
            raise CodecError("corrupt record")
        return super().get(key)

    def get_records(self, keys: Any) -> dict[str, bytes | None]:
        if "bad" in keys:
            raise CodecError("corrupt record")
        return super().get_records(keys)


def test_when_its_own_replica_fails_on_a_key_the_coordinator_goes_on_as_if_that_replica_were_silent(
        loop: IOLoop) -> None:
    with OwnNode(loop, UnreadableStore()) as node:
        conn, routed = node.put(1, "bad", b"v", tick=1.5)   # the build window (1.25 s) passes: the next replica
        assert conn.ok()
        assert [dest for dest, m in routed if isinstance(m, CoordinatePut)] in (["n2"], ["n3"])
        reader = FakeConnection()
        node.coordinator.tell(ClientGet(2, "bad", r=2, reply_to=reader))
        routed = node.run_until_replied(reader, tick=1.5)    # no local answer: a spare replica is asked
        assert reader.ok().values == [b"v"]
        assert sorted(dest for dest, m in routed if isinstance(m, ReplicaGet)) == ["n2", "n3"]
        assert node.coordinator.is_alive() and node.replica.is_alive()
