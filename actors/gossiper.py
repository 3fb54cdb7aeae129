"""GossiperActor: membership by gossip, phi accrual failure detection, the ring.

Every ``interval`` a node bumps its own heartbeat and exchanges its whole view (push-
pull) with one random live peer, and now and then with one unreachable peer, so a
recovered node is noticed. A view maps each member to ``(incarnation, heartbeat,
status, address)``; the higher ``(incarnation, heartbeat)`` wins, and a restart bumps
the incarnation. Whenever a member's heartbeat is seen to advance, directly or through
a third node, its phi accrual detector records the arrival; a member whose phi passes
``phi_threshold`` is down. The ring travels in the same messages with a version; the
highest version wins (ties broken by content), and a ring change (join, leave) is made
by one node bumping the version.

Published to ``Membership``: ``up``, ``down``, ``leaving`` (still serving, handing its
data off) and ``left``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from typing import Any


from storage.hlc import HybridClock, Timestamp
from storage.store import StoreError, StoreFull

from .errors import InvalidRequest, LeaderlessError, StorageFull, UnknownBucket
from .mailbox import Actor
from .membership import DOWN, LEAVING, LEFT, UP, Membership
from .messages import (Batch, BucketCreate, BucketInfo, BucketProps, Gossip, HandoffComplete, Reply, RingChange,
                       Tick)
from .quorum import resolve
from .phi import LOG10_E, PhiDetector
from .ring import Ring, RingError

log = logging.getLogger(__name__)

NORMAL = "normal"
BUCKET_TYPES = ("siblings", "lww", "counter", "set", "map", "register", "flag")
Endpoint = tuple[int, int, str, str, int]      # incarnation, heartbeat, status, host, port


class GossiperActor(Actor):
    """Keeps ``membership`` (states and ring) current by gossip."""

    def __init__(self, name: str, incarnation: int, address: tuple[str, int], membership: Membership,
                 seeds: dict[str, tuple[str, int]], send: Callable[[str, Any], None], *,
                 add_peer: Callable[[str, tuple[str, int]], None] = lambda name, address: None,
                 persist_ring: Callable[[Ring, int], None] = lambda ring, version: None,
                 persist_buckets: Callable[[dict[str, tuple]], None] = lambda buckets: None,
                 buckets: dict[str, tuple] | None = None, hlc: HybridClock | None = None,
                 interval: float = 0.5, phi_threshold: float = 8.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, status: str = NORMAL,
                 defaults: tuple[int, int | str, int | str] = (3, 2, 2),
                 heard_from: Callable[[str], float | None] = lambda node: None,
                 presumed_up: Iterable[str] = (),
                 persist_states: Callable[[dict[str, str]], None] = lambda states: None,
                 peer_back: Callable[[str], None] = lambda node: None) -> None:
        super().__init__()
        self.name = name
        self.membership = membership
        self.send = send
        self.add_peer = add_peer
        self.persist_ring = persist_ring
        self.persist_buckets = persist_buckets
        self.hlc = hlc
        self.buckets: dict[str, tuple] = dict(buckets or {})     # name -> (type, n, r, w)
        self._publish_buckets()
        self.interval = interval
        self.phi_threshold = phi_threshold
        self.rng = rng or random.Random()
        self.clock = clock
        self.default_n, self.default_r, self.default_w = defaults
        self.heard_from = heard_from
        self.endpoints: dict[str, Endpoint] = {
            peer: (0, 0, NORMAL, host, port) for peer, (host, port) in seeds.items() if peer != name}
        self.endpoints[name] = (incarnation, 0, status, address[0], address[1])
        self.detectors: dict[str, PhiDetector] = {}
        self._next_round = 0.0
        self._published: dict[str, str] = {}
        self._ring_cache: tuple[Any, dict[str, Any]] = (None, {})
        self.persist_states = persist_states
        self.peer_back = peer_back
        # A restarted node presumes up the members it last saw up, as if each had just sent a
        # heartbeat, until its detector says otherwise (Cassandra does the same): otherwise it
        # would refuse every request it coordinates until its first gossip rounds came back.
        now = self.clock()
        for node in presumed_up:
            if node != name and node in self.endpoints:
                self.detectors[node] = detector = PhiDetector(self.interval)
                detector.heartbeat(now)
        self._publish()

    # --- messages ------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        for item in message.messages if isinstance(message, Batch) else (message,):
            try:
                self._handle(item)
            except Exception:  # a malformed gossip message must not stop failure detection
                log.exception("gossiper %s failed on %s", self.name, type(item).__name__)
        self._publish()

    def _handle(self, item: Any) -> None:
        if isinstance(item, Gossip):
            self._merge(item)
        elif isinstance(item, Tick):
            self._tick(item.now)
        elif isinstance(item, RingChange):
            self._ring_change(item)
        elif isinstance(item, BucketCreate):
            self._create_bucket(item)
        elif isinstance(item, BucketInfo):
            props = self.membership.buckets.get(item.name)
            item.reply_to.send(Reply(item.req_id, props is not None,
                                     props if props is not None else UnknownBucket(f"no bucket {item.name!r}")))
        elif isinstance(item, HandoffComplete):
            self._set_own_status(LEFT)
        else:
            log.warning("gossiper %s ignored unexpected %s", self.name, type(item).__name__)

    def _tick(self, now: float) -> None:
        if now < self._next_round:
            return
        if self._next_round and now - self._next_round > 5 * self.interval:
            # This node itself was stalled (paused, starved of CPU): silence it measured was its
            # own. Forget that gap instead of convicting every peer for it.
            log.info("%s: gossiper stalled %.1fs; not judging peers on that gap", self.name, now - self._next_round)
            for detector in self.detectors.values():
                detector.excuse(now - self._next_round)
        self._next_round = now + self.interval
        inc, beat, status, host, port = self.endpoints[self.name]
        self.endpoints[self.name] = (inc, beat + 1, status, host, port)
        for peer in self._partners(now):
            self.send(peer, self._message(reply=True))

    def _partners(self, now: float) -> list[str]:
        peers = [p for p, e in self.endpoints.items() if p != self.name and e[2] != LEFT]
        if not peers:
            return []
        live = [p for p in peers if self._alive(p, now)]
        dead = [p for p in peers if p not in live]
        chosen = [self.rng.choice(live)] if live else []
        if dead and (not live or self.rng.random() < len(dead) / (len(live) + 1)):
            chosen.append(self.rng.choice(dead))
        return chosen

    def _ring_data(self) -> dict[str, Any]:
        """The current ring as builtins, computed once per ring (gossip sends it every round)."""
        ring = self.membership.ring
        if self._ring_cache[0] is not ring:
            self._ring_cache = (ring, ring.to_data())
        return self._ring_cache[1]

    def _message(self, reply: bool) -> Gossip:
        return Gossip(self.name, dict(self.endpoints), self.membership.ring_version,
                      self._ring_data(), reply, dict(self.buckets),
                      tuple(self.hlc.now()) if self.hlc is not None else None)

    def _merge(self, gossip: Gossip) -> None:
        now = self.clock()
        for node, endpoint in gossip.endpoints.items():
            if node == self.name:
                continue
            mine = self.endpoints.get(node)
            if mine is None or endpoint[:2] > mine[:2]:
                if mine is None or (endpoint[3], endpoint[4]) != (mine[3], mine[4]):
                    self.add_peer(node, (endpoint[3], endpoint[4]))
                if mine is None or endpoint[0] != mine[0]:
                    self.detectors[node] = PhiDetector(self.interval)   # new incarnation: forget old gaps
                    self.peer_back(node)     # restarted: links to it may retry at once, not after a backoff
                if endpoint[1] > 0:
                    self.detectors.setdefault(node, PhiDetector(self.interval)).heartbeat(now)
                self.endpoints[node] = endpoint
        self._maybe_adopt(gossip.ring_version, gossip.ring)
        self._merge_buckets(gossip.buckets)
        if self.hlc is not None and gossip.hlc is not None:
            self.hlc.observe(Timestamp(*gossip.hlc))
        if gossip.reply and gossip.src != self.name:
            self.send(gossip.src, self._message(reply=False))

    def _maybe_adopt(self, version: int, data: dict[str, Any]) -> None:
        mine = self.membership.ring_version
        if version < mine:
            return
        if version == mine:
            current = self._ring_data()
            if data == current or repr(data["owners"]) <= repr(current["owners"]):
                return
        try:
            ring = Ring.from_data(data)
        except RingError as exc:
            log.warning("gossiper %s ignored a bad ring from gossip: %s", self.name, exc)
            return
        self._adopt(ring, version)

    def _adopt(self, ring: Ring, version: int) -> StoreError | None:
        """Use ``ring`` from now on; the error if it could not be saved (it is used anyway: gossip
        brings it back after a restart)."""
        log.info("%s adopts ring version %d: %s", self.name, version, ", ".join(ring.nodes))
        self.membership.set_ring(ring, version)
        try:
            self.persist_ring(ring, version)
        except StoreError as exc:
            log.error("%s could not save ring version %d: %s", self.name, version, exc)
            return exc
        return None

    # --- buckets -------------------------------------------------------------------------

    def _merge_buckets(self, theirs: dict[str, tuple]) -> StoreError | None:
        """Buckets are created, never changed: take the union (same name twice: the smaller props win).
        The error if they could not be saved (a full disk): they are used anyway, and gossip brings
        them back after a restart."""
        changed = False
        for name, props in theirs.items():
            props = tuple(props)
            mine = self.buckets.get(name)
            if mine is None or (props != mine and repr(props) < repr(mine)):
                self.buckets[name] = props
                changed = True
        if not changed:
            return None
        self._publish_buckets()
        try:
            self.persist_buckets(dict(self.buckets))
        except StoreError as exc:
            log.error("%s could not save its buckets: %s", self.name, exc)
            return exc
        return None

    def _create_bucket(self, request: BucketCreate) -> None:
        try:
            props = self._validate_bucket(request)
        except InvalidRequest as exc:
            request.reply_to.send(Reply(request.req_id, False, exc))
            return
        existing = self.buckets.get(request.name)
        if existing is not None and tuple(existing) != props:
            error = InvalidRequest(f"bucket {request.name!r} exists already as {BucketProps(request.name, *existing)}")
            request.reply_to.send(Reply(request.req_id, False, error))
            return
        failed = self._merge_buckets({request.name: props})
        if failed is not None:
            request.reply_to.send(Reply(request.req_id, False, _storage_error(self.name, failed)))
            return
        request.reply_to.send(Reply(request.req_id, True, BucketProps(request.name, *props)))

    def _validate_bucket(self, request: BucketCreate) -> tuple:
        name = request.name
        if not isinstance(name, str) or not 0 < len(name) <= 64 or "\x00" in name:
            raise InvalidRequest("a bucket name is 1..64 characters, without NUL")
        if request.type not in BUCKET_TYPES:
            raise InvalidRequest(f"unknown bucket type {request.type!r}; types: {', '.join(BUCKET_TYPES)}")
        ring_size = len(self.membership.ring.nodes)
        n = self.default_n if request.n is None else request.n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidRequest(f"n={n!r} must be a positive integer")
        if n > ring_size:
            raise InvalidRequest(f"n={n} is larger than the cluster ({ring_size} nodes)")
        r = self.default_r if request.r is None else request.r
        w = self.default_w if request.w is None else request.w
        resolve("r", r, r, n)
        resolve("w", w, w, n)
        return (request.type, n, r, w)

    def _publish_buckets(self) -> None:
        self.membership.buckets = {name: BucketProps(name, *props) for name, props in self.buckets.items()}

    # --- ring changes ---------------------------------------------------------------------

    def _ring_change(self, change: RingChange) -> None:
        ring = self.membership.ring
        try:
            if change.action == "join":
                if change.node in ring.nodes:
                    raise InvalidRequest(f"{change.node} is already a member")
                self.add_peer(change.node, (change.host, change.port))
                if change.node not in self.endpoints:
                    self.endpoints[change.node] = (0, 0, NORMAL, change.host, change.port)
                # The cluster's n, not the ring's: a ring made when fewer nodes than n were members
                # (before this release) had a smaller target_n; it grows back here.
                new = ring.with_node(change.node, target_n=max(ring.target_n, self.default_n))
            elif change.action == "leave":
                if change.node != self.name:
                    raise InvalidRequest(f"a leave must be sent to the leaving node itself, not to {self.name}")
                if len(ring.nodes) <= 1:
                    raise InvalidRequest("the last member cannot leave")
                largest = self.membership.largest_n()
                if len(ring.nodes) - 1 < largest and not change.force:
                    raise InvalidRequest(
                        f"{change.node} cannot leave: {len(ring.nodes) - 1} members would be left for a bucket "
                        f"(or the cluster) with n={largest}; keys would have fewer copies than their n "
                        "(force it to accept that)")
                new = ring.without_node(change.node)
                self._set_own_status(LEAVING)
            else:
                raise InvalidRequest(f"unknown ring change {change.action!r}")
        except (InvalidRequest, RingError) as exc:
            if change.reply_to is not None:
                change.reply_to.send(Reply(change.req_id, False, InvalidRequest(str(exc))))
            return
        failed = self._adopt(new, self.membership.ring_version + 1)
        if change.reply_to is not None:
            if failed is not None:
                change.reply_to.send(Reply(change.req_id, False, _storage_error(self.name, failed)))
            else:
                change.reply_to.send(Reply(change.req_id, True, self.membership.ring_version))

    def _set_own_status(self, status: str) -> None:
        inc, beat, _, host, port = self.endpoints[self.name]
        self.endpoints[self.name] = (inc, beat + 1, status, host, port)
        log.info("%s is now %s", self.name, status)

    # --- liveness -------------------------------------------------------------------------

    def _alive(self, node: str, now: float) -> bool:
        detector = self.detectors.get(node)
        if detector is None:
            return False
        if detector.phi(now) < self.phi_threshold:
            return True
        # Direct evidence: any message from the peer (a replica's ack, a read reply) proves it is
        # alive as well as a heartbeat does; under heavy load that keeps busy peers from being
        # convicted while gossip is delayed behind the work.
        heard = self.heard_from(node)
        return heard is not None and now - heard < detector.mean() * self.phi_threshold / LOG10_E

    def _publish(self) -> None:
        incarnations = {node: endpoint[0] for node, endpoint in self.endpoints.items()}
        if incarnations != self.membership.incarnations:
            self.membership.incarnations = incarnations
        now = self.clock()
        states: dict[str, str] = {}
        for node, (_, _, status, _, _) in self.endpoints.items():
            if status == LEFT:
                states[node] = LEFT
            elif node != self.name and not self._alive(node, now):
                states[node] = DOWN
            elif status == LEAVING:
                states[node] = LEAVING
            else:
                states[node] = UP
        for node in self.membership.ring.nodes:
            states.setdefault(node, DOWN)
        if states != self._published:
            back = []
            for node, state in states.items():
                before = self._published.get(node)
                if before != state and node != self.name:
                    log.info("%s sees %s %s", self.name, node, state)
                    if before == DOWN and state in (UP, LEAVING):
                        back.append(node)
            self._published = states
            for node in back:
                self.peer_back(node)     # up again after a cut: reconnect now, not after TCP's backoff
            self.membership.publish(states)
            try:
                self.persist_states(states)
            except Exception:  # a full disk: the next change tries again; only a restart's guess is at stake
                log.warning("%s: could not save the member states", self.name, exc_info=True)


def _storage_error(node: str, exc: StoreError) -> LeaderlessError:
    """What a client hears when this node could not save a change: it holds it in memory and gossips it,
    but a restart before its disk has room would forget it here (its peers would tell it again)."""
    kind = StorageFull if isinstance(exc, StoreFull) else LeaderlessError
    return kind(f"{node} could not save the change (its peers have it by gossip): {exc}")
