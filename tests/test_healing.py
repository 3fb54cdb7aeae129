"""Healing without an operator: hints, anti-entropy, tombstones, failure detection, joins and leaves."""

from __future__ import annotations

import threading
import time

import pytest

from waiting import wait_for

from actors import LeaderlessError, LocalCluster
from actors.ring import Ring

pytestmark = pytest.mark.cluster

FAST = dict(aae_interval=0.05, hint_interval=0.1, handoff_interval=0.2)


def ring_of(cluster: LocalCluster) -> Ring:
    status = cluster.status()
    any_up = next(s for s in status.values() if s.get("up"))
    config = cluster.config
    return Ring(any_up["ring_nodes"], partitions=config.partitions, target_n=min(config.n, len(any_up["ring_nodes"])))


def write_all(cluster: LocalCluster, keys: list[str], nodes: list[str] | None = None, w: int = 2) -> None:
    client = cluster.client(nodes=nodes)
    futures = [client.put_async(key, key.encode(), w=w) for key in keys]
    for future in futures:
        future.get(timeout=30)
    client.close()


def holders_missing(cluster: LocalCluster, keys: list[str]) -> list[tuple[str, str]]:
    ring = ring_of(cluster)
    return [(key, node) for key in keys for node in ring.primaries(key, cluster.config.n)
            if cluster.inspect(node, key) is None]


def totals(cluster: LocalCluster, field: str) -> int:
    return sum(s.get(field, 0) for s in cluster.status().values() if s.get("up"))


def test_after_a_partition_heals_every_key_reaches_all_its_replicas_with_no_reads(make_cluster) -> None:
    cluster = make_cluster(nodes=5, **FAST)
    cluster.isolate("n5")
    wait_for(lambda: all(s["members"]["n5"] == "down" for n, s in cluster.status().items() if n != "n5"),
             10, "n5 seen down")
    keys = [f"part{i}" for i in range(1000)]
    write_all(cluster, keys, nodes=["n1", "n2", "n3", "n4"], w=2)
    assert totals(cluster, "hints_pending") > 0              # fallbacks stood in for n5
    cluster.heal()
    started = time.monotonic()
    wait_for(lambda: not holders_missing(cluster, keys), 30, "every key on its three primaries", interval=0.5)
    wait_for(lambda: totals(cluster, "hints_pending") == 0, 30, "hints delivered")
    assert totals(cluster, "hints_delivered") > 0
    print(f"converged {time.monotonic() - started:.1f}s after heal")


def test_hints_older_than_the_window_are_dropped_and_counted_and_anti_entropy_covers_them(make_cluster) -> None:
    cluster = make_cluster(nodes=5, hint_window=0.5, tombstone_grace=3600.0, **FAST)
    cluster.isolate("n5")
    wait_for(lambda: all(s["members"]["n5"] == "down" for n, s in cluster.status().items() if n != "n5"),
             10, "n5 seen down")
    keys = [f"late{i}" for i in range(200)]
    write_all(cluster, keys, nodes=["n1", "n2", "n3", "n4"])
    wait_for(lambda: totals(cluster, "hints_dropped") > 0, 10, "expired hints dropped")
    cluster.heal()
    wait_for(lambda: not holders_missing(cluster, keys), 30, "anti-entropy repaired what hints did not", 0.5)


def test_a_wiped_node_is_restored_by_anti_entropy_alone_and_exchanges_then_go_idle(make_cluster) -> None:
    cluster = make_cluster(nodes=5, **FAST)
    keys = [f"wipe{i}" for i in range(1000)]
    write_all(cluster, keys, w=3)
    ring = ring_of(cluster)
    expected = sum(1 for key in keys if "n3" in ring.primaries(key, 3))
    cluster.wipe("n3")
    assert cluster.status()["n3"]["keys"] < expected
    started = time.monotonic()
    wait_for(lambda: cluster.status()["n3"]["keys"] == expected, 60, "n3 restored", interval=0.5)
    restored_in = time.monotonic() - started
    assert not [k for k in keys if "n3" in ring.primaries(k, 3) and cluster.inspect("n3", k) is None]
    status = cluster.status()
    assert sum(s["read_repairs"] for s in status.values()) == 0 and status["n3"]["hints_delivered"] == 0
    repaired = totals(cluster, "aae_keys_repaired")
    assert repaired >= expected
    rounds = totals(cluster, "aae_rounds")
    wait_for(lambda: totals(cluster, "aae_rounds") > rounds + 100, 30, "more exchange rounds")
    assert totals(cluster, "aae_keys_repaired") == repaired, "exchanges kept repairing with nothing different"
    print(f"n3 restored {expected} keys by anti-entropy in {restored_in:.1f}s; "
          f"{totals(cluster, 'aae_bytes')} bytes exchanged")


def test_a_key_deleted_while_a_replica_was_partitioned_away_stays_deleted(make_cluster) -> None:
    cluster = make_cluster(nodes=5, **FAST)
    client = cluster.client()
    key = "cart:deleted"
    client.put(key, b"milk", w=3)
    absent = ring_of(cluster).primaries(key, 3)[2]
    others = [n for n in cluster.nodes if n != absent]
    cluster.isolate(absent)
    wait_for(lambda: all(cluster.status()[n]["members"][absent] == "down" for n in others), 10, "seen down")
    near = cluster.client(nodes=others)
    near.delete(key, context=near.get(key).context, w=2)
    cluster.heal()
    wait_for(lambda: totals(cluster, "hints_pending") == 0, 30, "hints delivered")
    wait_for(lambda: all((o := cluster.inspect(n, key)) is None or o.tombstone for n in ring_of(cluster)
                         .primaries(key, 3)), 30, "tombstone on every replica")
    rounds = totals(cluster, "aae_rounds")
    wait_for(lambda: totals(cluster, "aae_rounds") > rounds + 200, 30, "anti-entropy rounds after heal")
    assert client.get(key, r=3).values == []
    for node in cluster.nodes:
        local = cluster.inspect(node, key)
        assert local is None or local.tombstone, f"{node} brought {key} back"


def test_a_tombstone_is_reaped_only_once_every_replica_holds_it_and_the_data_never_returns(make_cluster) -> None:
    cluster = make_cluster(nodes=5, hint_window=1.0, tombstone_grace=2.0, reap_interval=0.5, **FAST)
    client = cluster.client()
    key = "reaped"
    client.put(key, b"old", w=3)
    owners = ring_of(cluster).primaries(key, 3)
    cluster.isolate(owners[2])
    wait_for(lambda: all(cluster.status()[n]["members"][owners[2]] == "down" for n in owners[:2]), 10, "down")
    near = cluster.client(nodes=[n for n in cluster.nodes if n != owners[2]])
    near.delete(key, context=near.get(key).context, w=2)
    time.sleep(3.0)                       # past the grace period, but one replica still holds the value
    assert totals(cluster, "tombstones_reaped") == 0
    cluster.heal()
    wait_for(lambda: all(cluster.inspect(n, key) is None for n in cluster.nodes), 60, "reaped everywhere")
    assert totals(cluster, "tombstones_reaped") >= 1
    rounds = totals(cluster, "aae_rounds")
    wait_for(lambda: totals(cluster, "aae_rounds") > rounds + 200, 30, "anti-entropy rounds after reaping")
    assert client.get(key, r=3).values == []
    assert all(cluster.inspect(n, key) is None for n in cluster.nodes)


def test_a_killed_node_is_marked_down_everywhere_and_up_again_after_restart(make_cluster) -> None:
    cluster = make_cluster(nodes=5)
    others = ["n1", "n2", "n3", "n4"]
    cluster.kill("n5")
    started = time.monotonic()
    wait_for(lambda: all(cluster.status()[n]["members"]["n5"] == "down" for n in others), 10, "n5 marked down",
             interval=0.05)
    down_after = time.monotonic() - started
    cluster.restart("n5", wait=False)
    started = time.monotonic()
    wait_for(lambda: all(cluster.status()[n]["members"]["n5"] == "up" for n in others), 10, "n5 marked up",
             interval=0.05)
    print(f"n5 marked down everywhere after {down_after:.2f}s, up {time.monotonic() - started:.2f}s after restart")


class Writer(threading.Thread):
    """Writes fresh keys until stopped (bounded in count), recording every failure."""

    def __init__(self, cluster: LocalCluster, prefix: str, limit: int = 3000) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client(nodes=["n1", "n2"])
        self.prefix, self.limit = prefix, limit
        self.stop = threading.Event()
        self.written: list[str] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        for i in range(self.limit):
            if self.stop.is_set():
                break
            key = f"{self.prefix}{i}"
            try:
                self.client.put(key, b"during", w=2)
                self.written.append(key)
            except LeaderlessError as exc:
                self.errors.append(exc)
            time.sleep(0.005)

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        self.client.close()


def test_a_sixth_node_takes_a_sixth_of_the_replicas_and_a_decommissioned_node_loses_nothing(make_cluster) -> None:
    cluster = make_cluster(nodes=5, **FAST)
    keys = [f"own{i}" for i in range(5000)]
    write_all(cluster, keys, w=3)

    writer = Writer(cluster, "joining")
    writer.start()
    try:
        added = cluster.add_node()
        cluster.wait_for_handoff(timeout=120)
    finally:
        writer.finish()
    assert added == "n6" and not writer.errors and writer.written
    status = cluster.status()
    assert all(s["ring_nodes"] == ["n1", "n2", "n3", "n4", "n5", "n6"] for s in status.values())
    replicas = 3 * (len(keys) + len(writer.written))
    share = status["n6"]["keys"] / replicas
    assert 1 / 6 * 0.75 <= share <= 1 / 6 * 1.25, f"n6 holds {share:.3f} of the replicas"
    assert sum(s["keys"] for s in status.values()) == replicas     # moved, not copied

    writer = Writer(cluster, "leaving")
    writer.start()
    try:
        cluster.decommission("n5")
        cluster.wait_for_handoff(timeout=120)
    finally:
        writer.finish()
    assert not writer.errors
    assert "n5" not in cluster.nodes
    with cluster.client() as client:
        futures = {key: client.get_async(key, r=3) for key in keys + writer.written}
        missing = [key for key, f in futures.items() if not f.get(timeout=60).values]
    assert not missing, f"{len(missing)} keys lost, e.g. {missing[:5]}"


def test_a_replica_that_missed_writes_with_no_fallback_gets_them_from_the_coordinators_hints(make_cluster) -> None:
    # 3 nodes, N=3: no node can stand in for n3, so only the coordinator's hints (not anti-entropy,
    # switched off here, and no reads) can bring n3 the writes it missed.
    cluster = make_cluster(nodes=3, aae_interval=3600.0, hint_interval=0.1)
    cluster.isolate("n3")
    client = cluster.client(nodes=["n1", "n2"])
    early = [f"early{i}" for i in range(5)]              # before n3 is seen down: its acks never come
    for key in early:
        client.put(key, b"x", w=2)
    wait_for(lambda: all(cluster.status()[n]["members"]["n3"] == "down" for n in ("n1", "n2")), 10, "n3 down")
    late = [f"late{i}" for i in range(20)]               # n3 not even asked
    for key in late:
        client.put(key, b"y", w=2)
    wait_for(lambda: totals(cluster, "hints_pending") >= len(early) + len(late), 15, "hints kept")
    cluster.heal()
    wait_for(lambda: all(cluster.inspect("n3", key) is not None for key in early + late), 30, "n3 caught up")
    wait_for(lambda: totals(cluster, "hints_pending") == 0, 30, "hints delivered")
    assert totals(cluster, "aae_keys_repaired") == 0


def test_with_read_repair_chance_one_every_read_asks_every_replica_and_repairs_a_wiped_one(make_cluster) -> None:
    cluster = make_cluster(nodes=3, read_repair_chance=1.0, aae_interval=3600.0, hint_interval=3600.0)
    keys = [f"rr{i}" for i in range(200)]
    write_all(cluster, keys, w=3)
    cluster.wipe("n3")
    client = cluster.client(nodes=["n1", "n2"])

    def read_all_then_count() -> bool:
        futures = {key: client.get_async(key, r=2) for key in keys}
        assert all(future.get(timeout=30).values == [key.encode()] for key, future in futures.items())
        return cluster.status()["n3"]["keys"] == len(keys)

    try:                       # the first reads may find n3 not yet listening again: read until repaired
        wait_for(read_all_then_count, 20, "n3 repaired by reads alone", interval=0.2)
    finally:
        client.close()
    # (one anti-entropy exchange may run at start; the reads did the rest)
    assert totals(cluster, "read_repairs") + totals(cluster, "aae_keys_repaired") >= len(keys)


@pytest.mark.parametrize("chance", [-0.1, 1.5, "often", True])
def test_a_read_repair_chance_outside_zero_to_one_is_refused(tmp_path, chance) -> None:
    with pytest.raises(LeaderlessError, match="read_repair_chance"):
        LocalCluster(nodes=3, data_dir=tmp_path, read_repair_chance=chance)


def test_a_blind_write_through_a_node_that_handed_the_key_off_is_kept_beside_the_old_value(make_cluster) -> None:
    # n4 stands in for n3 on a key of n1, n2 and n3, hands it off when n3 is back and drops its
    # copy. A second blind write through n4 while n3 is away again must become a sibling of the
    # first on every replica, not a dot the primaries already hold (acknowledged, then dropped).
    cluster = make_cluster(nodes=4, n=3, **FAST)
    ring = ring_of(cluster)
    key = next(k for k in (f"kv679-{i}" for i in range(1000)) if set(ring.primaries(k, 3)) == {"n1", "n2", "n3"})

    def away(name: str) -> None:
        cluster.isolate(name)
        wait_for(lambda: all(s["members"][name] == "down" for n, s in cluster.status().items() if n != name),
                 20, f"{name} seen down")

    with cluster.client(nodes=["n4"]) as via_n4:
        away("n3")
        via_n4.put(key, b"first", w=3)
        assert cluster.inspect("n4", key) is not None                      # n4 held it for n3
        cluster.heal()
        wait_for(lambda: cluster.inspect("n4", key) is None and cluster.inspect("n3", key) is not None, 30,
                 "n4 handed the key off and dropped its copy", interval=0.2)

        away("n3")
        via_n4.put(key, b"second", w=3)                                     # blind: no context
        cluster.heal()
        wait_for(lambda: all(sorted(cluster.inspect(node, key).values) == [b"first", b"second"]
                             for node in ("n1", "n2", "n3")), 30, "both values on every primary", interval=0.2)
    with cluster.client() as client:
        assert sorted(client.get(key, r=3).values) == [b"first", b"second"]
