"""CPU per put or get of the actors' handlers, without threads or sockets: ``python -m bench.micro_actors``.

Three nodes' real ``ReplicaActor`` and ``CoordinatorActor`` objects (never started: no
threads) are driven in this one thread. Client requests go to the coordinators in
groups of ``--batch``; every message an actor sends is delivered to the right actor in
turn, through the wire codec when it crosses nodes (encode and decode, as the transport
does), until nothing is left. What is measured is the CPU time of this process per
request: the handler and codec work a request costs across the three nodes, with none
of the thread hand-overs, system calls or lock waits of a real cluster (compare with
``leaderless bench``: the difference is what those cost). LMDB commits without sync.

``--profile`` prints the top functions (cProfile) instead of only the total.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from typing import Any

from actors import wire
from actors.coordinator import CoordinatorActor, Settings
from actors.membership import Membership
from actors.messages import Batch, BucketProps, ClientGet, ClientPut, ReplicaGet
from actors.node import _REPLICA
from actors.replica import ReplicaActor
from actors.ring import Ring
from actors.stats import Stats
from storage.hlc import HybridClock
from storage.store import LmdbStore

NODES = ("n1", "n2", "n3")
BUCKET = "bench"


class _Replies:
    """A client connection that counts what it is sent."""

    def __init__(self) -> None:
        self.ok = self.failed = 0

    def send(self, reply: Any) -> None:
        if reply.ok:
            self.ok += 1
        else:
            self.failed += 1

    def send_many(self, replies: list[Any]) -> None:
        for reply in replies:
            self.send(reply)


class Harness:
    """Three nodes' actors in one thread, wired by a queue per actor."""

    def __init__(self, data_dir: str, bucket_type: str = "lww") -> None:
        ring = Ring(list(NODES), partitions=64, target_n=3)
        self.queues: dict[tuple[str, str], list[Any]] = {}
        self.actors: dict[tuple[str, str], Any] = {}
        self.stores: list[LmdbStore] = []
        self.conn = _Replies()
        for name in NODES:
            membership = Membership(name, ring, 1)
            membership.publish({node: "up" for node in NODES})
            membership.buckets[BUCKET] = BucketProps(BUCKET, bucket_type, 3, 2, 2)
            store = LmdbStore(f"{data_dir}/{name}", sync=False)
            self.stores.append(store)
            send_batch = self._sender(name)
            stats = Stats()
            self.actors[(name, "replica")] = ReplicaActor(
                name, store, lambda dest, m, sb=send_batch: sb(dest, [m]), stats, membership,
                hlc=HybridClock(name), send_batch=send_batch)
            self.actors[(name, "coordinator")] = CoordinatorActor(
                name, membership, lambda dest, m, sb=send_batch: sb(dest, [m]), Settings(timeout=30.0), stats,
                send_batch=send_batch, local_replica=self.actors[(name, "replica")])

    def _sender(self, src: str) -> Any:
        def send_batch(dest: str, messages: list[Any]) -> None:
            if dest != src:
                messages = wire.FrameReader().feed(wire.encode_many(messages))
            for message in messages:
                role = "replica" if type(message) in _REPLICA or type(message) is ReplicaGet else "coordinator"
                self.queues.setdefault((dest, role), []).append(message)
        return send_batch

    def run(self, ops: int, kind: str, batch: int) -> None:
        """``ops`` requests, ``batch`` at a time per coordinator in turn, each group run to the end."""
        done = 0
        while done < ops:
            node = NODES[(done // batch) % len(NODES)]
            for i in range(done, min(ops, done + batch)):
                key = f"key{(i * 7919) % 10_000}"
                request = (ClientPut(i, key, b"v" * 100, bucket=BUCKET, reply_to=self.conn) if kind == "put"
                           else ClientGet(i, key, bucket=BUCKET, reply_to=self.conn))
                self.queues.setdefault((node, "coordinator"), []).append(request)
            done = min(ops, done + batch)
            self._pump()

    def _pump(self) -> None:
        busy = True
        while busy:
            busy = False
            for key, actor in self.actors.items():
                queued = self.queues.pop(key, None)
                if queued:
                    busy = True
                    actor.on_receive(Batch(queued))
                inbox = actor.actor_inbox                 # what an actor told itself (the replica's Flush)
                while not inbox.empty():
                    busy = True
                    actor.on_receive(inbox.get().message)

    def close(self) -> None:
        for store in self.stores:
            store.close()


def measure(kind: str, ops: int, batch: int, bucket_type: str = "lww", profile: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="leaderless-micro-") as data_dir:
        harness = Harness(data_dir, bucket_type)
        try:
            harness.run(min(ops, 2_000), "put", batch)          # warm up (and give the gets keys to read)
            harness.conn.ok = harness.conn.failed = 0
            profiler = cProfile.Profile() if profile else None
            start = time.process_time()
            if profiler is not None:
                profiler.enable()
            harness.run(ops, kind, batch)
            if profiler is not None:
                profiler.disable()
            cpu = time.process_time() - start
        finally:
            harness.close()
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(25)
    return {"op": kind, "ops": ops, "batch": batch, "bucket_type": bucket_type,
            "cpu_us_per_op": round(cpu / ops * 1e6, 1), "ok": harness.conn.ok, "failed": harness.conn.failed,
            "profiled": profile}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_actors", description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=8, help="requests handed to a coordinator at once")
    parser.add_argument("--bucket-type", choices=("lww", "siblings"), default="lww")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.ops < 1 or args.batch < 1:
        parser.error("--ops and --batch must be at least 1")
    results = [measure(kind, args.ops, args.batch, args.bucket_type, args.profile) for kind in ("put", "get")]
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            print(f"{r['op']}: {r['cpu_us_per_op']} µs CPU per op across 3 nodes "
                  f"({r['ops']} ops, {r['batch']} per batch, {r['bucket_type']}; {r['failed']} failed)")
    return 0 if all(r["failed"] == 0 and r["ok"] == r["ops"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
