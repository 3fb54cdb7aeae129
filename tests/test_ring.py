"""The partition ring: hashing, claim (balance, distinct neighbours, small movement), preference lists."""

from __future__ import annotations

import hashlib
import json
import pickle
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.ring import Ring, RingError

node_sets = st.sets(st.text(alphabet="abcdefghijklmnop", min_size=1, max_size=4), min_size=1, max_size=12)
keys = st.text(max_size=40)
replicas = st.integers(1, 5)

# Ring building is pure CPU and sometimes slow on a shared CI machine; timing is not the property.
quick = settings(max_examples=60, deadline=None)
# Movement bounds that were measured rather than proven run on a fixed set of examples, so they never flake.
measured = settings(max_examples=40, deadline=None, derandomize=True)


def repeats(ring: Ring) -> int:
    """Pairs of partitions less than ``t`` apart (cyclically) with the same owner; 0 = distinct neighbours."""
    span = min(ring.target_n, len(ring.nodes))
    q, owners = ring.partitions, ring.owners
    near = {d % q for d in range(1, span)} | {-d % q for d in range(1, span)}
    near.discard(0)
    return sum(owners[i] == owners[(i + d) % q] for i in range(q) for d in near) // 2


def repeated_windows(ring: Ring) -> list[int]:
    """Start partitions of the windows of ``t`` consecutive partitions (wrapping) that repeat a node."""
    t, q = min(ring.target_n, len(ring.nodes)), ring.partitions
    return [i for i in range(q) if len({ring.owners[(i + d) % q] for d in range(t)}) < t]


def spread(ring: Ring) -> int:
    counts = Counter(ring.owners)
    return max(counts.values()) - min(counts.values())


def moved(before: Ring, after: Ring) -> int:
    return sum(a != b for a, b in zip(before.owners, after.owners))


# --------------------------------------------------------------------------- hashing


def test_a_key_hash_is_the_sha1_of_its_utf8_bytes_read_as_a_big_endian_integer() -> None:
    assert Ring.key_hash("cart:priya") == int(hashlib.sha1(b"cart:priya").hexdigest(), 16)
    assert Ring(["a"]).key_hash("ü") == int.from_bytes(hashlib.sha1(b"\xc3\xbc").digest(), "big")


@given(key=keys)
def test_a_key_belongs_to_the_partition_its_hash_falls_in(key: str) -> None:
    for q in (8, 64, 256, 1024):
        ring = Ring(["a", "b"], partitions=q)
        p = ring.partition_of(key)
        assert p == Ring.key_hash(key) // (2**160 // q)
        assert p * 2**160 // q <= Ring.key_hash(key) < (p + 1) * 2**160 // q


# --------------------------------------------------------------------------- balance


@pytest.mark.parametrize("partitions", [64, 256, 1024])
def test_partition_counts_differ_by_at_most_one_for_every_cluster_of_3_to_12_nodes(partitions: int) -> None:
    for size in range(3, 13):
        ring = Ring([f"node{i}" for i in range(size)], partitions=partitions)
        assert len(ring.nodes) == size and spread(ring) <= 1, size


def test_five_nodes_hold_within_15_percent_of_the_mean_share_of_10000_keys_as_owner_and_as_replica() -> None:
    # Dynamo §6.2 calls a node "out of balance" when its load is more than 15% away from the mean.
    ring = Ring(["n1", "n2", "n3", "n4", "n5"])
    owned: Counter[str] = Counter()
    held: Counter[str] = Counter()
    for i in range(10_000):
        nodes = ring.primaries(f"user:{i}", 3)
        owned[nodes[0]] += 1
        held.update(nodes)
    assert max(owned.values()) <= 1.15 * 10_000 / 5
    assert max(held.values()) <= 1.15 * 30_000 / 5
    assert max(ring.share().values()) <= 1.15 / 5
    assert max(ring.replica_share(3).values()) <= 1.15 / 5


def test_share_and_replica_share_are_fractions_that_sum_to_one() -> None:
    ring = Ring(["a", "b", "c", "d", "e", "f", "g"])
    assert set(ring.share()) == set(ring.replica_share(3)) == set(ring.nodes)
    assert sum(ring.share().values()) == pytest.approx(1.0)
    assert sum(ring.replica_share(3).values()) == pytest.approx(1.0)
    assert ring.replica_share(9) == pytest.approx({v: 1 / 7 for v in ring.nodes})   # n > S: everyone holds all


# --------------------------------------------------------------------------- distinct neighbours


@pytest.mark.parametrize("target_n", [2, 3, 4, 5])
@pytest.mark.parametrize("partitions", [64, 256])
def test_any_target_n_consecutive_partitions_have_distinct_owners_even_across_the_wrap(partitions: int,
                                                                                      target_n: int) -> None:
    for size in range(target_n, 17):
        ring = Ring([f"host-{i}" for i in range(size)], partitions=partitions, target_n=target_n)
        if size == target_n and partitions % size:
            continue   # impossible, see the next test
        assert repeated_windows(ring) == [], size


def test_three_nodes_for_three_replicas_repeat_a_node_only_at_the_seam_because_3_does_not_divide_256() -> None:
    # With S == t every S consecutive partitions must hold all S nodes, which forces period S; 256 is not a
    # multiple of 3, so the ring cannot close cleanly. The claim puts the Q mod S repeats at the wrap.
    ring = Ring(["a", "b", "c"])
    assert repeats(ring) == 256 % 3
    assert repeated_windows(ring) == [254, 255]          # the two windows that cross from partition 255 to 0
    for i in range(200):                       # primaries are still three distinct nodes for every key
        assert len(set(ring.primaries(f"k{i}", 3))) == 3


def test_fallbacks_for_a_down_node_are_spread_over_the_other_nodes_not_one_neighbour() -> None:
    ring = Ring([f"node{i}" for i in range(8)])
    for node in ring.nodes:
        stand_ins = {ring.walk(p)[3] for p in range(ring.partitions) if node in ring.walk(p)[:3]}
        assert len(stand_ins) >= 4, node


# --------------------------------------------------------------------------- preference lists


@quick
@given(nodes=node_sets, key=keys, n=replicas)
def test_primaries_are_min_n_s_distinct_members_and_do_not_depend_on_the_order_nodes_are_given(
        nodes: set[str], key: str, n: int) -> None:
    ring = Ring(sorted(nodes))
    again = Ring(sorted(nodes, reverse=True))
    found = ring.primaries(key, n)
    assert found == again.primaries(key, n)
    assert ring == again and hash(ring) == hash(again)
    assert len(found) == len(set(found)) == min(n, len(nodes))
    assert set(found) <= nodes
    assert found[0] == ring.owners[ring.partition_of(key)]


@quick
@given(nodes=node_sets, key=keys, n=replicas)
def test_primaries_are_the_first_n_of_the_preference_list_when_nobody_is_down(nodes: set[str], key: str,
                                                                            n: int) -> None:
    ring = Ring(nodes)
    assert ring.preference_list(key, n) == [(v, None) for v in ring.primaries(key, n)]
    assert ring.primaries(key, n) == ring.primaries(key, len(nodes))[:n]   # a prefix of the full walk


@quick
@given(nodes=node_sets, key=keys, n=replicas, data=st.data())
def test_a_sloppy_preference_list_skips_down_nodes_for_the_next_healthy_ones_with_hints(
        nodes: set[str], key: str, n: int, data: st.DataObject) -> None:
    ring = Ring(nodes)
    down = data.draw(st.sets(st.sampled_from(sorted(nodes))), label="down")
    found = ring.preference_list(key, n, down)
    primaries = ring.primaries(key, n)
    chosen = [v for v, _ in found]
    assert len(chosen) == len(set(chosen)) == min(len(primaries), len(nodes) - len(down))
    assert not set(chosen) & down
    for node, hint_for in found:
        if hint_for is None:
            assert node in primaries
        else:
            assert hint_for in primaries and hint_for in down and node not in primaries
    # each entry sits in its primary's slot: the slots read in walk order
    slots = [v if hint is None else hint for v, hint in found]
    assert slots == [p for p in primaries if p in slots]
    # the stand-ins are the first healthy nodes past the primaries, in walk order
    walk = ring.primaries(key, len(nodes))
    healthy_spares = [v for v in walk[len(primaries):] if v not in down]
    assert [v for v, hint in found if hint is not None] == healthy_spares[:sum(h is not None for _, h in found)]


def test_a_down_primary_is_replaced_in_its_own_slot_by_the_next_healthy_node_along_the_walk() -> None:
    ring = Ring([f"node{i}" for i in range(6)])
    walk = ring.primaries("cart:priya", 6)
    a, b, c, d, e, _ = walk
    assert ring.preference_list("cart:priya", 3, {b}) == [(a, None), (d, b), (c, None)]
    assert ring.preference_list("cart:priya", 3, {b, d}) == [(a, None), (e, b), (c, None)]
    assert ring.preference_list("cart:priya", 3, frozenset({"not-a-member"})) == [(a, None), (b, None), (c, None)]


def test_with_too_few_healthy_nodes_the_preference_list_is_shorter_and_never_names_a_down_node() -> None:
    ring = Ring(["a", "b", "c", "d"])
    walk = ring.primaries("k", 4)
    assert ring.preference_list("k", 3, set(walk[1:])) == [(walk[0], None)]
    assert ring.preference_list("k", 3, set(walk)) == []
    assert ring.preference_list("k", 9) == [(v, None) for v in walk]    # n larger than the cluster


# --------------------------------------------------------------------------- membership changes


def test_adding_a_sixth_node_moves_exactly_its_own_share_and_keeps_everything_balanced() -> None:
    five = Ring(["a", "b", "c", "d", "e"])
    six = five.with_node("f")
    assert six.nodes == ("a", "b", "c", "d", "e", "f")
    assert six.owners.count("f") == moved(five, six) == 256 // 6
    assert spread(six) <= 1 and repeated_windows(six) == []
    assert all(before == after for before, after in zip(five.owners, six.owners) if after != "f")


def test_removing_a_node_hands_over_only_its_own_partitions() -> None:
    ring = Ring([f"node{i}" for i in range(8)])
    for node in ring.nodes:
        smaller = ring.without_node(node)
        changed = [i for i in range(ring.partitions) if ring.owners[i] != smaller.owners[i]]
        assert changed == [i for i in range(ring.partitions) if ring.owners[i] == node], node
        assert spread(smaller) <= 1 and repeated_windows(smaller) == []


@quick
@given(nodes=node_sets, extra=st.text(alphabet="qrstuvwxyz", min_size=1, max_size=3))
def test_adding_a_node_keeps_balance_and_is_never_less_distinct_than_a_fresh_claim(nodes: set[str],
                                                                                 extra: str) -> None:
    before = Ring(nodes)
    after = before.with_node(extra)
    assert after.nodes == tuple(sorted(nodes | {extra}))
    assert spread(after) <= 1
    assert repeats(after) <= repeats(Ring(after.nodes))
    assert after.owners.count(extra) in (256 // (len(nodes) + 1), -(-256 // (len(nodes) + 1)))


@quick
@given(nodes=st.sets(st.text(alphabet="abcdefghijklmnop", min_size=1, max_size=4), min_size=3, max_size=12),
       extra=st.text(alphabet="qrstuvwxyz", min_size=1, max_size=3))
def test_adding_a_node_to_at_least_target_n_nodes_moves_only_what_the_new_node_takes(nodes: set[str],
                                                                                    extra: str) -> None:
    before = Ring(nodes)
    after = before.with_node(extra)
    size = len(nodes)
    # The new node takes floor(Q/(S+1)) partitions, the least balance allows, from the fullest nodes; nothing
    # else moves. The one exception: a ring of exactly target_n nodes carries Q mod S repeated pairs at its
    # seam (see above), and clearing each costs at most one swap of two partitions. floor(Q/(S+1)) is never
    # more than the ceil(Q/(S+1)) the design allows.
    slack = 2 * (256 % size) if size == before.target_n else 0
    assert moved(before, after) <= 256 // (size + 1) + slack
    assert repeated_windows(after) == []


@quick
@given(nodes=node_sets.filter(lambda s: len(s) >= 2), data=st.data())
def test_removing_a_node_keeps_balance_and_is_never_less_distinct_than_a_fresh_claim(nodes: set[str],
                                                                                   data: st.DataObject) -> None:
    before = Ring(nodes)
    gone = data.draw(st.sampled_from(sorted(nodes)), label="gone")
    after = before.without_node(gone)
    assert after.nodes == tuple(sorted(nodes - {gone}))
    assert spread(after) <= 1
    assert repeats(after) <= repeats(Ring(after.nodes))
    assert all(before.owners[i] != after.owners[i] for i in range(256) if before.owners[i] == gone)


@measured
@given(nodes=st.sets(st.text(alphabet="abcdefghijklmnop", min_size=1, max_size=4), min_size=7, max_size=12),
       data=st.data())
def test_removing_one_of_seven_or_more_nodes_moves_only_its_partitions(nodes: set[str],
                                                                      data: st.DataObject) -> None:
    # A handoff needs, for every freed partition, a node that is not among its 2*(t-1) = 4 near neighbours,
    # so with S - 1 >= 2t - 1 candidates always exist; the balanced matching over them was found in every one of
    # about 1,200 measured removals at Q=256. (Smaller clusters may need a few swaps: see ring.py.)
    before = Ring(nodes)
    gone = data.draw(st.sampled_from(sorted(nodes)), label="gone")
    after = before.without_node(gone)
    assert moved(before, after) == before.owners.count(gone)
    assert spread(after) <= 1 and repeated_windows(after) == []


@quick
@given(nodes=st.sets(st.text(alphabet="abcdefghijklmnop", min_size=1, max_size=4), min_size=4, max_size=12),
       extra=st.text(alphabet="qrstuvwxyz", min_size=1, max_size=3))
def test_adding_then_removing_a_node_keeps_balance_and_moves_only_that_nodes_partitions(nodes: set[str],
                                                                                       extra: str) -> None:
    # Guaranteed, not just measured, once S > t (so the ring had distinct neighbours): giving every partition
    # back to the node it came from is a valid balanced handoff, so the matching in without_node finds one.
    grown = Ring(nodes).with_node(extra)
    back = grown.without_node(extra)
    assert back.nodes == tuple(sorted(nodes))
    assert spread(back) <= 1 and repeated_windows(back) == []
    assert moved(grown, back) == grown.owners.count(extra)


def test_growing_one_node_at_a_time_from_one_to_twelve_and_back_stays_balanced_and_distinct() -> None:
    ring = Ring(["n00"], partitions=64)
    for i in range(1, 12):
        ring = ring.with_node(f"n{i:02}")
        assert spread(ring) <= 1 and repeats(ring) <= repeats(Ring(ring.nodes, partitions=64))
    for node in ["n03", "n07", "n00", "n11", "n05", "n01", "n10", "n02", "n09", "n04", "n06"]:
        ring = ring.without_node(node)
        assert spread(ring) <= 1 and repeats(ring) <= repeats(Ring(ring.nodes, partitions=64))
    assert ring.nodes == ("n08",) and set(ring.owners) == {"n08"}


def test_membership_changes_are_deterministic() -> None:
    ring = Ring(["a", "b", "c", "d"])
    assert ring.with_node("e") == Ring(["d", "c", "b", "a"]).with_node("e")
    assert ring.with_node("e").without_node("b") == ring.with_node("e").without_node("b")


# --------------------------------------------------------------------------- encoding and identity


@quick
@given(nodes=node_sets, partitions=st.sampled_from([8, 16, 64, 256]), target_n=st.integers(1, 5))
def test_to_data_and_from_data_round_trip_through_json_and_pickle(nodes: set[str], partitions: int,
                                                                  target_n: int) -> None:
    if len(nodes) > partitions:
        return
    ring = Ring(nodes, partitions=partitions, target_n=target_n)
    data = ring.to_data()
    assert data == {"partitions": partitions, "target_n": target_n, "owners": list(ring.owners)}
    decoded = Ring.from_data(json.loads(json.dumps(data)))
    assert decoded == ring and decoded.nodes == ring.nodes and decoded.target_n == target_n
    assert pickle.loads(pickle.dumps(ring)) == ring


def test_rings_are_equal_and_hash_alike_on_partitions_and_owners_only() -> None:
    ring = Ring(["a", "b", "c", "d"])
    assert ring == Ring.from_data(ring.to_data())
    assert ring == Ring.from_data({**ring.to_data(), "target_n": 2})       # target_n is not part of identity
    assert ring != Ring(["a", "b", "c", "d"], partitions=64)
    assert ring != ring.with_node("e")
    assert len({ring, Ring(["d", "c", "b", "a"])}) == 1
    with pytest.raises(AttributeError):
        ring.owners = ()  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("build, message", [
    (lambda: Ring([]), "at least one node"),
    (lambda: Ring(["a", "b", "a"]), "duplicate nodes: a"),
    (lambda: Ring("abc"), "iterable of names"),
    (lambda: Ring(["a", ""]), "non-empty strings"),
    (lambda: Ring(["a", 7]), "non-empty strings"),  # type: ignore[list-item]
    (lambda: Ring(["a"], partitions=100), "power of two"),
    (lambda: Ring(["a"], partitions=4), "power of two >= 8"),
    (lambda: Ring(["a"], partitions=True), "must be an int"),
    (lambda: Ring([f"n{i}" for i in range(9)], partitions=8), "at least as many partitions"),
    (lambda: Ring(["a"], target_n=0), "target_n"),
    (lambda: Ring(["a", "b"]).without_node("c"), "unknown node 'c'"),
    (lambda: Ring(["a"]).without_node("a"), "last node"),
    (lambda: Ring(["a", "b"]).with_node("b"), "already in the ring"),
    (lambda: Ring([f"n{i}" for i in range(8)], partitions=8).with_node("x"), "at least as many partitions"),
    (lambda: Ring(["a"]).primaries("k", 0), "n must be"),
    (lambda: Ring(["a"]).preference_list("k", -1), "n must be"),
])
def test_bad_input_raises_a_ring_error_that_says_what_is_wrong(build, message: str) -> None:
    with pytest.raises(RingError, match=message):
        build()


@pytest.mark.parametrize("data, message", [
    ([], "must be a dict"),
    ({"partitions": 8, "owners": ["a"] * 8}, "missing \\['target_n'\\]"),
    ({"partitions": 8, "target_n": 3, "owners": ["a"] * 8, "epoch": 1}, "unexpected \\['epoch'\\]"),
    ({"partitions": 12, "target_n": 3, "owners": ["a"] * 12}, "power of two"),
    ({"partitions": 8, "target_n": 3, "owners": ["a"] * 7}, "7 partitions, expected 8"),
    ({"partitions": 8, "target_n": 3, "owners": "aaaaaaaa"}, "must be a list"),
    ({"partitions": 8, "target_n": 3, "owners": ["a"] * 7 + [None]}, "non-empty strings"),
    ({"partitions": 8, "target_n": "3", "owners": ["a"] * 8}, "target_n"),
])
def test_from_data_rejects_malformed_rings(data: object, message: str) -> None:
    with pytest.raises(RingError, match=message):
        Ring.from_data(data)  # type: ignore[arg-type]


def test_a_ring_error_is_a_value_error() -> None:
    assert issubclass(RingError, ValueError)


def test_partitions_stay_right_while_the_cache_of_key_hashes_fills_and_is_forgotten(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from actors import ring as ring_module
    monkeypatch.setattr(ring_module, "HASH_CACHE", 50)
    monkeypatch.setattr(ring_module, "_HASHES", {})
    small, big = Ring(["a", "b"], partitions=8), Ring(["a", "b", "c"], partitions=64)
    keys = [f"key{i}" for i in range(120)] + ["ключ", "key0", "key1"]
    for _ in range(2):                                     # cold, then partly remembered
        for key in keys:
            digest = int.from_bytes(hashlib.sha1(key.encode()).digest(), "big")
            assert small.partition_of(key) == digest // (2**160 // 8)
            assert big.partition_of(key) == digest // (2**160 // 64)
            assert big.partition_of(key.encode()) == big.partition_of(key)
    assert len(ring_module._HASHES) <= 50
