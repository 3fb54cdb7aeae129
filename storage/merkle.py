"""Merkle trees for active anti-entropy (Riak AAE style), one per ring partition.

Every node keeps, for each partition it holds keys of, a fixed-shape hash tree
over those keys (a tree is named by any hashable id: leaderless names one by
``(partition, n)``, Riak's "index_n", so keys whose buckets have different n, held
by different nodes, are compared only with the nodes that hold them):

- a key falls into one of `SEGMENTS` leaf *segments* by the low bits of its
  SHA-1 (`segment_of`); the ring picks the partition from the high bits, so the
  keys of one partition spread evenly over its segments;
- a segment's hash is the XOR of the `object_hash` of each of its keys;
- the segments are grouped, `FANOUT` consecutive ones at a time, into `FANOUT`
  *buckets*, whose hash is the XOR of their segments;
- the root is the XOR of the buckets (so also of every object hash).

`MerkleTree.update` is called on every write (and with None when a key goes
away). Because XOR is its own inverse, it swaps the key's old object hash for
the new one in its segment, bucket and root in O(1): no rescans. On start a node
rebuilds the trees by calling `update` for every stored object; the result is
the same whatever the order, and the same as the tree updated write by write.

Two replicas of a partition compare their trees top down, fetching only what
differs: the roots, then the `buckets`, then the `segments` of the differing
buckets (non-zero ones only), then the `keys` (with their object hashes) of the
differing segments. `diff_buckets`, `diff_segments` and `diff_keys` compare each
level. For ``k`` differing keys a descent exchanges at most about
``FANOUT + k * FANOUT + (keys of k segments)`` hashes per side, whatever the
number of keys in the partition.

Hashes are 64-bit. XOR aggregation is fine for *detecting* differences between
honest replicas: each object hash is a keyed blake2b digest of the key and a
canonical encoding of its object (`storage.digests`, where `key_hash` and
`object_hash` live; this module re-exports them), so two different trees have
equal aggregates only by a 2**-64 accident. It is not meant to resist an adversary choosing
values to cancel out (XOR sums are easy to forge); peers are trusted.

An object hash is never 0, so 0 means "no key here" at every level: a missing
segment in a `segments` reply compares equal to an empty one. A partition whose
last key is removed is forgotten.

Pure and local: nothing here imports `actors`. A `MerkleTree` is not thread-safe;
its owner serialises calls (one actor).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from storage.crdts import Crdt
from storage.digests import key_hash, object_hash
from storage.versions import DVVSet

__all__ = [
    "FANOUT",
    "SEGMENTS",
    "MerkleTree",
    "diff_buckets",
    "diff_keys",
    "diff_segments",
    "key_hash",
    "object_hash",
    "segment_of",
]

SEGMENTS: int = 1024
"""Leaf segments per partition."""

FANOUT: int = 32
"""Segments per bucket, and buckets per partition (``FANOUT * FANOUT == SEGMENTS``)."""

_MASK = SEGMENTS - 1


def segment_of(khash: int) -> int:
    """The segment of a key hash: its low bits (the ring uses the high bits)."""
    return khash & _MASK


def _index(value: Any, limit: int, what: str) -> int:
    """A bucket or segment index from a peer's request, checked to be in range."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(f"{what} index must be an int in [0, {limit}), got {value!r}")
    return value


class _Partition:
    """The tree of one partition: the key hashes of each segment and the XOR levels above."""

    __slots__ = ("buckets", "count", "keys", "root", "segments")

    def __init__(self) -> None:
        self.keys: dict[int, dict[str, int]] = {}  # segment -> key -> object hash; only non-empty segments
        self.segments: list[int] = [0] * SEGMENTS
        self.buckets: list[int] = [0] * FANOUT
        self.root = 0
        self.count = 0


class MerkleTree:
    """Per-partition hash trees over the keys a node holds.

    Segment hash = XOR of the object hashes of its keys; bucket hash = XOR of
    its segments; root = XOR of buckets.

    Partitions without keys are not kept: their root is 0, their buckets and
    segments are all 0, and `partitions` does not list them.
    """

    def __init__(self) -> None:
        self._partitions: dict[Hashable, _Partition] = {}
        self._count = 0

    def update(self, partition: Hashable, key: str, obj: DVVSet | Crdt | None, khash: int | None = None) -> None:
        """Set the object of `key` in `partition` (None removes the key); O(1).

        ``khash`` is `key_hash(key)` when the caller has it already.
        """
        new = object_hash(key, obj)
        segment = (key_hash(key) if khash is None else khash) & _MASK
        tree = self._partitions.get(partition)
        if tree is None:
            if not new:
                return
            tree = self._partitions[partition] = _Partition()
        hashes = tree.keys.get(segment)
        if hashes is None:
            if not new:
                return                              # removing a key that is not there
            tree.keys[segment] = {key: new}
            old = 0
        else:
            old = hashes.get(key, 0)
            if old == new:
                return
            if new:
                hashes[key] = new
            else:
                del hashes[key]
                if not hashes:
                    del tree.keys[segment]
        delta = old ^ new
        tree.segments[segment] ^= delta
        tree.buckets[segment // FANOUT] ^= delta
        tree.root ^= delta
        if not old:                                 # added
            tree.count += 1
            self._count += 1
        elif not new:                               # removed
            tree.count -= 1
            self._count -= 1
            if not tree.count:
                del self._partitions[partition]

    def root(self, partition: Hashable) -> int:
        """The root hash of `partition` (0 when it holds no key)."""
        tree = self._partitions.get(partition)
        return 0 if tree is None else tree.root

    def buckets(self, partition: Hashable) -> tuple[int, ...]:
        """The `FANOUT` bucket hashes of `partition`."""
        tree = self._partitions.get(partition)
        return (0,) * FANOUT if tree is None else tuple(tree.buckets)

    def segments(self, partition: Hashable, buckets: Iterable[int]) -> dict[int, int]:
        """Segment index -> hash for the non-zero segments of those buckets.

        Raises `ValueError` for a bucket index outside ``[0, FANOUT)``.
        """
        wanted = sorted({_index(bucket, FANOUT, "bucket") for bucket in buckets})
        tree = self._partitions.get(partition)
        if tree is None:
            return {}
        hashes = tree.segments
        return {
            segment: hashes[segment]
            for bucket in wanted
            for segment in range(bucket * FANOUT, (bucket + 1) * FANOUT)
            if hashes[segment]
        }

    def keys(self, partition: Hashable, segments: Iterable[int]) -> dict[str, int]:
        """Key -> object hash for every key in those segments of `partition`.

        Raises `ValueError` for a segment index outside ``[0, SEGMENTS)``.
        """
        wanted = sorted({_index(segment, SEGMENTS, "segment") for segment in segments})
        tree = self._partitions.get(partition)
        result: dict[str, int] = {}
        if tree is not None:
            for segment in wanted:
                result.update(tree.keys.get(segment, {}))
        return result

    def partitions(self) -> list[Any]:
        """The partitions holding at least one key, sorted."""
        return sorted(self._partitions)

    def key_count(self, partition: Hashable | None = None) -> int:
        """The number of keys in `partition`, or in every partition when None."""
        if partition is None:
            return self._count
        tree = self._partitions.get(partition)
        return 0 if tree is None else tree.count

    def drop_partition(self, partition: Hashable) -> None:
        """Forget `partition` (after handing it off); a no-op if it holds no key."""
        tree = self._partitions.pop(partition, None)
        if tree is not None:
            self._count -= tree.count


def diff_buckets(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """The indexes where two bucket lists differ; `ValueError` if their lengths do."""
    if len(a) != len(b):
        raise ValueError(f"bucket lists differ in length: {len(a)} and {len(b)}")
    return [index for index, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]


def diff_segments(a: Mapping[int, int], b: Mapping[int, int]) -> list[int]:
    """The segment indexes whose hashes differ, a missing segment counting as 0; sorted."""
    return sorted(segment for segment in a.keys() | b.keys() if a.get(segment, 0) != b.get(segment, 0))


def diff_keys(a: Mapping[str, int], b: Mapping[str, int]) -> list[str]:
    """The keys whose object hashes differ or that only one side holds; sorted."""
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))
