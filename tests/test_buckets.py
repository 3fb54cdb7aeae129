"""Buckets, conflict modes and client guarantees, across node processes."""

from __future__ import annotations


import pytest
from click.testing import CliRunner

from waiting import wait_for

from actors import (InvalidRequest, LocalCluster, QuorumValueError, SessionViolation, UnknownBucket,
                    VersionMismatch)
from actors.cli import main
from actors.ring import Ring

pytestmark = pytest.mark.cluster

FAST = dict(aae_interval=0.05, hint_interval=0.1, handoff_interval=0.2)


def primaries(cluster: LocalCluster, bucket: str, key: str) -> list[str]:
    nodes = cluster.status()[cluster.nodes[0]]["ring_nodes"]
    ring = Ring(nodes, partitions=cluster.config.partitions, target_n=min(3, len(nodes)))
    return ring.primaries(f"{bucket}\x00{key}" if bucket else key, 3)


def all_up(cluster: LocalCluster) -> bool:
    return all(all(v == "up" for v in s["members"].values()) for s in cluster.status().values())


def seen_down(cluster: LocalCluster, watchers: list[str], dead: list[str]) -> bool:
    status = cluster.status()
    return all(status[w]["members"][d] == "down" for w in watchers for d in dead)


# Phi accrual convicts a peer after about 18 of its mean heartbeat intervals of silence (phi 8:
# 8 * ln 10): 2-3 s here on an idle machine, but right after a cluster starts the mean rests on
# a few gaps, which a busy machine (the test suite) can stretch to seconds each. A partition
# gets this long to be seen.
PARTITION_SEEN = 40.0


def wait_split(cluster: LocalCluster, left: list[str], right: list[str]) -> None:
    """Wait until each side of a partition sees the other side down."""
    wait_for(lambda: seen_down(cluster, left, right) and seen_down(cluster, right, left), PARTITION_SEEN,
             "both sides see the other down",
             explain=lambda: {n: s["members"] for n, s in cluster.status().items()})


# --- buckets ----------------------------------------------------------------------------------

def test_a_bucket_is_created_once_and_known_to_every_node(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    views = client.create_bucket("views", type="counter")
    assert (views.type, views.props.n) == ("counter", 3)
    assert client.create_bucket("views", type="counter").props == views.props      # idempotent
    for node in shared_cluster.nodes:
        with shared_cluster.client(nodes=[node]) as one:
            assert one.bucket("views").type == "counter"


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(type="hyperloglog"), InvalidRequest, "unknown bucket type"),
    (dict(type="set", n=9), InvalidRequest, "larger than the cluster"),
    (dict(type="set", n=3, w=4), QuorumValueError, "larger than n=3"),
])
def test_a_bad_bucket_is_refused_with_a_clear_error(shared_cluster: LocalCluster, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        shared_cluster.client().create_bucket("bad", **kwargs)


def test_an_unknown_bucket_and_a_wrong_operation_are_clear_errors(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    with pytest.raises(UnknownBucket):
        client.bucket("nope")
    with pytest.raises(UnknownBucket):
        client.put("k", b"v", bucket="nope")
    carts = client.create_bucket("carts-kinds", type="set")
    with pytest.raises(InvalidRequest, match="no 'increment'"):
        carts.increment("k", 1)
    with pytest.raises(InvalidRequest, match="send operations"):
        client.put("k", b"v", bucket="carts-kinds")
    with pytest.raises(InvalidRequest, match="different bucket type|exists already"):
        client.create_bucket("carts-kinds", type="counter")


def test_buckets_survive_a_restart_of_every_node(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.client().create_bucket("durable", type="flag").enable("f")
    for node in cluster.nodes:
        cluster.kill(node)
    for node in cluster.nodes:
        cluster.restart(node, wait=False)
    cluster.wait_until_converged(cluster.nodes)
    flags = cluster.client().bucket("durable")
    assert flags.type == "flag" and flags.get("f") is True


def test_the_bucket_cli_creates_and_shows_a_bucket(shared_cluster: LocalCluster) -> None:
    runner = CliRunner()
    data_dir = str(shared_cluster.data_dir)
    result = runner.invoke(main, ["bucket", "create", "cli-carts", "--type", "set", "--data-dir", data_dir])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["bucket", "show", "cli-carts", "--data-dir", data_dir])
    assert result.exit_code == 0 and "set" in result.output
    result = runner.invoke(main, ["bucket", "create", "x", "--type", "bogus", "--data-dir", data_dir])
    assert result.exit_code == 2 and "bogus" in result.output


# --- CRDTs through the cluster -----------------------------------------------------------------

def test_every_crdt_type_works_end_to_end(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    views = client.create_bucket("e2e-views", type="counter")
    views.increment("home", 5)
    views.decrement("home", 2)
    views.increment("home", 1, w=1)
    assert wait_for(lambda: views.get("home", r=3) == 4)
    carts = client.create_bucket("e2e-carts", type="set")
    carts.add("priya", "milk")
    carts.add("priya", "eggs")
    carts.remove("priya", "milk")
    assert carts.get("priya") == {"eggs"}
    flags = client.create_bucket("e2e-flags", type="flag")
    assert flags.get("beta") is False
    flags.enable("beta")
    assert flags.get("beta") is True
    regs = client.create_bucket("e2e-regs", type="register")
    regs.assign("name", "Priya")
    assert regs.get("name") == "Priya"
    profiles = client.create_bucket("e2e-maps", type="map")
    profiles.update("p7", "visits", "counter", ("increment", 2))
    profiles.update("p7", "tags", "set", ("add", "vip"))
    profiles.update("p7", "name", "register", ("assign", "Sam"))
    profiles.remove("p7", "name")
    value = profiles.get("p7")
    assert value["visits"] == 2 and set(value["tags"]) == {"vip"} and "name" not in value


def test_a_cart_edited_on_both_sides_of_a_partition_converges_to_the_add_wins_result(make_cluster) -> None:
    cluster = make_cluster(nodes=4, **FAST)
    carts = cluster.client().create_bucket("carts", type="set")
    carts.add_all("priya", ["milk", "eggs", "bread"], w=3)
    cluster.partition(["n1", "n2"], ["n3", "n4"])
    wait_split(cluster, ["n1", "n2"], ["n3", "n4"])
    left = cluster.client(nodes=["n1", "n2"]).bucket("carts")
    right = cluster.client(nodes=["n3", "n4"]).bucket("carts")
    left.remove("priya", "milk", w=1)       # removed on one side...
    right.add("priya", "milk", w=1)         # ...and concurrently re-added on the other: add wins
    right.remove("priya", "bread", w=1)     # removed once, never re-added: must not come back
    left.add("priya", "jam", w=1)
    cluster.heal()
    wait_for(lambda: all_up(cluster))
    expected = {"milk", "eggs", "jam"}
    owners = primaries(cluster, "carts", "priya")
    wait_for(lambda: all(cluster.inspect(n, "carts\x00priya") is not None
                         and set(cluster.inspect(n, "carts\x00priya").values[0]) == expected for n in owners), 30)
    assert carts.get("priya", r=3) == expected


def test_a_counter_split_two_two_reads_three_everywhere_after_heal(make_cluster) -> None:
    # riak_test verify_counter_converge, adapted: +5 on one side, -2 on the other
    cluster = make_cluster(nodes=4, **FAST)
    cluster.client().create_bucket("hits", type="counter")
    cluster.partition(["n1", "n2"], ["n3", "n4"])
    wait_split(cluster, ["n1", "n2"], ["n3", "n4"])
    cluster.client(nodes=["n1", "n2"]).bucket("hits").increment("c", 5, w=1)
    cluster.client(nodes=["n3", "n4"]).bucket("hits").decrement("c", 2, w=1)
    cluster.heal()
    wait_for(lambda: all_up(cluster))
    for node in cluster.nodes:
        with cluster.client(nodes=[node]) as client:
            hits = client.bucket("hits")
            wait_for(lambda: hits.get("c", r=3) == 3, 30)


def test_a_retried_increment_after_a_lost_acknowledgement_counts_once(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    views = cluster.client().create_bucket("views", type="counter")
    retrying = cluster.client(nodes=["n1", "n2"]).bucket("views")   # each retry goes to the other coordinator
    cluster.drop_replies("n1", 1)
    cluster.drop_replies("n2", 1)
    retrying.increment("home", 1, timeout=1.0)             # two acks lost: applied once, answered on the third try
    status = cluster.status()
    assert sum(status[n]["counts"].get("faults.replies_dropped", 0) for n in ("n1", "n2")) == 2
    assert views.get("home", r=3) == 1


def test_a_retry_that_was_applied_is_not_applied_again_even_with_a_new_request(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    client = cluster.client()
    client.create_bucket("once", type="counter")
    client.update("once", "k", ("increment", 7), op_id="fixed-op-id")
    client.update("once", "k", ("increment", 7), op_id="fixed-op-id")          # a duplicate delivery
    assert client.bucket("once").get("k", r=3) == 7


# --- LWW on hybrid logical clocks -----------------------------------------------------------------

def test_a_node_with_a_clock_an_hour_fast_does_not_win_a_later_write(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    client = cluster.client()
    client.create_bucket("profiles", type="lww")
    cluster.skew_clock("n1", 3600)
    with cluster.client(nodes=["n1"]) as fast:
        fast.put("p1", b"from the future", bucket="profiles", w=3)
    with cluster.client(nodes=["n2"]) as honest:
        honest.put("p1", b"written later", bucket="profiles", w=3)   # n2's clock reads an hour earlier
    assert client.get("p1", bucket="profiles", r=3).values == [b"written later"]
    local = cluster.inspect("n3", "profiles\x00p1")
    assert local.values == [b"written later"] and local.siblings == 1


def test_lww_keeps_one_value_of_concurrent_writers(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.client().create_bucket("last", type="lww")
    a, b = cluster.client(nodes=["n1"]), cluster.client(nodes=["n2"])
    for i in range(20):
        a.put("k", b"a%d" % i, bucket="last", w=1)
        b.put("k", b"b%d" % i, bucket="last", w=1)
    result = a.get("k", bucket="last", r=3)
    assert len(result.values) == 1                          # lossy by design: documented


# --- sessions and conditional writes -----------------------------------------------------------

def test_a_session_reads_its_own_write_even_through_a_node_cut_off_from_it(make_cluster) -> None:
    cluster = make_cluster(nodes=5, **FAST)
    key = "profile:7"
    owners = primaries(cluster, "", key)
    writer_side = owners[:2]
    stale = owners[2]
    outsider = next(n for n in cluster.nodes if n not in owners)
    client = cluster.client(nodes=[owners[0]])
    client.put(key, b"v1", w=3)
    cluster.partition([stale, outsider], [n for n in cluster.nodes if n not in (stale, outsider)])
    wait_for(lambda: seen_down(cluster, [outsider], writer_side), PARTITION_SEEN, "the writers seen down",
             explain=lambda: cluster.status()[outsider]["members"])
    with cluster.client(nodes=[owners[0]]).session() as writer:
        ctx = writer.get(key).context
        writer.put(key, b"v2", context=ctx, w=2)              # lands on the writer side only
        token = writer.token
    reader = cluster.client(nodes=[outsider, owners[0]])      # the first node asked is cut off from the write
    with reader.session(timeout=10, token=token) as session:
        assert session.get(key).values == [b"v2"]             # never v1, whichever node answers
    with cluster.client(nodes=[outsider]) as plain:
        assert plain.get(key).values == [b"v1"]               # a plain read there is stale, as Dynamo allows
    with cluster.client(nodes=[outsider]).session(timeout=2) as lonely:
        lonely.saw("", key, (("nobody.00000000", 5),))       # a version no replica holds
        with pytest.raises(SessionViolation):
            lonely.get(key)                                   # a clear error, not a stale answer


def test_conditional_writes_fail_with_version_mismatch_when_the_object_moved(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    client.put("cond", b"first", if_absent=True, w=3)
    with pytest.raises(VersionMismatch):
        client.put("cond", b"again", if_absent=True)
    seen = client.get("cond", r=3).context
    client.put("cond", b"second", context=seen, if_context=seen, w=3)
    with pytest.raises(VersionMismatch):
        client.put("cond", b"stale", context=seen, if_context=seen)
    assert client.get("cond", r=3).values == [b"second"]
    with pytest.raises(InvalidRequest):
        client.put("cond", b"x", if_absent=True, if_context=seen)
