"""The Dynamo paper's shopping cart, twice: with siblings merged by the client, and as a CRDT set.

    python examples/shopping_cart.py

Four shopper actors run in four worker processes (shipped with cloudpickle), all filling
the same carts at once, while one node of the five is partitioned away (the shoppers'
clients talk to the four nodes of the majority side; the lone node cannot make a quorum).
Afterwards every item any shopper added is in the cart: concurrent writes became
siblings (or merged on the server) instead of overwriting each other.
"""

from __future__ import annotations

import tempfile
import time

import pykka

from actors import LocalCluster, QuorumFailed
from actors.workers import run_workers

ITEMS = 50


class SiblingShopper(pykka.ThreadingActor):
    """Adds items to a plain (siblings) key: read, merge every sibling, add, write back."""

    def __init__(self, client):
        super().__init__()
        self.client = client

    def run(self, worker: int, carts: int) -> int:
        for i in range(ITEMS):
            for attempt in range(5):                # a quorum can fail while the partition settles
                try:
                    self.add(f"cart:{i % carts}", f"w{worker}-item{i}")
                    break
                except QuorumFailed:
                    time.sleep(0.2 * (attempt + 1))
        return ITEMS

    def add(self, key: str, item: str) -> None:
        obj = self.client.get(key)
        items = set().union(*(v.decode().split(",") for v in obj.values)) - {""}
        items.add(item)
        self.client.put(key, ",".join(sorted(items)).encode(), context=obj.context)


class SetShopper(pykka.ThreadingActor):
    """Adds items to a `set` bucket: the server merges, no read needed."""

    def __init__(self, client):
        super().__init__()
        self.carts = client.bucket("carts")

    def run(self, worker: int, carts: int) -> int:
        for i in range(ITEMS):
            self.carts.add(f"cart:{i % carts}", f"w{worker}-item{i}")
        return ITEMS


def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir, LocalCluster(nodes=5, data_dir=data_dir) as cluster:
        client = cluster.client()
        client.create_bucket("carts", type="set")
        cluster.isolate("n5")                       # one node cut off while the shoppers shop
        majority = ["n1", "n2", "n3", "n4"]         # the shoppers' clients are on the majority side
        started = time.monotonic()
        run_workers(SiblingShopper, count=4, data_dir=data_dir, params={"carts": 3}, nodes=majority)
        run_workers(SetShopper, count=4, data_dir=data_dir, params={"carts": 3}, nodes=majority)
        cluster.heal()
        cluster.wait_until_converged(cluster.nodes)   # every node sees every other again
        expected = {f"w{w}-item{i}" for w in range(4) for i in range(ITEMS)}

        merged: set[str] = set()
        for c in range(3):
            obj = client.get(f"cart:{c}", r="all")
            merged |= set().union(*(v.decode().split(",") for v in obj.values)) - {""}
        crdt = set().union(*(client.bucket("carts").get(f"cart:{c}") for c in range(3)))
        print(f"{len(expected)} items added by 4 shoppers in {time.monotonic() - started:.1f}s")
        print(f"siblings + client merge: {len(merged & expected)} present, {len(expected - merged)} lost")
        print(f"set bucket (server merge): {len(crdt & expected)} present, {len(expected - crdt)} lost")


if __name__ == "__main__":
    main()
