"""In-process fakes for the actor tests: a routed network with partitions, stores, a clock, a client.

``FakeCluster`` starts, in this process, one ``CoordinatorActor`` (on node ``n0``, which
holds no replica, as any node does for keys outside its ranges) and one ``ReplicaActor``
per node, each with its own ``FakeStore``. Every message an actor sends goes through
``FakeNetwork.send``, which routes it by type the way ``actors.node.Node.deliver`` does,
records it, and can drop it (a partition) and report the drop (``on_drop``). Time is a
``FakeClock`` that only moves when a test advances it; deadlines fire when the test
tells the coordinator a ``Tick``. Nothing here sleeps: tests wait on conditions and
queues with a bounded timeout.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pykka

from actors.coordinator import CoordinatorActor, Settings
from actors.membership import Membership
from actors.messages import (Ack, Acks, Batch, Built, ClientGet, ClientPut, CoordinatePut, ReplicaGet, ReplicaGetReply,
                             Refused, ReplicaPut, Reply, Tick, Unreachable)
from actors.replica import ReplicaActor
from actors.ring import Ring
from actors.stats import Stats
from storage.store import MemoryStore, StoreFull
from storage.versions import DVVSet

WAIT = 5.0
"""The longest any test waits for something that should happen (seconds)."""

TO_REPLICA = (ReplicaPut, CoordinatePut, ReplicaGet)
TO_COORDINATOR = (Ack, Acks, Built, ReplicaGetReply, Refused)


class Sent(NamedTuple):
    """One message an actor handed to the network, and whether it reached an actor's inbox."""
    src: str
    dest: str
    message: Any
    delivered: bool


class FakeNetwork:
    """Routes messages between in-process actors by type; drops those to or from partitioned nodes.

    A message from a node to itself is never dropped (the real transport delivers it
    locally). ``on_drop`` is called, in the sender's thread, with every message that was not
    delivered; ``report_unreachable`` is the hook that behaves like the real node's.
    """

    def __init__(self) -> None:
        self.replicas: dict[str, pykka.ActorRef[Any]] = {}
        self.coordinators: dict[str, pykka.ActorRef[Any]] = {}
        self.on_drop: Callable[[Sent], None] | None = None
        self._partitioned: frozenset[str] = frozenset()
        self._hold: Callable[[Sent], bool] | None = None
        self._held: list[Sent] = []
        self._log: list[Sent] = []
        self._changed = threading.Condition()

    # --- switches ------------------------------------------------------------------------

    def partition(self, *nodes: str) -> None:
        """From now on, drop every message to or from ``nodes``."""
        self._partitioned = self._partitioned | frozenset(nodes)

    def heal(self, *nodes: str) -> None:
        """Deliver messages to and from ``nodes`` again (what was dropped stays lost)."""
        self._partitioned = self._partitioned - frozenset(nodes)

    def hold(self, rule: Callable[[Sent], bool]) -> None:
        """From now on, keep back (unrecorded) every message for which ``rule(sent)`` is true: a slow link."""
        self._hold = rule

    def release(self) -> None:
        """Stop holding messages back and send the held ones, in the order they were sent."""
        with self._changed:
            self._hold, held, self._held = None, self._held, []
        for sent in held:
            self.send(sent.src, sent.dest, sent.message)

    def report_unreachable(self, sent: Sent) -> None:
        """Like ``Node._undeliverable``: tell the coordinator of a lost request that no answer will come."""
        message = sent.message
        if not isinstance(message, TO_REPLICA) or not getattr(message, "want_ack", True):
            return
        coordinator = self.coordinators.get(message.coordinator)
        if coordinator is not None and message.coordinator == sent.src:
            coordinator.tell(Unreachable(message.req_id, sent.dest))

    # --- the send callable the actors get --------------------------------------------------

    def sender(self, src: str) -> Callable[[str, Any], None]:
        """The ``send(dest, message)`` callable for the actors of node ``src``."""
        def send(dest: str, message: Any) -> None:
            self.send(src, dest, message)
        return send

    def send(self, src: str, dest: str, message: Any) -> None:
        cut = src != dest and (src in self._partitioned or dest in self._partitioned)
        with self._changed:
            rule = self._hold
            if not cut and rule is not None and rule(Sent(src, dest, message, False)):
                self._held.append(Sent(src, dest, message, False))
                return
        delivered = False
        if not cut:
            ref = self._route(dest, message)
            if ref is not None:
                try:
                    ref.tell(message)
                    delivered = True
                except pykka.ActorDeadError:
                    pass
        sent = Sent(src, dest, message, delivered)
        with self._changed:                  # recorded after the tell: whoever sees it can rely on the inbox order
            self._log.append(sent)
            self._changed.notify_all()
        if not delivered and self.on_drop is not None:
            self.on_drop(sent)

    def _route(self, dest: str, message: Any) -> pykka.ActorRef[Any] | None:
        if isinstance(message, TO_REPLICA):
            return self.replicas.get(dest)
        if isinstance(message, TO_COORDINATOR):
            return self.coordinators.get(dest)
        return None

    # --- what was sent ---------------------------------------------------------------------

    def sent(self, kind: type | tuple[type, ...] = object, *, src: str | None = None, dest: str | None = None,
             delivered: bool | None = None, **fields: Any) -> list[Sent]:
        """The recorded messages of ``kind`` matching every given filter, oldest first."""
        with self._changed:
            log = list(self._log)
        return [s for s in log if isinstance(s.message, kind)
                and (src is None or s.src == src) and (dest is None or s.dest == dest)
                and (delivered is None or s.delivered == delivered)
                and all(getattr(s.message, name, object()) == value for name, value in fields.items())]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = WAIT) -> Any:
        """Block until ``predicate()`` (re-checked at every send) is truthy; return its value."""
        with self._changed:
            value = self._changed.wait_for(predicate, timeout)
        if not value:
            raise AssertionError(f"network: condition not met within {timeout}s; sent: {self._log!r:.2000}")
        return value

    def wait_sent(self, kind: type | tuple[type, ...], count: int = 1, **filters: Any) -> list[Sent]:
        """Block until at least ``count`` matching messages were sent; return them."""
        return self.wait_for(lambda: (found := self.sent(kind, **filters)) and len(found) >= count and found)


class FakeStore(MemoryStore):
    """A ``MemoryStore`` that can be made full and that tests can wait on."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.refused = 0
        self._changed = threading.Condition()

    def apply(self, objects: Iterable[tuple[str, DVVSet]] = (), hints: Iterable[tuple[str, str, DVVSet]] = (),
              deletes: Iterable[str] = (), paxos: Iterable[tuple[str, bytes]] = ()) -> None:
        if self.full:
            self.refused += 1
            raise StoreFull("fake store is full: nothing of this batch was written")
        super().apply(objects, hints, deletes, paxos)
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, key: str, predicate: Callable[[DVVSet | None], bool], timeout: float = WAIT) -> DVVSet | None:
        """Block until the stored object of ``key`` satisfies ``predicate``; return it."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.get(key)), timeout):
                raise AssertionError(f"store: {key!r} never satisfied the condition; it holds {self.get(key)!r}")
        return self.get(key)


class FakeClock:
    """Virtual monotonic time: a mutable float that moves only when a test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeConnection:
    """Stands for a client connection: every ``Reply`` sent to it lands on a queue."""

    def __init__(self) -> None:
        self.replies: queue.Queue[Reply] = queue.Queue()

    def send(self, reply: Reply) -> None:
        self.replies.put(reply)

    def reply(self, timeout: float = WAIT) -> Reply:
        """The next reply; fails the test if none comes within ``timeout``."""
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no reply within {timeout}s") from None

    def ok(self, timeout: float = WAIT) -> Any:
        """The result of the next reply, which must be a success."""
        reply = self.reply(timeout)
        assert reply.ok, f"request failed: {reply.result!r}"
        return reply.result

    def failure(self, timeout: float = WAIT) -> BaseException:
        """The error of the next reply, which must be a failure."""
        reply = self.reply(timeout)
        assert not reply.ok, f"request unexpectedly succeeded: {reply.result!r}"
        assert isinstance(reply.result, BaseException), reply.result
        return reply.result


class FakeCluster:
    """One coordinator (node ``n0``) and a replica per node, wired through a ``FakeNetwork``."""

    COORDINATOR = "n0"

    def __init__(self, nodes: tuple[str, ...] = ("n1", "n2", "n3"), timeout: float = 3.0,
                 read_repair_chance: float = 0.0) -> None:
        self.nodes = nodes
        self.clock = FakeClock()
        self.net = FakeNetwork()
        self.ring = Ring(list(nodes), partitions=64, target_n=3)
        self.membership = Membership(self.COORDINATOR, self.ring)
        self.membership.publish({node: "up" for node in nodes})
        self.settings = Settings(timeout=timeout, read_repair_chance=read_repair_chance)
        self.stats = Stats()
        self.stores = {node: FakeStore() for node in nodes}
        self.replica_stats = {node: Stats() for node in nodes}
        for node in nodes:
            view = Membership(node, self.ring)
            view.publish({other: "up" for other in nodes})
            self.net.replicas[node] = ReplicaActor.start(name=node, store=self.stores[node], send=self.net.sender(node),
                                                         stats=self.replica_stats[node], membership=view,
                                                         clock=self.clock, wall=self.clock)
        self.coordinator = CoordinatorActor.start(self.COORDINATOR, self.membership, self.net.sender(self.COORDINATOR),
                                                  self.settings, self.stats, clock=self.clock, wall=self.clock)
        self.net.coordinators[self.COORDINATOR] = self.coordinator
        self._ids = itertools.count(1)

    # --- keys ------------------------------------------------------------------------------

    def key_led_by(self, node: str, prefix: str = "key") -> str:
        """A key whose first primary (its coordinating replica) is ``node``."""
        for i in itertools.count():
            key = f"{prefix}-{i}"
            if self.ring.primaries(key, 3)[0] == node:
                return key
        raise AssertionError("unreachable")

    def primaries(self, key: str) -> list[str]:
        return self.ring.primaries(key, 3)

    # --- client requests -------------------------------------------------------------------

    def put(self, key: Any, value: Any, context: Any = (), **options: Any) -> FakeConnection:
        """Tell the coordinator a ``ClientPut``; the reply arrives on the returned connection."""
        conn = FakeConnection()
        self.coordinator.tell(ClientPut(next(self._ids), key, value, context, reply_to=conn, **options))
        return conn

    def get(self, key: Any, **options: Any) -> FakeConnection:
        """Tell the coordinator a ``ClientGet``; the reply arrives on the returned connection."""
        conn = FakeConnection()
        self.coordinator.tell(ClientGet(next(self._ids), key, reply_to=conn, **options))
        return conn

    # --- time and ordering ------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the fake clock and tell the coordinator a ``Tick`` with the new time."""
        self.clock.now += seconds
        self.coordinator.tell(Tick(self.clock.now))

    def settle(self, *names: str) -> list[str]:
        """Wait until the named actors ("coordinator" and node names; default all) handled every message
        told to them so far. Returns the names of those found dead."""
        refs = {"coordinator": self.coordinator, **self.net.replicas}
        dead = []
        for name in names or tuple(refs):
            try:
                refs[name].ask(Batch([]), timeout=WAIT)      # an empty batch: a no-op that queues behind the rest
            except pykka.ActorDeadError:
                dead.append(name)
        return dead
