"""Every acknowledged operation sticks, across node processes: removes across a partition, a
bucket's own n, actor ids across restarts, conditional writes, a node that just restarted,
and a leave that would take keys below their n."""

from __future__ import annotations

import time

import pytest

from waiting import wait_for

from actors import InvalidRequest, LocalCluster, NotPresent
from actors.ring import Ring

pytestmark = pytest.mark.cluster

FAST = dict(aae_interval=0.05, hint_interval=0.1, handoff_interval=0.2)
PARTITION_SEEN = 40.0       # see test_buckets.py: a loaded machine can take this long to convict


def ring_of(cluster: LocalCluster) -> Ring:
    nodes = next(s for s in cluster.status().values() if s.get("up"))["ring_nodes"]
    return Ring(nodes, partitions=cluster.config.partitions, target_n=min(cluster.config.n, len(nodes)))


def seen_down(cluster: LocalCluster, watchers: list[str], dead: list[str]) -> bool:
    status = cluster.status()
    return all(status[w]["members"][d] == "down" for w in watchers for d in dead)


def all_see_all_up(cluster: LocalCluster) -> bool:
    return all(all(v == "up" for v in s["members"].values()) for s in cluster.status().values() if s.get("up"))


def copies(cluster: LocalCluster, stored_keys: list[str]) -> int:
    """How many replicas hold each of ``stored_keys``, summed over the cluster's nodes."""
    return sum(cluster.inspect(node, key) is not None for node in cluster.nodes for key in stored_keys)


def test_an_acknowledged_remove_sticks_across_a_partition_where_a_fallback_holds_the_keys_first_slot(
        make_cluster) -> None:
    # Issue 17's cart: 4 nodes, N=3, R=W=2; priya's preference list is [n4, n1, n3].
    cluster = make_cluster(nodes=4, n=3, r=2, w=2, **FAST)
    ring = ring_of(cluster)
    key = next(f"priya-{i}" for i in range(100_000) if ring.primaries(f"carts\x00priya-{i}", 3) == ["n4", "n1", "n3"])
    client = cluster.client()
    client.create_bucket("carts", type="set").add_all(key, ["soap", "book", "dvd"], w=3)

    cluster.partition(["n1", "n2"], ["n3", "n4"])
    wait_for(lambda: seen_down(cluster, ["n1", "n2"], ["n3", "n4"]) and seen_down(cluster, ["n3", "n4"], ["n1", "n2"]),
             PARTITION_SEEN, "both sides see the other down")
    with cluster.client(nodes=["n1", "n2"]) as left:
        left.bucket("carts").remove(key, "book", w=1)              # n2 stands in for n4 in the first slot
    with cluster.client(nodes=["n3", "n4"]) as right:
        carts = right.bucket("carts")
        carts.remove(key, "dvd", w=1)
        carts.add(key, "milk", w=1)
    cluster.heal()
    wait_for(lambda: all_see_all_up(cluster), 30, "every node sees every other up again")

    carts = client.bucket("carts")
    assert carts.get(key, r=3) == {"soap", "milk"}
    stored = f"carts\x00{key}"
    wait_for(lambda: all(cluster.inspect(node, stored).values == [frozenset({"soap", "milk"})]
                         for node in ("n4", "n1", "n3")), 30, "every primary holds {soap, milk}")
    with pytest.raises(NotPresent, match="book"):
        carts.remove(key, "book")                                  # gone: a remove of it is refused, not a no-op


def test_a_buckets_own_n_decides_how_many_replicas_hold_its_keys_whatever_repair_does(make_cluster) -> None:
    cluster = make_cluster(nodes=5, n=3, r=2, w=2, **FAST)
    client = cluster.client()
    wide = client.create_bucket("wide", n=5, r=1, w=5)
    narrow = client.create_bucket("narrow", n=1, r=1, w=1)
    keys = [f"k{i}" for i in range(20)]
    for key in keys:
        wide.put(key, b"v")
        narrow.put(key, b"v")
    wide_keys, narrow_keys = [f"wide\x00{k}" for k in keys], [f"narrow\x00{k}" for k in keys]
    assert (copies(cluster, wide_keys), copies(cluster, narrow_keys)) == (100, 20)

    # Give handoff and anti-entropy time to act: every node runs 80 more exchanges (4 s here),
    # enough for each node to compare every partition it holds twice over.
    start = {n: s["aae_rounds"] for n, s in cluster.status().items()}
    wait_for(lambda: all(s["aae_rounds"] >= start[n] + 80 for n, s in cluster.status().items()), 60,
             "every node ran 80 anti-entropy exchanges")
    assert copies(cluster, wide_keys) == 100                    # handoff kept all 5 copies of n=5 keys
    assert copies(cluster, narrow_keys) == 20                   # anti-entropy did not spread n=1 keys
    assert all(s["handoff_pending"] == 0 for s in cluster.status().values())


def test_a_clean_restart_keeps_each_replicas_actor_id_and_a_crash_renews_it(make_cluster) -> None:
    cluster = make_cluster(nodes=3, n=3, r=2, w=3, **FAST)

    def write_through_each_node(round_: int) -> None:
        for node in cluster.nodes:                     # each node builds one write (the local fast path)
            with cluster.client(nodes=[node]) as one:
                one.put("profile", b"v%d" % round_, context=one.get("profile", r=3).context, w=3)

    for round_ in range(3):
        write_through_each_node(round_)
        for node in cluster.nodes:
            cluster.restart(node)                      # SIGTERM: a clean stop
    write_through_each_node(3)
    assert len(cluster.inspect("n1", "profile").version) == 3     # one actor per replica, not one per start

    cluster.kill("n2")                                 # a crash may lose dots n2 sent out: a new id
    cluster.restart("n2")
    write_through_each_node(4)
    assert len(cluster.inspect("n1", "profile").version) == 4


def test_a_write_conditional_on_a_context_replaces_that_version(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    client.put("cond-replace", b"first", w=3)
    seen = client.get("cond-replace", r=3).context
    client.put("cond-replace", b"second", if_context=seen, w=3)       # no context= given: the condition's
    assert client.get("cond-replace", r=3).values == [b"second"]


def test_a_node_that_just_restarted_accepts_writes_at_once(make_cluster) -> None:
    # Gossip every 2 s: without presuming its peers up, the restarted node would see them down
    # for its first rounds and refuse writes at w=3 as QuorumFailed.
    cluster = make_cluster(nodes=3, n=3, r=2, w=3, gossip_interval=2.0, **FAST)
    client = cluster.client()
    client.put("before", b"v", w=3)
    cluster.restart("n1", wait=False)
    with cluster.client(nodes=["n1"], timeout=5.0) as through_n1:
        deadline = time.monotonic() + 30
        while True:                                   # the first moment n1 answers
            try:
                through_n1.status("n1", timeout=0.5)
                break
            except Exception:                          # noqa: BLE001 - not listening yet
                assert time.monotonic() < deadline, "n1 never came back"
                time.sleep(0.02)
        futures = [through_n1.put_async(f"after-{i}", b"v", w=3) for i in range(50)]
        for future in futures:
            future.get(timeout=10)                     # QuorumFailed here would fail the test


def test_a_leave_that_would_leave_fewer_members_than_a_buckets_n_is_refused_unless_forced(make_cluster) -> None:
    cluster = make_cluster(nodes=4, n=3, **FAST)
    client = cluster.client()
    client.create_bucket("everywhere", n=4, w=1)
    with pytest.raises(InvalidRequest, match="n=4"):
        cluster.decommission("n4")
    assert all(s.get("up") and len(s["ring_nodes"]) == 4 for s in cluster.status().values())
