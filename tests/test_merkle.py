"""Tests of the anti-entropy Merkle trees: hashing, incremental upkeep, and the top-down descent.

The descent is the exchange two replicas of a partition run: roots, then buckets,
then the non-zero segments of the differing buckets, then the keys of the
differing segments. `descent` below plays both sides and counts every hash and
key the trees hand out, which is what a real exchange would send.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from storage import crdts, digests
from storage.codec import decode_object, encode_object
from storage.crdts import Crdt
from storage.hlc import Timestamp
from storage.merkle import (
    FANOUT,
    SEGMENTS,
    MerkleTree,
    diff_buckets,
    diff_keys,
    diff_segments,
    key_hash,
    object_hash,
    segment_of,
)
from storage.versions import DVVSet, join, sync, update

no_deadline = settings(deadline=None)  # shared CI machines are slow at times; timing is not the property
ROOT = Path(__file__).resolve().parent.parent
KEYS = [f"key-{i}" for i in range(60)]
PARTITIONS = (0, 1, 7)

keys = st.sampled_from(KEYS)
partitions = st.sampled_from(PARTITIONS)


@st.composite
def objects(draw: st.DrawFn) -> DVVSet:
    """DVVSets built the way the cluster builds them: a few writes by random actors and contexts."""
    obj: DVVSet | None = None
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        context = join(obj) if draw(st.booleans()) else ()
        value = draw(st.one_of(st.binary(max_size=6), st.integers(), st.text(max_size=4)))
        obj = update(obj, context, value, draw(st.sampled_from("abc")))
    assert obj is not None
    return obj


states = st.dictionaries(st.tuples(partitions, keys), objects(), max_size=40)


def build(state: dict[tuple[int, str], DVVSet]) -> MerkleTree:
    tree = MerkleTree()
    for (partition, key), obj in state.items():
        tree.update(partition, key, obj)
    return tree


def snapshot(tree: MerkleTree) -> dict[int, tuple[Any, ...]]:
    """Everything a peer can observe of a tree, partition by partition."""
    every_bucket = range(FANOUT)
    return {
        partition: (
            tree.root(partition),
            tree.buckets(partition),
            tree.segments(partition, every_bucket),
            tree.keys(partition, range(SEGMENTS)),
            tree.key_count(partition),
        )
        for partition in PARTITIONS
    }


def descent(a: MerkleTree, b: MerkleTree, partition: int) -> tuple[list[str], int]:
    """Compare two trees top down; return the differing keys and the number of ints/keys handed out."""
    transferred = 2
    if a.root(partition) == b.root(partition):
        return [], transferred
    buckets_a, buckets_b = a.buckets(partition), b.buckets(partition)
    transferred += len(buckets_a) + len(buckets_b)
    buckets = diff_buckets(buckets_a, buckets_b)
    segments_a, segments_b = a.segments(partition, buckets), b.segments(partition, buckets)
    transferred += len(segments_a) + len(segments_b)
    segments = diff_segments(segments_a, segments_b)
    keys_a, keys_b = a.keys(partition, segments), b.keys(partition, segments)
    transferred += len(keys_a) + len(keys_b)
    return diff_keys(keys_a, keys_b), transferred


def put(value: Any, actor: str = "a") -> DVVSet:
    return update(None, (), value, actor)


# --- hashing -------------------------------------------------------------------------------------


def test_key_hash_is_the_rings_sha1_and_segments_use_its_low_bits() -> None:
    from actors.ring import Ring

    for key in ("", "a", "ключ", "key-12345"):
        assert key_hash(key) == Ring.key_hash(key)
        assert segment_of(key_hash(key)) == key_hash(key) & (SEGMENTS - 1)
    assert FANOUT * FANOUT == SEGMENTS


def test_none_hashes_to_zero_and_an_object_never_does() -> None:
    assert object_hash("k", None) == 0
    digest = object_hash("k", put(b"v"))
    assert 0 < digest < 2**64


@st.composite
def replicas(draw: st.DrawFn) -> list[DVVSet | None]:
    """Three replicas' states of one key after a random history of writes and syncs.

    Each replica coordinates writes under its own actor, with the context of any
    state seen so far or none, and syncs with the others, as in the cluster.
    """
    states: list[DVVSet | None] = [None, None, None]
    seen: list[DVVSet | None] = [None]
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        i = draw(st.integers(min_value=0, max_value=2))
        if draw(st.booleans()):
            context = join(draw(st.sampled_from(seen)))
            states[i] = update(states[i], context, draw(st.binary(max_size=3)), "abc"[i])
        else:
            states[i] = sync(states[i], states[draw(st.integers(min_value=0, max_value=2))])
        seen.append(states[i])
    return states


@no_deadline
@given(replicas())
def test_object_hash_is_equal_for_equal_dvvsets_merged_in_any_order(states: list[DVVSet | None]) -> None:
    a, b, c = states
    left, right = sync(sync(a, b), c), sync(c, sync(b, a))
    assert left == right
    assert object_hash("k", left) == object_hash("k", right)
    assert object_hash("k", sync(a, b)) == object_hash("k", sync(b, a))
    if a != b:
        assert object_hash("k", a) != object_hash("k", b)


def test_object_hash_is_equal_for_equal_values_built_differently() -> None:
    first = {"x": 1, "y": 2}
    second = {"y": 2, "x": 1}
    assert list(first) != list(second)
    pairs = [
        (first, second),
        ({"p", "q", "r", "s"}, frozenset(["s", "r", "q", "p"])),
        (b"raw", bytearray(b"raw")),
        ((1, 2.0, True), (1.0, 2, 1)),
        (-0.0, 0),
        (2**200, float(2**200)),
    ]
    for one, other in pairs:
        assert put(one) == put(other)
        assert object_hash("k", put(one)) == object_hash("k", put(other)), (one, other)


def test_object_hash_differs_for_different_objects_and_keys() -> None:
    base = put(b"v")
    different = [
        put(b"w"),
        put(b"v", "b"),
        update(base, (), b"v", "a"),
        DVVSet(base.entries, (b"anon",)),
        put([b"v"]),
        put((b"v",)),
        put("v"),
        put(1.5),
        put(None),
    ]
    hashes = {object_hash("k", obj) for obj in [base, *different]}
    assert len(hashes) == len(different) + 1
    assert object_hash("k", base) != object_hash("k2", base)
    assert object_hash("ab", put("c")) != object_hash("a", put("bc"))


def test_object_hash_refuses_values_that_are_not_builtins() -> None:
    with pytest.raises(TypeError):
        object_hash("k", put(object()))


def test_object_hash_is_the_same_in_processes_with_different_hash_seeds() -> None:
    obj = put({"set": frozenset(f"m{i}" for i in range(20)), "n": 7})
    script = (
        "from storage.merkle import object_hash; from storage.versions import update; "
        "print(object_hash('k', update(None, (), {'set': frozenset(f'm{i}' for i in range(20)), 'n': 7}, 'a')))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert int(run.stdout) == object_hash("k", obj)


# --- upkeep ----------------------------------------------------------------------------------------


@no_deadline
@given(states, st.randoms(use_true_random=False))
def test_two_trees_fed_the_same_pairs_in_different_orders_are_equal(state: dict, rng: Any) -> None:
    items = list(state.items())
    shuffled = items[:]
    rng.shuffle(shuffled)
    assert snapshot(build(dict(items))) == snapshot(build(dict(shuffled)))


def test_updating_a_key_back_to_its_previous_object_restores_the_previous_root() -> None:
    tree = build({(0, key): put(key) for key in KEYS[:10]})
    before = snapshot(tree)
    tree.update(0, "key-3", put(b"other"))
    tree.update(0, "key-40", put(b"new"))
    assert tree.root(0) != before[0][0]
    tree.update(0, "key-3", put("key-3"))
    tree.update(0, "key-40", None)
    assert snapshot(tree) == before


operations = st.lists(st.tuples(partitions, keys, st.one_of(st.none(), objects())), max_size=80)


@no_deadline
@given(operations)
def test_a_tree_updated_step_by_step_equals_one_built_from_the_final_state(ops: list) -> None:
    stepwise = MerkleTree()
    final: dict[tuple[int, str], DVVSet] = {}
    for partition, key, obj in ops:
        stepwise.update(partition, key, obj)
        if obj is None:
            final.pop((partition, key), None)
        else:
            final[(partition, key)] = obj
    rebuilt = build(final)
    assert snapshot(stepwise) == snapshot(rebuilt)
    assert stepwise.partitions() == rebuilt.partitions() == sorted({p for p, _ in final})
    assert stepwise.key_count() == len(final)


def test_removing_every_key_empties_the_partition() -> None:
    tree = build({(p, key): put(key) for p in (0, 1) for key in KEYS})
    for key in KEYS:
        tree.update(0, key, None)
    tree.update(0, KEYS[0], None)  # removing an absent key is harmless
    assert tree.root(0) == 0
    assert tree.buckets(0) == (0,) * FANOUT
    assert tree.segments(0, range(FANOUT)) == {}
    assert tree.partitions() == [1]
    assert (tree.key_count(0), tree.key_count(1), tree.key_count()) == (0, len(KEYS), len(KEYS))


def test_dropping_a_partition_forgets_only_its_keys() -> None:
    tree = build({(p, key): put(key) for p in (0, 1) for key in KEYS})
    tree.drop_partition(0)
    tree.drop_partition(5)
    assert tree.partitions() == [1]
    assert tree.key_count() == len(KEYS)
    assert tree.root(0) == 0


def test_the_levels_are_xors_of_the_level_below() -> None:
    tree = build({(0, key): put(key) for key in KEYS})
    segments = tree.segments(0, range(FANOUT))
    keys_by_segment = {s: tree.keys(0, [s]) for s in segments}
    for segment, digest in segments.items():
        folded = 0
        for key, value in keys_by_segment[segment].items():
            assert segment_of(key_hash(key)) == segment
            folded ^= value
        assert folded == digest
    for bucket, digest in enumerate(tree.buckets(0)):
        folded = 0
        for segment, value in tree.segments(0, [bucket]).items():
            assert segment // FANOUT == bucket
            folded ^= value
        assert folded == digest
    root = 0
    for digest in tree.buckets(0):
        root ^= digest
    assert root == tree.root(0) != 0


def test_requests_for_indexes_out_of_range_are_refused() -> None:
    tree = build({(0, "k"): put(1)})
    bad: Any
    for bad in (-1, FANOUT, True, "3", 1.0):
        with pytest.raises(ValueError):
            tree.segments(0, [bad])
    for bad in (-1, SEGMENTS, None):
        with pytest.raises(ValueError):
            tree.keys(0, [bad])


# --- comparison ------------------------------------------------------------------------------------


def test_the_diffs_treat_missing_entries_as_they_should() -> None:
    assert diff_buckets((1, 2, 3), (1, 5, 4)) == [1, 2]
    with pytest.raises(ValueError):
        diff_buckets((1, 2), (1, 2, 3))
    assert diff_segments({1: 5, 2: 0, 3: 7}, {3: 7, 4: 9}) == [1, 4]
    assert diff_keys({"b": 1, "a": 2, "c": 3}, {"c": 3, "b": 4, "d": 5}) == ["a", "b", "d"]


base_states = st.dictionaries(keys, objects(), max_size=50)


@st.composite
def divergences(draw: st.DrawFn) -> tuple[dict[str, DVVSet], dict[str, DVVSet], set[str]]:
    """A base state, a copy with k keys modified, added or removed, and those k keys."""
    base = draw(base_states)
    changed = draw(st.sets(keys, max_size=8))
    other = dict(base)
    for key in changed:
        if key in base and draw(st.booleans()):
            del other[key]
        else:
            other[key] = update(base.get(key), (), b"changed", "z")
    return base, other, changed


@no_deadline
@given(divergences())
def test_a_descent_finds_exactly_the_keys_that_differ(case: tuple) -> None:
    base, other, changed = case
    a = build({(3, key): obj for key, obj in base.items()})
    b = build({(3, key): obj for key, obj in other.items()})
    found, transferred = descent(a, b, 3)
    assert found == sorted(changed)
    assert descent(b, a, 3)[0] == found
    if not changed:
        assert transferred == 2  # equal roots end the exchange


def transfer_for(total: int, k: int = 3) -> tuple[int, int]:
    """Items a descent hands out between two trees of `total` keys that differ in `k` keys; and its bound."""
    names = [f"key-{i}" for i in range(total)]
    a = build({(0, name): put(i) for i, name in enumerate(names)})
    b = build({(0, name): put(i) for i, name in enumerate(names)})
    changed = [names[1], names[total // 2], f"new-{total}"]
    b.update(0, changed[0], put(b"modified"))
    b.update(0, changed[1], None)
    b.update(0, changed[2], put(b"added"))
    found, transferred = descent(a, b, 0)
    assert found == sorted(changed)
    segments = {segment_of(key_hash(name)) for name in changed}
    keys_in_segments = len(a.keys(0, segments)) + len(b.keys(0, segments))
    bound = 2 * (1 + FANOUT + k * FANOUT) + keys_in_segments
    return transferred, bound


def test_a_descent_for_k_differences_transfers_about_the_same_for_10000_keys_as_for_100() -> None:
    small, small_bound = transfer_for(100)
    large, large_bound = transfer_for(10_000)
    assert small <= small_bound
    assert large <= large_bound
    assert large_bound - small_bound < 100  # the bound hardly moves: only the keys of 3 segments grow
    assert large < 5 * small  # 100x the keys, a few times the data: the fixed levels saturate
    assert large < 10_000 // 20  # a tiny fraction of shipping every key


# --- the digest encodings (storage.digests) ------------------------------------------------------


def lww(value: Any, ts: tuple[int, int, str] = (1_700_000_000_000, 3, "n1"), actor: str = "n1.3f9a1c2e",
        op_id: str | None = None) -> Crdt:
    """An lww register as the replica builds one (`crdts.apply` of an assignment)."""
    return crdts.apply(None, "register", ("assign", value), actor, op_id, Timestamp(*ts))


def d_encoding(key: str, obj: DVVSet) -> bytes:
    """The ``D`` digest input as storage.digests documents it, written independently of its fast path."""
    def length(n: int) -> bytes:
        return struct.pack(">Q", n)

    def text(s: str) -> bytes:
        raw = s.encode("utf-8", "surrogatepass")
        return length(len(raw)) + raw

    def value(v: Any) -> bytes:
        if v is None:
            return b"N"
        return (b"b" + length(len(v)) + v) if isinstance(v, bytes) else (b"s" + text(v))

    out = b"D" + text(key) + length(len(obj.entries))
    for actor, counter, vals in obj.entries:
        out += text(actor) + struct.pack(">q", counter) + length(len(vals)) + b"".join(map(value, vals))
    return out + length(len(obj.anonymous)) + b"".join(map(value, obj.anonymous))


plain_values = st.one_of(st.none(), st.binary(max_size=8), st.text(max_size=4))


@st.composite
def plain_dvvsets(draw: st.DrawFn) -> DVVSet:
    """DVVSets of exact bytes, str and None values, one entry with one value as often as not."""
    if draw(st.booleans()):
        return DVVSet(((draw(st.text(min_size=1, max_size=6)), draw(st.integers(1, 2**63 - 1)),
                        (draw(st.binary(max_size=120)),)),))
    actors = sorted(draw(st.lists(st.text(min_size=1, max_size=6), unique=True, max_size=3)))
    entries = []
    for actor in actors:
        vals = tuple(draw(st.lists(plain_values, max_size=3)))
        entries.append((actor, draw(st.integers(max(1, len(vals)), 2**40)), vals))  # the codec checks n >= len
    return DVVSet(tuple(entries), tuple(draw(st.lists(plain_values, max_size=2))))


@no_deadline
@given(st.text(max_size=10), plain_dvvsets())
def test_the_dvvset_fast_encoding_is_the_documented_one(key: str, obj: DVVSet) -> None:
    assert digests._dvvset_body(key, obj) == d_encoding(key, obj)


@no_deadline
@given(st.text(max_size=10), plain_dvvsets())
def test_plain_dvvsets_hash_the_same_with_bytes_like_values_and_after_a_store_round_trip(key: str,
                                                                                          obj: DVVSet) -> None:
    def loosen(v: Any) -> Any:
        return bytearray(v) if isinstance(v, bytes) else v

    loose = DVVSet(tuple((actor, n, tuple(map(loosen, vals))) for actor, n, vals in obj.entries),
                   tuple(map(loosen, obj.anonymous)))
    assert loose == obj
    assert object_hash(key, loose) == object_hash(key, obj) == object_hash(key, decode_object(encode_object(obj)))


def test_equal_objects_of_looser_types_take_the_plain_objects_encoding() -> None:
    class Name(str):
        pass

    plain = DVVSet((("a", 2, (b"x", "y", None)),), (b"z",))
    looser = [
        DVVSet((("a", 2, (bytearray(b"x"), "y", None)),), (memoryview(b"z"),)),
        DVVSet(((Name("a"), 2, (b"x", Name("y"), None)),), (b"z",)),
        DVVSet((("a", 2.0, (b"x", "y", None)),), (b"z",)),
        DVVSet([["a", 2, [b"x", "y", None]]], [b"z"]),  # DVVSet containers are not part of its value
    ]
    for obj in looser:
        assert object_hash("k", obj) == object_hash("k", plain), obj
    single = put(b"v")
    assert object_hash("k", DVVSet(((single.entries[0][0], True, (b"v",)),))) == object_hash("k", single)
    register = lww(b"value")
    ts, value = register.state
    for state in ((Timestamp(*ts), value), (tuple(ts), bytearray(value)), (ts, memoryview(value))):
        assert Crdt("register", state) == register
        assert object_hash("k", Crdt("register", state)) == object_hash("k", register)


@no_deadline
@given(st.text(max_size=8),
       st.one_of(st.none(), st.binary(max_size=120), st.text(max_size=8), st.integers(-2**63, 2**63 - 1)),
       st.tuples(st.integers(0, 2**63 - 1), st.integers(0, 0xFFFF), st.text(max_size=4)),
       st.one_of(st.none(), st.text(min_size=1, max_size=4)))
def test_registers_hash_the_same_after_a_store_round_trip_and_never_zero(key: str, value: Any, ts: tuple[int, int, str],
                                                                         op_id: str | None) -> None:
    obj = lww(value, ts, op_id=op_id)
    again = decode_object(encode_object(obj))
    assert again == obj
    assert object_hash(key, again) == object_hash(key, obj) != 0
    assert object_hash(key, obj) != object_hash(key + "x", obj)


def test_every_crdt_type_hashes_the_same_after_a_store_round_trip() -> None:
    ts = Timestamp(1_700_000_000_000, 0, "n1")
    made = [
        crdts.apply(None, "counter", ("increment", 5), "a", "op-1", ts),
        crdts.apply(None, "set", ("add_all", [b"x", "y", 3]), "a", "op-2", ts),
        crdts.apply(None, "flag", ("enable",), "a", None, ts),
        crdts.apply(None, "map", ("update", "f", "register", ("assign", b"v")), "a", "op-3", ts),
        crdts.new("register"),
        lww(None), lww("text"), lww(7),
    ]
    for obj in made:
        assert object_hash("k", decode_object(encode_object(obj))) == object_hash("k", obj), obj
    assert len({object_hash("k", obj) for obj in made}) == len(made)


def test_a_register_and_a_dvvset_with_similar_content_never_share_a_digest() -> None:
    register = lww(b"v", ts=(1, 1, "a"))
    dvv = DVVSet((("a", 1, (b"v",)),))
    similar = [
        register, dvv, lww("v", ts=(1, 1, "a")), put("v", "a"), put(b"v", "b"),
        Crdt("register", register.state[::-1]), Crdt("counter", register.state),
        DVVSet((), (b"v",)), DVVSet((("a", 1, ()),), (b"v",)), DVVSet((("a", 1, (b"v", None)),)),
        lww(b"", ts=(1, 1, "av")), lww(b"av", ts=(1, 1, "")),      # bytes moved across a field boundary
        lww(b"v", ts=(1, 1, "a"), op_id="o"),
    ]
    digests_seen = [object_hash("k", obj) for obj in similar]
    assert len(set(digests_seen)) == len(similar)
    assert object_hash("ka", lww(b"v")) != object_hash("k", lww(b"av"))
    assert object_hash("\udc80", lww(b"v")) != object_hash("\udc81", lww(b"v"))  # lone surrogates pass through
    huge = [DVVSet((("a", 2**63, (b"v",)),)), lww(b"v", ts=(2**64, 0, "a"))]  # beyond 64 bits: the slow encodings
    assert len({object_hash("k", obj) for obj in huge + similar}) == len(huge) + len(similar)
    assert digests._register_body("k", register)[:1] == b"R"
    assert digests._dvvset_body("k", dvv)[:1] == b"D"


def test_an_object_never_hashes_to_zero_even_when_its_digest_is_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    class Zero:
        def update(self, data: bytes) -> None:
            pass

        def digest(self) -> bytes:
            return bytes(8)

    class Base:
        def copy(self) -> Zero:
            return Zero()

    monkeypatch.setattr(digests, "_BLAKE", Base())
    assert object_hash("k", lww(b"v")) == object_hash("k", put(b"v")) == object_hash("k", put(1)) == 1
    assert object_hash("k", None) == 0


GOLDEN = {  # the hash format is part of the cluster's protocol: a change must be deliberate (bump _PERSON)
    "register": (lambda: lww(b"\x00\xffvalue"), 3505903578354465347),
    "register with op ids": (lambda: lww(b"v", op_id="op-1"), 1664244307500926896),
    "dvvset": (lambda: DVVSet((("n1.3f9a1c2e", 1, (b"\x00\xffvalue",)),)), 14931041606650668795),
    "dvvset with siblings": (lambda: DVVSet((("a", 3, (b"x", "y")), ("b", 1, (None,))), (b"z",)), 14653296417835484871),
    "dvvset of numbers": (lambda: put({"n": [1, 2.5], "s": frozenset({"m"})}), 11222530864500318692),
    "counter": (lambda: crdts.apply(None, "counter", ("increment", 5), "a", "op-1",
                                    Timestamp(1_700_000_000_000, 0, "n1")), 11692380379214739134),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_digests_match_the_recorded_ones(name: str) -> None:
    make, expected = GOLDEN[name]
    assert object_hash("default\x00user00000001", make()) == expected


def test_fast_digests_are_the_same_in_processes_with_different_hash_seeds() -> None:
    script = (
        "from tests.test_merkle import GOLDEN; from storage.merkle import object_hash; "
        "print([object_hash('k', make()) for name, (make, _) in sorted(GOLDEN.items())])"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=False, timeout=60)
        assert run.returncode == 0, run.stderr
        outputs.add(run.stdout)
    assert outputs == {f"{[object_hash('k', make()) for name, (make, _) in sorted(GOLDEN.items())]}\n"}
