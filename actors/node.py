"""One node process: its store, its actors, its transport, its ticker.

Run as ``python -m actors.node --data-dir DIR --name n1`` (``LocalCluster`` does this).
The node reads ``DIR/cluster.json`` and ``DIR/secret``, keeps its data in
``DIR/n1/store`` and stops cleanly on SIGTERM or SIGINT (actors stopped, LMDB closed).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pykka

from storage.store import LmdbStore

from .config import ClusterConfig, load_secret
from .coordinator import CoordinatorActor, Settings
from .gossiper import GossiperActor
from .membership import Membership
from .messages import (Ack, Batch, Built, ClientGet, ClientPut, CoordinatePut, Heartbeat, InspectRequest, Reply,
                       ReplicaGet, ReplicaGetReply, ReplicaPut, SetFaults, StatusRequest, Tick, Unreachable)
from .replica import ReplicaActor
from .ring import Ring
from .stats import Stats
from .transport import Connection, Transport

log = logging.getLogger(__name__)

TICK = 0.05
_REPLICA = (ReplicaPut, CoordinatePut, ReplicaGet)
_COORDINATOR = (Ack, Built, ReplicaGetReply)


class Node:
    """Boots and stops one node."""

    def __init__(self, name: str, data_dir: str | os.PathLike[str], config: ClusterConfig, secret: bytes) -> None:
        if name not in config.nodes:
            raise SystemExit(f"node {name!r} is not in {data_dir}/cluster.json")
        self.name = name
        self.data_dir = Path(data_dir)
        self.config = config
        self.secret = secret
        self.stats = Stats()
        self._stopping = threading.Event()
        self._ticker: threading.Thread | None = None

    def start(self, blocked: list[str] | None = None, delay_ms: float = 0.0) -> None:
        config = self.config
        self.store = LmdbStore(str(self.data_dir / self.name / "store"), map_size=config.map_size)
        actor_id = self.store.meta_get("actor_id")
        if actor_id is None:   # a new (or wiped) store gets a new dot id, so old dots are never reused
            actor_id = f"{self.name}.{secrets.token_hex(4)}".encode()
            self.store.meta_put("actor_id", actor_id)
        self.actor_id = actor_id.decode()
        self.incarnation = int(self.store.meta_get("incarnation") or b"0") + 1
        self.store.meta_put("incarnation", str(self.incarnation).encode())

        self.transport = Transport(self.name, self.secret, dict(config.nodes), self.deliver, self._undeliverable)
        ring = Ring(config.nodes, partitions=config.partitions, target_n=min(config.n, len(config.nodes)))
        self.membership = Membership(self.name, ring)
        send = self.transport.send
        self.replica = ReplicaActor.start(self.name, self.actor_id, self.store, send, self.stats)
        settings = Settings(n=config.n, r=config.r, w=config.w, timeout=config.timeout)
        self.coordinator = CoordinatorActor.start(self.name, self.membership, send, settings, self.stats)
        self.gossiper = GossiperActor.start(self.name, self.incarnation, self.membership, self.transport.peers, send,
                                            interval=config.gossip_interval, down_after=config.down_after)
        self.transport.block(blocked or ())
        self.transport.delay(delay_ms / 1000.0)
        host, port = config.nodes[self.name]
        self.transport.listen(host, port)
        self._ticker = threading.Thread(target=self._tick_loop, name=f"ticker-{self.name}", daemon=True)
        self._ticker.start()
        log.info("node %s (%s, incarnation %d) listening on %s:%d", self.name, self.actor_id, self.incarnation,
                 host, port)

    def stop(self) -> None:
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        self.transport.stop()
        for ref in (self.gossiper, self.coordinator, self.replica):
            try:
                ref.stop(timeout=5)
            except pykka.ActorDeadError:
                pass
        self.store.close()
        log.info("node %s stopped", self.name)

    def wait(self) -> None:
        while not self._stopping.wait(0.5):
            pass

    def request_stop(self, *_: Any) -> None:
        self._stopping.set()

    # --- message routing ---------------------------------------------------------------

    def deliver(self, messages: list[Any], conn: Connection | None) -> None:
        """Route a batch from the transport to the actors, one ``Batch`` per actor."""
        to_replica: list[Any] = []
        to_coordinator: list[Any] = []
        to_gossiper: list[Any] = []
        for message in messages:
            if conn is not None:
                if isinstance(message, (ClientPut, ClientGet)):
                    to_coordinator.append(message._replace(reply_to=conn))
                elif isinstance(message, InspectRequest):
                    to_replica.append(message._replace(reply_to=conn))
                elif isinstance(message, StatusRequest):
                    conn.send(Reply(message.req_id, True, self.status()))
                elif isinstance(message, SetFaults):
                    self.transport.block(message.blocked)
                    self.transport.delay(message.delay_ms / 1000.0)
                    conn.send(Reply(message.req_id, True, None))
                else:
                    log.warning("closing client %s: unexpected %s", conn.name, type(message).__name__)
                    conn.close()
                    return
            elif isinstance(message, _REPLICA):
                to_replica.append(message)
            elif isinstance(message, _COORDINATOR):
                to_coordinator.append(message)
            elif isinstance(message, Heartbeat):
                to_gossiper.append(message)
            else:
                log.warning("node %s dropped unexpected peer message %s", self.name, type(message).__name__)
        for ref, batch in ((self.replica, to_replica), (self.coordinator, to_coordinator),
                           (self.gossiper, to_gossiper)):
            if batch:
                try:
                    ref.tell(batch[0] if len(batch) == 1 else Batch(batch))
                except pykka.ActorDeadError:
                    log.debug("node %s is stopping; %d messages dropped", self.name, len(batch))

    def _undeliverable(self, dest: str, messages: list[Any]) -> None:
        """Requests this node coordinates that could not reach ``dest``: fail them for that replica now."""
        lost = [Unreachable(m.req_id, dest) for m in messages
                if isinstance(m, _REPLICA) and m.coordinator == self.name and getattr(m, "want_ack", True)]
        if lost:
            try:
                self.coordinator.tell(lost[0] if len(lost) == 1 else Batch(lost))
            except pykka.ActorDeadError:
                pass

    def status(self) -> dict[str, Any]:
        host, port = self.config.nodes[self.name]
        return {
            "name": self.name,
            "up": True,
            "pid": os.getpid(),
            "address": [host, port],
            "actor_id": self.actor_id,
            "incarnation": self.incarnation,
            "members": self.membership.states,
            "blocked": sorted(self.transport.blocked),
            "keys": self.store.count(),
            "hints_pending": self.store.hint_count(),
            "counts": self.stats.snapshot(),
        }

    def _tick_loop(self) -> None:
        while not self._stopping.wait(TICK):
            tick = Tick(time.monotonic())
            try:
                self.coordinator.tell(tick)
                self.gossiper.tell(tick)
            except pykka.ActorDeadError:
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.node", description="Run one leaderless node.")
    parser.add_argument("--data-dir", required=True, help="the cluster's data directory")
    parser.add_argument("--name", required=True, help="this node's name in cluster.json")
    parser.add_argument("--blocked", default="", help="comma-separated peers to start partitioned from")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="start slowed down by this much")
    parser.add_argument("--log-level", default=os.environ.get("LEADERLESS_LOG", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {args.name} %(levelname)s %(name)s: %(message)s")
    config = ClusterConfig.load(args.data_dir)
    node = Node(args.name, args.data_dir, config, load_secret(args.data_dir))
    signal.signal(signal.SIGTERM, node.request_stop)
    signal.signal(signal.SIGINT, node.request_stop)
    node.start(blocked=[p for p in args.blocked.split(",") if p], delay_ms=args.delay_ms)
    node.wait()
    node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
