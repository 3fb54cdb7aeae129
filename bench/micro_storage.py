"""Micro-benchmark of the storage layer's per-write hot path, in microseconds per operation.

    python -m bench.micro_storage [--keys 10000] [--repeat 7] [--json] [--baseline OLD.json]

Every write on every replica reads the key's current object (`LmdbStore.get`), commits
its group-commit batch (`LmdbStore.apply`: `encode_object` per object, one transaction)
and then, per committed object, indexes it in the anti-entropy tree (`key_hash`, the
ring's partition, `MerkleTree.update`, which computes `object_hash`). This times each
of those pieces on objects shaped like the replica's: an lww register `Crdt` (the
default bucket) and a one-entry `DVVSet` (a siblings bucket), each holding a fresh
100-byte value, under keys like the benchmark's (``default\\x00user00001234``).

Each figure covers ``--keys`` distinct (key, object) pairs, timed in chunks of about
500 operations, each chunk keeping its best of ``--repeat`` runs (robust to bursts of
load from other processes); loop overhead is included (the ``(loop overhead)`` row
shows how much that is).
The stores are temporary LMDB environments opened with ``sync=False``: `apply` here is
the CPU part of a commit only, without the fsync a real node pays per batch. The
``index step`` takes the partition from the key hash's top bits, as the ring does.

``--baseline OLD.json`` (the ``--json`` output of an earlier run, say on another
commit) adds that run's figures and the speedup to the table.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from storage import crdts, versions
from storage.codec import decode_object, encode_object
from storage.hlc import HybridClock, Timestamp
from storage.merkle import MerkleTree, key_hash, object_hash
from storage.store import LmdbStore

VALUE_SIZE = 100
BATCH = 50
CHUNK_OPS = 500
PARTITION_SHIFT = 160 - 6  # a 64-partition ring: the partition is the key hash's top 6 bits


def lww_object(current: crdts.Crdt | None, value: bytes, actor: str, hlc: HybridClock) -> crdts.Crdt:
    """What the replica's `build` makes for an lww put: a register assignment, no op id."""
    last = current.state[0] if current is not None and current.state else None
    ts = hlc.after(Timestamp(*last) if last is not None else None)
    return crdts.apply(current, "register", ("assign", value), actor, None, ts)


def dvv_object(current: versions.DVVSet | None, value: bytes, actor: str) -> versions.DVVSet:
    """What the replica's `build` makes for a siblings put with the context of the last read."""
    return versions.update(current, versions.join(current), value, actor)


def workload(keys: int, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    names = [f"default\x00user{i:08d}" for i in range(keys)]
    hlc = HybridClock("n1")
    actor = "n1.3f9a1c2e"

    def value() -> bytes:
        return rng.randbytes(VALUE_SIZE)

    lww = [lww_object(None, value(), actor, hlc) for _ in names]
    lww2 = [lww_object(obj, value(), actor, hlc) for obj in lww]
    dvv = [dvv_object(None, value(), actor) for _ in names]
    dvv2 = [dvv_object(obj, value(), actor) for obj in dvv]
    return {"names": names, "lww": lww, "lww2": lww2, "dvv": dvv, "dvv2": dvv2, "rng": rng}


def best(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], ops_per_call: int, repeat: int) -> float:
    """µs per operation of ``fn(*args)`` over `calls`, each call doing `ops_per_call` operations.

    The calls are timed in chunks of about `CHUNK_OPS` operations; each chunk keeps its
    fastest of `repeat` runs, so a burst of load from other processes spoils one sample of
    one chunk rather than a whole figure. Runs go through every call in order (the Merkle
    cases rely on it).
    """
    per_chunk = max(1, CHUNK_OPS // ops_per_call)
    chunks = [calls[i : i + per_chunk] for i in range(0, len(calls), per_chunk)]
    fastest = [float("inf")] * len(chunks)
    clock = time.perf_counter_ns
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            for i, chunk in enumerate(chunks):
                start = clock()
                for args in chunk:
                    fn(*args)
                fastest[i] = min(fastest[i], clock() - start)
        finally:
            gc.enable()
    return sum(fastest) / 1000 / (len(calls) * ops_per_call)


def measure(keys: int, repeat: int) -> list[dict[str, Any]]:
    w = workload(keys)
    names: list[str] = w["names"]
    rows: list[dict[str, Any]] = []

    def add(name: str, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], ops_per_call: int = 1,
            note: str = "", scale: int = 1) -> None:
        rows.append({"name": name, "us_per_op": round(best(fn, calls, ops_per_call, repeat) * scale, 3),
                     "note": note})

    def nothing(*_: Any) -> None:
        return None

    lww_pairs = list(zip(names, w["lww"]))
    dvv_pairs = list(zip(names, w["dvv"]))
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # warm up: let the CPU leave its idle clock before the first figure
        for key, obj in lww_pairs[:1000]:
            object_hash(key, obj)
    add("(loop overhead)", nothing, lww_pairs, note="an empty call per pair")
    add("object_hash lww", object_hash, lww_pairs)
    add("object_hash dvv", object_hash, dvv_pairs)
    add("key_hash", key_hash, [(k,) for k in names])

    for kind in ("lww", "dvv"):
        tree = MerkleTree()
        khashes = [key_hash(k) for k in names]
        for key, obj, khash in zip(names, w[kind], khashes):
            tree.update(khash >> PARTITION_SHIFT, key, obj, khash)
        # the second version of every key, then the first again: every update swaps a hash
        flips = [(khash >> PARTITION_SHIFT, key, obj, khash)
                 for version in (kind + "2", kind) for key, obj, khash in zip(names, w[version], khashes)]
        add(f"MerkleTree.update {kind}", tree.update, flips, note="replaces the key's object, khash given")

        def index(items: list[tuple[str, Any]], tree: MerkleTree = tree) -> None:
            for key, obj in items:           # what the replica's _index does per committed object
                khash = key_hash(key)
                tree.update(khash >> PARTITION_SHIFT, key, obj, khash)

        pairs = [(k, o) for version in (kind + "2", kind) for k, o in zip(names, w[version])]
        batches = [(pairs[i : i + BATCH],) for i in range(0, len(pairs), BATCH)]
        add(f"index step {kind}", index, batches, BATCH, "key_hash + partition + MerkleTree.update")

    for kind in ("lww", "dvv"):
        objs = w[kind]
        add(f"encode_object {kind}", encode_object, [(o,) for o in objs])
        add(f"decode_object {kind}", decode_object, [(encode_object(o),) for o in objs])

    for kind in ("lww", "dvv"):
        root = tempfile.mkdtemp(prefix="micro_storage_")
        store = LmdbStore(os.path.join(root, "db"), map_size=1 << 30, sync=False)
        try:
            pairs = list(zip(names, w[kind]))
            for i in range(0, len(pairs), 1000):
                store.apply(objects=pairs[i : i + 1000])
            order = names[:]
            w["rng"].shuffle(order)
            add(f"LmdbStore.get {kind}", store.get, [(k,) for k in order], note=f"{keys} keys, hits")
            add(f"LmdbStore.get missing ({kind} store)", store.get,
                [(f"default\x00absent{i:08d}",) for i in range(len(order))])
            groups = [(order[i : i + BATCH],) for i in range(0, len(order) - BATCH + 1, BATCH)]
            add(f"LmdbStore.get_many {kind} (per key)", store.get_many, groups, BATCH, f"{BATCH} keys per call")
            if hasattr(store, "reader"):
                def read(group: list[str], store: LmdbStore = store) -> None:
                    with store.reader() as get:
                        for key in group:
                            get(key)

                add(f"LmdbStore.reader {kind} (per key)", read, groups, BATCH, f"{BATCH} gets in one read txn")
            newer = list(zip(names, w[kind + "2"]))
            commits = [(dict(newer[i : i + BATCH]),) for i in range(0, len(newer) - BATCH + 1, BATCH)]

            def commit(batch: dict[str, Any], store: LmdbStore = store) -> None:
                store.apply(objects=batch.items(), hints=[])

            add(f"LmdbStore.apply {kind} (per batch)", commit, commits, BATCH, f"{BATCH} objects, sync=False",
                scale=BATCH)
        finally:
            store.close()
            shutil.rmtree(root, ignore_errors=True)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.micro_storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000, help="distinct keys (and store size); default 10000")
    parser.add_argument("--repeat", type=int, default=7, help="runs per chunk, the best is kept; default 7")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--baseline", metavar="OLD.json", help="a --json output to compare with")
    args = parser.parse_args(argv)
    if args.keys < BATCH or args.repeat < 1:
        parser.error(f"--keys must be at least {BATCH} and --repeat at least 1")
    baseline: dict[str, float] = {}
    if args.baseline:
        try:
            with open(args.baseline, encoding="utf-8") as file:
                baseline = {row["name"]: row["us_per_op"] for row in json.load(file)["results"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            parser.error(f"cannot read --baseline {args.baseline}: {exc}")
    rows = measure(args.keys, args.repeat)
    if args.json:
        print(json.dumps({"keys": args.keys, "repeat": args.repeat, "value_size": VALUE_SIZE, "lmdb_sync": False,
                          "results": rows}, indent=2))
        return
    print(f"storage hot path: µs per op, best of {args.repeat}, {args.keys} keys, {VALUE_SIZE}-byte values "
          "(LMDB sync=False: the CPU part of a commit, no fsync)")
    width = max(len(row["name"]) for row in rows)
    if baseline:
        print(f"  {'':<{width}}  {'baseline':>9}  {'now':>9}  speedup")
    for row in rows:
        note = f"  {row['note']}" if row["note"] else ""
        old = baseline.get(row["name"])
        if baseline:
            before = f"{old:>9.3f}" if old else f"{'-':>9}"
            ratio = f"{old / row['us_per_op']:>6.2f}x" if old and row["us_per_op"] else f"{'':>7}"
            print(f"  {row['name']:<{width}}  {before}  {row['us_per_op']:>9.3f}  {ratio}{note}")
        else:
            print(f"  {row['name']:<{width}}  {row['us_per_op']:>9.3f}{note}")


if __name__ == "__main__":
    main()
