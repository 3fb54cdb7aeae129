"""Multi-process behaviour through LocalCluster: quorum reads and writes, siblings, durability, faults."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from waiting import wait_for

from actors import client as client_module
from actors import Future, InvalidRequest, LocalCluster, QuorumFailed, QuorumValueError, StorageFull, connect
from actors.client import DEFAULT_WAIT, REPLY_MARGIN
from actors.errors import ConnectionError_, RequestTimeout
from actors.ring import Ring

pytestmark = pytest.mark.cluster


def primaries(cluster: LocalCluster, key: str) -> list[str]:
    config = cluster.config
    ring = Ring(config.nodes, partitions=config.partitions, target_n=min(config.n, len(config.nodes)))
    return ring.primaries(key, config.n)


def error_of(future: Future) -> BaseException | None:
    """What a done future failed with, or None (for the done callbacks below)."""
    try:
        future.get(0)
    except Exception as exc:  # noqa: BLE001 - every failure is handed to the test's assertions
        return exc
    return None


def seen_down_by_all(cluster: LocalCluster, dead: list[str]) -> bool:
    status = cluster.status()
    return all(all(s["members"].get(d) == "down" for d in dead) for n, s in status.items() if s.get("up"))


# --- the healthy path ------------------------------------------------------------------------

def test_a_write_is_readable_through_every_node(shared_cluster: LocalCluster) -> None:
    shared_cluster.client().put("greeting", b"hello")
    for node in shared_cluster.nodes:
        with shared_cluster.client(nodes=[node]) as client:
            assert client.get("greeting").values == [b"hello"]


def test_a_missing_key_reads_as_no_values(shared_cluster: LocalCluster) -> None:
    result = shared_cluster.client().get("never-written")
    assert result.values == []
    assert result.context == ()


def test_a_write_with_the_read_context_replaces_the_value(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    client.put("cart:priya", b"milk")
    obj = client.get("cart:priya")
    client.put("cart:priya", b"milk,eggs", context=obj.context, w=3)
    assert client.get("cart:priya", r=3).values == [b"milk,eggs"]


def test_two_puts_without_context_become_siblings_and_a_put_with_the_joined_context_collapses_them(
        shared_cluster: LocalCluster) -> None:
    first = shared_cluster.client(nodes=["n1"])
    second = shared_cluster.client(nodes=["n4"])
    first.put("cart:sam", b"apples", w=3)
    second.put("cart:sam", b"pears", w=3)
    obj = first.get("cart:sam", r=3)
    assert sorted(obj.values) == [b"apples", b"pears"]
    second.put("cart:sam", b"apples,pears", context=obj.context, w=3)
    assert first.get("cart:sam", r=3).values == [b"apples,pears"]


def test_a_put_with_a_stale_context_keeps_the_concurrent_sibling(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    client.put("doc", b"v1", w=3)
    stale = client.get("doc").context
    client.put("doc", b"v2", context=stale, w=3)          # supersedes v1
    client.put("doc", b"v3", context=stale, w=3)          # also saw only v1: concurrent with v2
    assert sorted(client.get("doc", r=3).values) == [b"v2", b"v3"]


def test_a_write_lands_on_all_of_its_preference_list_at_w_all(shared_cluster: LocalCluster) -> None:
    shared_cluster.client().put("placed", b"x", w="all")
    holders = [n for n in shared_cluster.nodes if shared_cluster.inspect(n, "placed") is not None]
    assert sorted(holders) == sorted(primaries(shared_cluster, "placed"))
    local = shared_cluster.inspect(holders[0], "placed")
    assert local.values == [b"x"] and not local.tombstone and sum(local.version.values()) == 1


def test_a_delete_reads_as_absent_and_leaves_tombstones(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    client.put("gone", b"soon", w=3)
    client.delete("gone", context=client.get("gone").context, w=3)
    assert client.get("gone", r=3).values == []
    for node in primaries(shared_cluster, "gone"):
        assert shared_cluster.inspect(node, "gone").tombstone


def test_many_requests_are_in_flight_on_one_connection(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client(nodes=["n2"])
    futures = [client.put_async(f"k{i}", b"v%d" % i) for i in range(1000)]
    contexts = [f.get(timeout=30) for f in futures]
    assert len(contexts) == 1000 and all(contexts)
    reads = [client.get_async(f"k{i}") for i in range(0, 1000, 10)]
    assert [r.get(timeout=30).values for r in reads] == [[b"v%d" % i] for i in range(0, 1000, 10)]


def test_done_callbacks_keep_requests_in_flight_without_a_waiting_thread(shared_cluster: LocalCluster) -> None:
    # Each reply's callback (on the client's I/O thread) sends the next write of its chain: the
    # pipelined pattern of a workload script, with 8 writes in flight and nobody blocked on a get.
    client = shared_cluster.client()
    finished = threading.Event()
    written: list[str] = []
    failures: list[BaseException] = []

    def write(chain: int, step: int) -> None:
        key = f"chain{chain}-{step}"
        client.put_async(key, b"%d" % step).add_done_callback(lambda f: after(f, chain, step, key))

    def after(future: Future, chain: int, step: int, key: str) -> None:
        if (error := error_of(future)) is not None:
            failures.append(error)
        written.append(key)
        if step < 24:
            write(chain, step + 1)
        elif len(written) == 8 * 25:
            finished.set()

    for chain in range(8):
        write(chain, 0)
    assert finished.wait(60), f"{len(written)} of 200 writes answered"
    assert failures == []
    reads = [client.get_async(f"chain{c}-{s}") for c in range(8) for s in (0, 24)]
    assert [r.get(timeout=30).values for r in reads] == [[b"0"], [b"24"]] * 8


def test_done_callbacks_hear_of_a_connection_lost_before_the_reply(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=3)
    client = cluster.client(nodes=["n3"])
    client.put("opened", b"x")                              # the connection to n3 is open
    cluster.pause("n3")
    errors: list[BaseException] = []
    all_in = threading.Event()

    def after(future: Future) -> None:
        if (error := error_of(future)) is not None:
            errors.append(error)
        if len(errors) == 5:
            all_in.set()

    for i in range(5):
        client.put_async(f"lost{i}", b"v").add_done_callback(after)
    cluster.kill("n3")
    assert all_in.wait(30), f"{len(errors)} of 5 callbacks ran"
    assert all(isinstance(e, ConnectionError_) and "closed before the reply" in str(e) for e in errors), errors


def test_done_callbacks_hear_of_a_paused_node_by_the_deadline_and_its_late_replies_are_dropped(make_cluster: Any) \
        -> None:
    # A paused node keeps its connection open and answers nothing: without the client's own
    # deadline these futures would stay pending, and their callbacks silent, for the whole pause.
    cluster = make_cluster(nodes=3)
    client = cluster.client(nodes=["n3"])
    client.put("opened", b"x")                              # the connection to n3 is open
    cluster.pause("n3")
    errors: list[tuple[BaseException, float]] = []
    all_in = threading.Event()
    sent = time.monotonic()

    def after(future: Future) -> None:
        if (error := error_of(future)) is not None:
            errors.append((error, time.monotonic() - sent))
        if len(errors) == 5:
            all_in.set()

    try:
        for i in range(5):
            client.put_async(f"paused{i}", b"v", timeout=0.5).add_done_callback(after)
        assert all_in.wait(15), f"{len(errors)} of 5 callbacks ran"
    finally:
        cluster.resume("n3")
    assert all(isinstance(e, RequestTimeout) and "by the request's deadline" in str(e) for e, _ in errors), errors
    assert min(at for _, at in errors) >= 0.5 + REPLY_MARGIN
    # The node answers the expired requests once resumed; the client drops those replies and goes on.
    client.put("after", b"y", timeout=10)
    assert client.get("after", timeout=10).values == [b"y"]


def test_a_request_without_a_timeout_is_waited_for_as_long_as_the_clusters_own_timeout_allows(
        make_cluster: Any) -> None:
    cluster = make_cluster(nodes=3, timeout=1.0)            # the nodes' own request timeout: 1 s
    client = connect(str(cluster.data_dir), nodes=["n3"])   # learns it from the data dir
    client.put("opened", b"x")
    cluster.pause("n3")
    heard = threading.Event()
    errors: list[BaseException] = []

    def after(future: Future) -> None:
        if (error := error_of(future)) is not None:
            errors.append(error)
        heard.set()

    try:
        started = time.monotonic()
        client.put_async("no timeout given", b"v").add_done_callback(after)
        with pytest.raises(RequestTimeout):
            client.get("no timeout given either")
        waited = time.monotonic() - started
        assert heard.wait(15), "the callback did not run"          # not the 30 s kept for an unknown default
    finally:
        cluster.resume("n3")
        client.close()
    assert len(errors) == 1 and isinstance(errors[0], RequestTimeout)
    assert 1.0 + REPLY_MARGIN <= waited < DEFAULT_WAIT


def test_done_callbacks_never_wait_for_a_connect_the_closed_connection_is_reopened_in_the_background(
        make_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = make_cluster(nodes=3)
    client = cluster.client(nodes=["n1", "n3"])
    client.put("first", b"x")
    client.put("second", b"x")                                # round robin: both connections open
    opened_on: list[str] = []                                 # the threads that opened a connection
    real_init = client_module.NodeConnection.__init__

    def recording_init(self: Any, *args: Any, **kwargs: Any) -> None:
        opened_on.append(threading.current_thread().name)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(client_module.NodeConnection, "__init__", recording_init)
    cluster.pause("n3")                   # a connect to it now waits for the handshake until CONNECT_TIMEOUT
    client._connections["n3"].close()
    wait_for(lambda: client._connections["n3"].closed)
    finished = threading.Event()
    failures: list[BaseException] = []
    written: list[int] = []

    def write(step: int) -> None:
        client.put_async(f"step{step}", b"v", timeout=5).add_done_callback(lambda f: after(f, step))

    def after(future: Future, step: int) -> None:
        if (error := error_of(future)) is not None:
            failures.append(error)
        written.append(step)
        if step < 9:
            write(step + 1)                # half of these pick n3 first: they must go to n1 at once
        else:
            finished.set()

    try:
        write(0)
        assert finished.wait(30), f"{len(written)} of 10 writes answered"
    finally:
        cluster.resume("n3")
    assert failures == [] and written == list(range(10))
    assert "io-client" not in opened_on, opened_on            # the client's I/O thread never connected
    assert "client-reopen-n3" in opened_on                    # n3 was reopened on a thread of its own
    for key in ("again", "and again"):                      # round robin: one of them through n3, resumed
        client.put(key, b"x", timeout=5)
    assert not client._connections["n3"].closed


def test_a_client_from_another_process_finds_the_cluster_through_its_data_dir(shared_cluster: LocalCluster) -> None:
    shared_cluster.client().put("found", b"yes")
    with connect(str(shared_cluster.data_dir)) as client:
        assert client.get("found").values == [b"yes"]


def test_status_shows_every_node_up_as_seen_by_every_node(shared_cluster: LocalCluster) -> None:
    status = shared_cluster.status()
    assert sorted(status) == sorted(shared_cluster.nodes)
    for node, s in status.items():
        assert s["up"] and s["name"] == node
        assert s["members"] == {n: "up" for n in shared_cluster.nodes}
        assert isinstance(s["hints_pending"], int)


# --- bad requests ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error", [
    ({"w": 4}, QuorumValueError), ({"w": 0}, QuorumValueError), ({"w": "most"}, QuorumValueError),
])
def test_an_impossible_write_quorum_is_refused_with_a_specific_error(shared_cluster: LocalCluster, kwargs, error):
    with pytest.raises(error):
        shared_cluster.client().put("q", b"x", **kwargs)


def test_an_impossible_read_quorum_is_refused(shared_cluster: LocalCluster) -> None:
    with pytest.raises(QuorumValueError, match="larger than n=3"):
        shared_cluster.client().get("q", r=5)


@pytest.mark.parametrize("key", ["", "a\x00b", "x" * 2000])
def test_a_bad_key_is_refused_and_the_node_keeps_serving(shared_cluster: LocalCluster, key: str) -> None:
    client = shared_cluster.client()
    with pytest.raises(InvalidRequest):
        client.put(key, b"x")
    client.put("fine", b"ok", context=client.get("fine").context)
    assert client.get("fine").values == [b"ok"]


def test_a_non_bytes_value_is_refused_before_sending(shared_cluster: LocalCluster) -> None:
    with pytest.raises(TypeError):
        shared_cluster.client().put("k", "not bytes")  # type: ignore[arg-type]


# --- failures --------------------------------------------------------------------------------

def test_writes_succeed_and_stay_readable_with_one_node_killed(make_cluster) -> None:
    cluster = make_cluster(nodes=5)
    client = cluster.client(nodes=["n1", "n2", "n3", "n4"])
    for i in range(50):
        client.put(f"before{i}", b"b")
    cluster.kill("n5")
    for i in range(50):
        client.put(f"after{i}", b"a")          # W=2: succeeds before and after n5 is seen down
    for i in range(50):
        assert client.get(f"before{i}").values == [b"b"]
        assert client.get(f"after{i}").values == [b"a"]


def test_a_w3_write_with_three_of_five_nodes_dead_raises_quorum_failed(make_cluster) -> None:
    cluster = make_cluster(nodes=5)
    for node in ("n3", "n4", "n5"):
        cluster.kill(node)
    client = cluster.client(nodes=["n1", "n2"])
    with pytest.raises(QuorumFailed) as failure:
        client.put("k", b"v", w=3, timeout=2.0)
    assert failure.value.needed == 3 and failure.value.got < 3
    assert set(failure.value.replicas) <= {"n1", "n2"}
    assert "needed 3" in str(failure.value)


def test_acknowledged_writes_survive_kill_9_of_every_node(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    client = cluster.client()
    futures = {f"durable{i}": client.put_async(f"durable{i}", b"%d" % i, w=3) for i in range(300)}
    for f in futures.values():
        f.get(timeout=30)                     # acknowledged by all three: durable on all three
    for node, status in cluster.status().items():  # durable in each write-ahead log, not yet in LMDB
        assert status["logged_keys"] >= 300 and status["log_bytes"] > 0, (node, status)
    for node in cluster.nodes:
        cluster.kill(node)
    for node in cluster.nodes:
        cluster.restart(node, wait=False)
    cluster.wait_until_converged(cluster.nodes)
    for node, status in cluster.status().items():  # each node replayed its log and checkpointed it
        assert status["logged_keys"] == 0 and status["checkpoints"] >= 1, (node, status)
    for node in cluster.nodes:
        for i in range(0, 300, 7):
            local = cluster.inspect(node, f"durable{i}")
            assert local is not None and local.values == [b"%d" % i], (node, i)


def test_a_delete_stays_deleted_after_restart(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    client = cluster.client()
    client.put("ghost", b"boo", w=3)
    client.delete("ghost", context=client.get("ghost").context, w=3)
    for node in cluster.nodes:
        cluster.kill(node)
        cluster.restart(node, wait=False)
    cluster.wait_until_converged(cluster.nodes)
    assert cluster.client().get("ghost", r=3).values == []


def test_a_down_primary_is_replaced_by_a_fallback_that_keeps_a_hint(make_cluster) -> None:
    cluster = make_cluster(nodes=5)
    key = "sloppy"
    owners = primaries(cluster, key)
    victim = owners[0]
    cluster.kill(victim)
    wait_for(lambda: seen_down_by_all(cluster, [victim]))
    alive = [n for n in cluster.nodes if n != victim]
    client = cluster.client(nodes=alive)
    client.put(key, b"while-down", w=3)                       # 3 acks: two primaries and a fallback
    holders = [n for n in alive if cluster.inspect(n, key) is not None]
    fallbacks = [n for n in holders if n not in owners]
    assert len(holders) == 3 and len(fallbacks) == 1
    assert cluster.status()[fallbacks[0]]["hints_pending"] >= 1
    assert client.get(key, r=3).values == [b"while-down"]


def test_a_restarted_node_is_seen_up_again_and_serves(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.kill("n2")
    wait_for(lambda: seen_down_by_all(cluster, ["n2"]))
    cluster.restart("n2")
    assert all(s["members"]["n2"] == "up" for s in cluster.status().values())
    with cluster.client(nodes=["n2"]) as client:
        client.put("back", b"again", w=3)
        assert client.get("back", r=3).values == [b"again"]


def test_a_partitioned_minority_cannot_reach_quorum_and_heals(make_cluster) -> None:
    cluster = make_cluster(nodes=5)
    cluster.partition(["n1"], ["n2", "n3", "n4", "n5"])
    lonely = cluster.client(nodes=["n1"])
    with pytest.raises(QuorumFailed):
        lonely.put("split", b"minority", w=2, timeout=1.5)
    majority = cluster.client(nodes=["n2", "n3"])
    majority.put("split", b"majority", w=2)
    cluster.heal()
    wait_for(lambda: cluster.status()["n1"]["members"] == {n: "up" for n in cluster.nodes})
    lonely.put("healed", b"yes", w=3)
    assert majority.get("healed", r=3).values == [b"yes"]


def test_a_slow_node_delays_but_does_not_break_requests(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.slow("n3", delay_ms=50)
    client = cluster.client(nodes=["n1"])
    client.put("slowpoke", b"x", w=3)
    assert client.get("slowpoke", r=3).values == [b"x"]
    cluster.heal()
    assert client.get("slowpoke", r=3).values == [b"x"]


def test_a_full_disk_refuses_writes_clearly_and_loses_nothing_acknowledged(make_cluster) -> None:
    cluster = make_cluster(nodes=3, map_size=2 << 20)        # every node's store holds at most 2 MiB
    client = cluster.client()
    value = b"x" * 100_000
    acknowledged = []
    with pytest.raises(StorageFull, match="full"):
        for i in range(100):
            client.put(f"big{i}", value, w=3)
            acknowledged.append(f"big{i}")
    assert acknowledged, "the first writes fit"
    for key in acknowledged:
        assert client.get(key, r=3).values == [value]
    small = client.get("big0").context
    client.put("big0", b"small", context=small, w=3)          # the node still serves and accepts what fits
    assert client.get("big0", r=3).values == [b"small"]


def test_a_node_restarted_during_a_partition_stays_partitioned_until_heal(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.partition(["n1"], ["n2", "n3"])
    cluster.kill("n1")
    cluster.restart("n1")
    # A restarted node presumes up the peers it last saw up, until its detector convicts them (no
    # heartbeat comes through the partition); then they stay down for as long as it holds.
    cut_off = {"n1": "up", "n2": "down", "n3": "down"}
    wait_for(lambda: cluster.status()["n1"]["members"] == cut_off, 10, "n1 convicts its unreachable peers")
    time.sleep(1.0)   # a few heartbeat rounds: n1 must not see its peers through the partition
    assert cluster.status()["n1"]["members"] == cut_off
    cluster.heal()
    wait_for(lambda: cluster.status()["n1"]["members"] == {"n1": "up", "n2": "up", "n3": "up"})


def test_a_paused_node_is_marked_down_writes_go_on_and_it_comes_back_on_resume(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.pause("n3")
    try:
        wait_for(lambda: all(cluster.status()[n]["members"]["n3"] == "down" for n in ("n1", "n2")))
        with cluster.client(nodes=["n1", "n2"]) as client:
            client.put("paused", b"still", w=2)
    finally:
        cluster.resume("n3")
    wait_for(lambda: all(s["members"]["n3"] == "up" for s in cluster.status().values()))
    with cluster.client(nodes=["n3"]) as client:
        assert client.get("paused", r=3).values == [b"still"]


def test_duplicated_and_reordered_messages_change_no_result(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    for node in cluster.nodes:
        cluster.degrade(node, duplicate=0.5, reorder_ms=20)
    client = cluster.client()
    for i in range(50):
        client.put(f"dup{i}", b"once", w=3)
    assert all(client.get(f"dup{i}", r=3).values == [b"once"] for i in range(50))
    cluster.heal()
    assert cluster.status()["n1"]["faults"] == {}


def test_a_node_that_loses_every_message_it_sends_cannot_acknowledge(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.degrade("n3", loss=1.0)
    with cluster.client(nodes=["n1"]) as client:
        with pytest.raises(QuorumFailed):
            client.put("lost", b"x", w=3, timeout=1.0)
        client.put("lost", b"x", w=2)
    with pytest.raises(InvalidRequest):
        cluster.degrade("n3", loss=1.5)


def test_a_skewed_clock_shows_in_the_node_status(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.skew_clock("n2", 3600)
    status = cluster.status()
    assert status["n2"]["wall_clock"] - status["n1"]["wall_clock"] > 3500
    cluster.heal()                                        # a network heal leaves clocks alone
    assert cluster.status()["n2"]["faults"] == {"clock_skew": 3600.0}
