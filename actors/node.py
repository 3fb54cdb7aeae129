"""One node process: its store, its actors, its transport, its ticker.

Run as ``python -m actors.node --data-dir DIR --name n1`` (``LocalCluster`` does this).
The node reads ``DIR/cluster.json`` and ``DIR/secret``, keeps its data in
``DIR/n1/store`` and stops cleanly on SIGTERM or SIGINT (actors stopped, LMDB closed).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import resource
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pykka

from storage.hlc import HybridClock
from storage.store import LmdbStore, StoreError

from .config import ClusterConfig, load_secret
from .errors import LeaderlessError
from .coordinator import CoordinatorActor, Settings
from .gossiper import GossiperActor
from .mailbox import hosted_actor, hosted_by
from .membership import Membership
from .messages import (Ack, Acks, Batch, BatchAck, BucketCreate, BucketInfo, BucketProps, Built, ClientGet, ClientPut,
                       ClientUpdate, ConfigRequest, CoordinatePut, DeleteHints, Drop, GetMany, GetManyReply, Gossip,
                       InspectRequest, MembersRequest, PaxosAccepted, PaxosCommit, PaxosCommitted, PaxosPrepare, PaxosPromise,
                       PaxosPropose, PutMany, ReapCandidates, ReapCandidatesReply, Refused, Reply, ReplicaGet,
                       ReplicaGetReply, ReplicaPut, RingChange, SetFaults, StatusRequest, StoreHint, Tick, TreeReply,
                       TreeRequest, Unreachable)
from .repairer import RepairerActor, RepairSettings
from .replica import ReplicaActor
from .ring import Ring
from .stats import Stats, WallClock
from .transport import Connection, Transport

log = logging.getLogger(__name__)

TICK = 0.05
GC_THRESHOLD = 50_000
_REPLICA = (ReplicaPut, CoordinatePut, ReplicaGet, PutMany, GetMany, TreeRequest, Drop, DeleteHints, ReapCandidates,
            StoreHint, PaxosPrepare, PaxosPropose, PaxosCommit)
_CLIENT_REQUESTS = frozenset({ClientPut, ClientGet, ClientUpdate})
_COORDINATOR = (Ack, Acks, Built, ReplicaGetReply, Refused, PaxosPromise, PaxosAccepted, PaxosCommitted)
_PAXOS_PHASES = {PaxosPrepare: "prepare", PaxosPropose: "propose", PaxosCommit: "commit"}
_REPAIRER = (BatchAck, GetManyReply, TreeReply, ReapCandidatesReply)


class Node:
    """Boots and stops one node."""

    def __init__(self, name: str, data_dir: str | os.PathLike[str], config: ClusterConfig, secret: bytes,
                 listen: tuple[str, int] | None = None) -> None:
        """``listen``: the address to bind (default: this node's address in ``config``, the one peers use)."""
        if name not in config.nodes:
            raise SystemExit(f"node {name!r} is not in {data_dir}/cluster.json")
        self.listen_address = listen
        self.name = name
        self.data_dir = Path(data_dir)
        self.config = config
        self.secret = secret
        self.stats = Stats()
        self.wall = WallClock()
        self._drop_replies = 0
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self, faults: SetFaults | None = None) -> None:
        config = self.config
        self.store = LmdbStore(str(self.data_dir / self.name / "store"), map_size=config.map_size)
        self.incarnation = int(self.store.meta_get("incarnation") or b"0") + 1
        self.store.meta_put("incarnation", str(self.incarnation).encode())

        peers = self._peer_addresses()
        self.transport = Transport(self.name, self.secret, peers, self.deliver, self._undeliverable)
        ring, version = self._load_ring()
        self.membership = Membership(self.name, ring, version, BucketProps("", "siblings", config.n, config.r, config.w))
        send = self.transport.send
        host, port = config.nodes[self.name]
        self.hlc = HybridClock(self.name, wall=self.wall.now)
        saved_buckets = self.store.meta_get("buckets")
        self.gossiper = GossiperActor.start(
            self.name, self.incarnation, (host, port), self.membership, peers, send,
            add_peer=self._add_peer, persist_ring=self._persist_ring, interval=config.gossip_interval,
            phi_threshold=config.phi_threshold, persist_buckets=self._persist_buckets,
            buckets=json.loads(saved_buckets) if saved_buckets else None, hlc=self.hlc,
            defaults=(config.n, config.r, config.w), heard_from=self.transport.heard_from,
            presumed_up=self._last_seen_up(), persist_states=self._persist_states,
            peer_back=self.transport.peer_back)
        settings = Settings(timeout=config.timeout, read_repair_chance=config.read_repair_chance)
        with hosted_by(self.transport.loop):    # the hot path: no thread hand-over between socket and actor
            self.replica = ReplicaActor.start(self.name, self.store, send, self.stats, self.membership,
                                              hlc=self.hlc, send_batch=self.transport.send_batch)
            self.coordinator = CoordinatorActor.start(self.name, self.membership, send, settings, self.stats,
                                                      send_batch=self.transport.send_batch,
                                                      local_replica=hosted_actor(self.replica), hlc=self.hlc)
        self.repairer = RepairerActor.start(
            self.name, self.store, self.membership, send, self.gossiper, self.stats,
            RepairSettings(hint_interval=config.hint_interval, hint_window=config.hint_window,
                           handoff_interval=config.handoff_interval, aae_interval=config.aae_interval,
                           tombstone_grace=config.tombstone_grace, reap_interval=config.reap_interval))
        self.apply_faults(faults or SetFaults(0))
        self._routes: dict[type, Any] = {
            **{cls: self.replica for cls in _REPLICA}, **{cls: self.coordinator for cls in _COORDINATOR},
            **{cls: self.repairer for cls in _REPAIRER}, Gossip: self.gossiper}
        bind = self.listen_address or (host, port)
        self.transport.listen(*bind)
        self._ticker = threading.Thread(target=self._tick_loop, name=f"ticker-{self.name}", daemon=True)
        self._ticker.start()
        log.info("node %s (incarnation %d) listening on %s:%d%s", self.name, self.incarnation, *bind,
                 "" if bind == (host, port) else f" (peers and clients use {host}:{port})")

    def _peer_addresses(self) -> dict[str, tuple[str, int]]:
        """Every member's address: ``cluster.json``'s, updated by what gossip taught this node before it last
        stopped (a member that joined later, or moved), so a restart reaches its peers with its seeds down.
        This node's own address is always the configured one."""
        peers = dict(self.config.nodes)
        try:
            learnt = json.loads(self.store.meta_get("addresses") or b"{}")
            peers.update({node: (str(host), int(port)) for node, (host, port) in learnt.items()})
        except (ValueError, TypeError) as exc:
            log.warning("node %s ignores its saved peer addresses: %s", self.name, exc)
        peers[self.name] = self.config.nodes[self.name]
        return peers

    def _add_peer(self, node: str, address: tuple[str, int]) -> None:
        """Gossip (or a join) says ``node`` listens at ``address``: send there, and remember it for restarts."""
        self.transport.add_peer(node, address)
        try:
            self.store.meta_put("addresses", json.dumps(self.transport.addresses(), sort_keys=True).encode())
        except StoreError as exc:            # a full disk: gossip tells it again after a restart
            log.warning("node %s could not save the address of %s: %s", self.name, node, exc)

    def _load_ring(self) -> tuple[Ring, int]:
        """The ring this node last adopted, or the cluster's first ring at version 0 (any gossiped ring wins)."""
        saved = self.store.meta_get("ring")
        if saved is not None:
            body = json.loads(saved)
            return Ring.from_data(body["ring"]), int(body["version"])
        # target_n is the cluster's n even while fewer nodes are members (a cluster started one host at a
        # time): the ring keeps it as nodes join, so any n consecutive partitions get distinct owners.
        nodes = self.config.initial_ring_nodes()
        return Ring(nodes, partitions=self.config.partitions, target_n=self.config.n), 0

    def _last_seen_up(self) -> list[str]:
        """The members this node saw up (or leaving) when it last stopped or crashed."""
        try:
            states = json.loads(self.store.meta_get("members") or b"{}")
        except ValueError:
            return []
        return sorted(node for node, state in states.items() if state in ("up", "leaving"))

    def _persist_states(self, states: dict[str, str]) -> None:
        self.store.meta_put("members", json.dumps(states, sort_keys=True).encode())

    def _persist_buckets(self, buckets: dict[str, tuple]) -> None:
        self.store.meta_put("buckets", json.dumps(buckets).encode())

    def _persist_ring(self, ring: Ring, version: int) -> None:
        self.store.meta_put("ring", json.dumps({"version": version, "ring": ring.to_data()}).encode())

    def stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        for ref in (self.repairer, self.gossiper, self.coordinator, self.replica):
            try:
                ref.stop(timeout=5)
            except pykka.ActorDeadError:
                pass
        self.transport.stop()
        self.store.close()
        log.info("node %s stopped", self.name)

    def wait(self) -> None:
        """Serve until asked to stop, or until this node has left the cluster."""
        while not self._stopping.wait(0.2):
            if self.membership.states.get(self.name) == "left":
                log.info("node %s has left the cluster; stopping", self.name)
                time.sleep(1.0)          # let the last gossip spread the news
                return

    def request_stop(self, *_: Any) -> None:
        self._stopping.set()

    # --- message routing ---------------------------------------------------------------

    def deliver(self, messages: list[Any], conn: Connection | None) -> None:
        """Route a batch from the transport to the actors, one ``Batch`` per actor."""
        if conn is None:
            self._deliver_internal(messages)
            return
        to_replica: list[Any] = []
        to_coordinator: list[Any] = []
        to_gossiper: list[Any] = []
        for message in messages:
            if type(message) in _CLIENT_REQUESTS:          # reply_to is their last field
                to_coordinator.append(_with_reply_to(message, self._reply_channel(conn)))
            elif isinstance(message, InspectRequest):
                to_replica.append(_with_reply_to(message, conn))
            elif isinstance(message, StatusRequest):
                conn.send(Reply(message.req_id, True, self.status()))
            elif isinstance(message, ConfigRequest):
                conn.send(Reply(message.req_id, True, self.config_for_joiners()))
            elif isinstance(message, MembersRequest):
                conn.send(Reply(message.req_id, True, self.members()))
            elif isinstance(message, (RingChange, BucketCreate, BucketInfo)):
                to_gossiper.append(_with_reply_to(message, conn))
            elif isinstance(message, SetFaults):
                self.apply_faults(message)
                conn.send(Reply(message.req_id, True, None))
            else:
                log.warning("closing client %s: unexpected %s", conn.name, type(message).__name__)
                conn.close()
                return
        for ref, batch in ((self.replica, to_replica), (self.coordinator, to_coordinator),
                           (self.gossiper, to_gossiper)):
            if batch:
                try:
                    ref.tell(batch[0] if len(batch) == 1 else Batch(batch))
                except pykka.ActorDeadError:
                    log.debug("node %s is stopping; %d messages dropped", self.name, len(batch))

    def _deliver_internal(self, messages: list[Any]) -> None:
        """Messages from peers (or from this node to itself): routed by type, one dict lookup each."""
        routes = self._routes
        if len(messages) == 1:                       # the local fast path: coordinator <-> own replica
            message = messages[0]
            ref = routes.get(type(message))
            if ref is None:
                log.warning("node %s dropped unexpected peer message %s", self.name, type(message).__name__)
                return
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass
            return
        groups: dict[str, tuple[Any, list[Any]]] = {}
        for message in messages:
            ref = routes.get(type(message))
            if ref is None:
                log.warning("node %s dropped unexpected peer message %s", self.name, type(message).__name__)
                continue
            groups.setdefault(ref.actor_urn, (ref, []))[1].append(message)
        for ref, batch in groups.values():
            try:
                ref.tell(batch[0] if len(batch) == 1 else Batch(batch))
            except pykka.ActorDeadError:
                log.debug("node %s is stopping; %d messages dropped", self.name, len(batch))

    def config_for_joiners(self) -> dict[str, Any]:
        """The cluster configuration as this node knows it now, for a node joining from elsewhere."""
        body = dataclasses.asdict(self.config)
        nodes = {name: list(address) for name, address in self.transport.addresses().items()}
        nodes[self.name] = list(self.config.nodes[self.name])
        body["nodes"] = nodes
        body["ring_nodes"] = list(self.config.initial_ring_nodes())
        return body

    def members(self) -> dict[str, Any]:
        """Every member this node knows, its address and state, for clients (``MembersRequest``)."""
        addresses = self.transport.addresses()
        addresses[self.name] = self.config.nodes[self.name]
        states = self.membership.states
        incarnations = {**self.membership.incarnations, self.name: self.incarnation}
        return {"members": {node: [host, port, states.get(node, "down"), incarnations.get(node, 0)]
                            for node, (host, port) in addresses.items() if node in states},
                "timeout": self.config.timeout, "n": self.config.n, "cluster_id": self.config.cluster_id,
                "ring_version": self.membership.ring_version, "ring": self.membership.ring.to_data()}

    def join_cluster(self, timeout: float = 60.0) -> None:
        """Ask a member to put this node into the ring (unless it already is), retrying until one answers."""
        from .client import Client

        deadline = time.monotonic() + timeout
        host, port = self.config.nodes[self.name]
        while not self._stopping.is_set() and time.monotonic() < deadline:
            if self.membership.ring_version > 0 and self.name in self.membership.ring.nodes:
                log.info("node %s is a member of ring version %d", self.name, self.membership.ring_version)
                return
            members = [n for n in self.membership.ring.nodes if n != self.name and self.membership.is_up(n)]
            if members:
                try:
                    with Client(self.transport.addresses(), self.secret, nodes=members[:1]) as client:
                        version = client.ring_change(members[0], "join", self.name, host, port)
                    log.info("node %s joined through %s: ring version %d", self.name, members[0], version)
                    return
                except LeaderlessError as exc:
                    log.warning("join through %s failed: %s; retrying", members[0], exc)
            self._stopping.wait(0.5)
        log.error("node %s could not join the cluster within %.0fs", self.name, timeout)

    def _reply_channel(self, conn: Connection) -> Any:
        """Where a client request's answer goes: the connection, unless a lost-ack fault is armed."""
        return _LosingChannel(conn, self) if self._drop_replies > 0 else conn

    def apply_faults(self, faults: SetFaults) -> None:
        self.transport.block(faults.blocked)
        self.transport.delay(faults.delay_ms / 1000.0)
        self.transport.degrade(faults.loss, faults.duplicate, faults.reorder_ms / 1000.0)
        self.wall.skew = faults.clock_skew
        self._drop_replies = faults.drop_replies
        self.faults = _with_reply_to(faults, None)

    def _undeliverable(self, dest: str, messages: list[Any]) -> None:
        """Requests this node coordinates that could not reach ``dest``: fail them for that replica now."""
        lost = [Unreachable(m.req_id, dest) for m in messages
                if isinstance(m, (ReplicaPut, CoordinatePut, ReplicaGet)) and m.coordinator == self.name
                and getattr(m, "want_ack", True)]
        lost += [Unreachable(m.req_id, dest, m.ballot, _PAXOS_PHASES[type(m)]) for m in messages
                 if type(m) in _PAXOS_PHASES and m.coordinator == self.name]
        if lost:
            try:
                self.coordinator.tell(lost[0] if len(lost) == 1 else Batch(lost))
            except pykka.ActorDeadError:
                pass

    def status(self) -> dict[str, Any]:
        host, port = self.config.nodes[self.name]
        counts = self.stats.snapshot()
        return {
            "name": self.name,
            "up": True,
            "pid": os.getpid(),
            "address": [host, port],
            "incarnation": self.incarnation,
            "members": self.membership.states,
            "incarnations": dict(self.membership.incarnations),
            "ring_version": self.membership.ring_version,
            "ring_nodes": list(self.membership.ring.nodes),
            "ring_target_n": self.membership.ring.target_n,
            "blocked": sorted(self.transport.blocked),
            "faults": {k: v for k, v in msgspec.structs.asdict(self.faults).items()
                       if k not in ("req_id", "reply_to") and v},
            "wall_clock": self.wall.now(),
            "keys": self.store.count(),
            "hints_pending": self.store.hint_count(),
            **self.store.log_state(),
            "hints_delivered": counts.get("hints.delivered", 0),
            "hints_dropped": counts.get("hints.dropped", 0),
            "read_repairs": counts.get("read_repairs", 0),
            "aae_rounds": counts.get("aae.rounds", 0),
            "aae_keys_repaired": counts.get("aae.keys_repaired", 0),
            "aae_bytes": counts.get("aae.bytes", 0),
            "handoff_pending": counts.get("handoff.pending", 0),
            "handoff_keys": counts.get("handoff.keys", 0),
            "tombstones_reaped": counts.get("tombstones.reaped", 0),
            "counts": counts,
        }


    def _tick_loop(self) -> None:
        while not self._stopping.wait(TICK):
            tick = Tick(time.monotonic())
            try:
                self.coordinator.tell(tick)
                self.gossiper.tell(tick)
                self.repairer.tell(tick)
            except pykka.ActorDeadError:
                return


def _with_reply_to(message: Any, reply_to: Any) -> Any:
    """``message`` answered through ``reply_to`` (a request's ``reply_to`` is never taken from the wire)."""
    return msgspec.structs.replace(message, reply_to=reply_to)


class _LosingChannel:
    """A client connection whose next reply is lost (the request itself is carried out): a lost ack."""

    def __init__(self, conn: Connection, node: Node) -> None:
        self.conn = conn
        self.node = node

    def send(self, message: Any) -> None:
        if self.node._drop_replies > 0:
            self.node._drop_replies -= 1
            self.node.stats.incr("faults.replies_dropped")
            log.info("fault: dropped a reply to %s", self.conn.name)
            return
        self.conn.send(message)


def tune_gc() -> None:
    """Collect cycles less often: requests allocate many short-lived tuples and hardly any cycles,
    and with the default threshold (700) the collector ran every few requests (perf: ~3% of a
    node's CPU in gc_collect_main and its visitors). What exists after start-up is frozen."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def _stop_when_owner_gone(node: Node) -> None:
    """Read stdin, a pipe the starting process holds open, until EOF: that process has ended."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    log.warning("node %s: the process that started it is gone; stopping", node.name)
    node.request_stop()


def raise_descriptor_limit() -> int:
    """Raise this process's soft descriptor limit (RLIMIT_NOFILE) to its hard limit and return the soft
    limit in force: every connection is a descriptor, and a node out of them can neither accept nor
    open its store (the transport caps connections below this limit, less a reserve)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        log.info("descriptor limit %s (the hard limit already)", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
        return soft
    log.info("descriptor limit raised from %d to %d", soft, hard)
    return hard


def run(name: str, data_dir: str, faults: dict[str, Any] | None = None, join: bool = False,
        owner_pipe: bool = False, listen: tuple[str, int] | None = None) -> int:
    """Run one node in this process until SIGTERM/SIGINT, until it has left the cluster, or (``owner_pipe``)
    until stdin reaches EOF. ``listen``: the address to bind, when not the one in ``cluster.json``."""
    raise_descriptor_limit()
    config = ClusterConfig.load(data_dir)
    node = Node(name, data_dir, config, load_secret(data_dir), listen)
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    faults = dict(faults or {})
    faults["blocked"] = tuple(faults.get("blocked", ()))
    node.start(SetFaults(0, **faults))
    tune_gc()
    if owner_pipe:
        threading.Thread(target=_stop_when_owner_gone, args=(node,), name=f"owner-{name}", daemon=True).start()
    if join:
        threading.Thread(target=node.join_cluster, name=f"join-{name}", daemon=True).start()
    node.wait()
    node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.node", description="Run one leaderless node.")
    parser.add_argument("--data-dir", required=True, help="the cluster's data directory")
    parser.add_argument("--name", required=True, help="this node's name in cluster.json")
    parser.add_argument("--faults", default="", help="JSON of SetFaults fields to start under (used by LocalCluster)")
    parser.add_argument("--join", action="store_true", help="ask a member to add this node to the ring")
    parser.add_argument("--owner-pipe", action="store_true",
                        help="stdin is a pipe from the process that started this node: stop when it closes")
    parser.add_argument("--log-level", default=os.environ.get("LEADERLESS_LOG", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    try:
        return run(args.name, args.data_dir, json.loads(args.faults) if args.faults else None, args.join,
                   args.owner_pipe)
    except (LeaderlessError, StoreError) as exc:   # no cluster, a bad secret, a full disk: one line, no traceback
        log.error("node %s: %s", args.name, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
