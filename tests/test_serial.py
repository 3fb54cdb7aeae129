"""Linearizable conditional writes (``serial=True``) across node processes: unique names, compare-and-set,
serial reads, a minority that cannot decide, and what plain writes to the same key do."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from click.testing import CliRunner

from waiting import wait_for

from actors import InvalidRequest, LeaderlessError, LocalCluster, QuorumFailed, RequestTimeout, VersionMismatch
from actors.cli import main

pytestmark = pytest.mark.cluster


def race(cluster: LocalCluster, key: str, racers: int, **options: Any) -> dict[int, Any]:
    """``racers`` threads claim ``key`` at once, each through another node; what each one got."""
    results: dict[int, Any] = {}
    start = threading.Barrier(racers)

    def claim(i: int) -> None:
        with cluster.client(nodes=[cluster.nodes[i % len(cluster.nodes)]], timeout=5.0) as client:
            start.wait(10)
            try:
                client.put(key, f"owner-{i}".encode(), if_absent=True, **options)
                results[i] = "won"
            except LeaderlessError as exc:
                results[i] = exc

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_racing_serial_claims_of_one_name_have_exactly_one_winner_everyone_sees(shared_cluster: LocalCluster) -> None:
    for round_ in range(5):
        name = f"user:race-{round_}"
        results = race(shared_cluster, name, 8, serial=True)
        winners = [i for i, got in results.items() if got == "won"]
        undecided = [i for i, got in results.items() if isinstance(got, (QuorumFailed, RequestTimeout))]
        assert len(winners) <= 1 and len(results) == 8, results
        with shared_cluster.client() as reader:
            [owner] = reader.get(name, serial=True).values
        if winners:
            assert owner == f"owner-{winners[0]}".encode()
        else:                                                 # the winner was told "undecided": it may win
            assert owner in [f"owner-{i}".encode() for i in undecided], (owner, results)
        for i, got in results.items():
            if isinstance(got, VersionMismatch):
                assert got.values == [owner]                  # a loser is told who holds the name
            else:
                assert got == "won" or i in undecided, got
        for node in shared_cluster.nodes:
            with shared_cluster.client(nodes=[node]) as one:
                assert one.get(name, serial=True).values == [owner]


def test_a_compare_and_set_moves_only_from_the_version_it_read(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    client.put("balance", b"10", serial=True)
    read = client.get("balance", serial=True)
    client.put("balance", b"15", if_context=read.context, serial=True)
    with pytest.raises(VersionMismatch) as stale:
        client.put("balance", b"12", if_context=read.context, serial=True)    # another writer moved it
    assert stale.value.values == [b"15"] and stale.value.context == client.get("balance", serial=True).context
    assert client.get("balance", r=3).values == [b"15"]                       # plain reads see it too


def test_a_plain_write_beside_serial_ones_is_a_sibling_until_the_next_serial_write(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    client.put("mixed", b"serial", serial=True)
    client.put("mixed", b"plain", w=3)                                        # no context: concurrent
    assert sorted(client.get("mixed", serial=True).values) == [b"plain", b"serial"]
    client.put("mixed", b"settled", serial=True)                              # replaces what it read
    assert client.get("mixed", r=3).values == [b"settled"]


def test_serial_requests_are_refused_for_crdt_buckets(shared_cluster: LocalCluster) -> None:
    client = shared_cluster.client()
    client.create_bucket("serial-counts", type="counter")
    with pytest.raises(InvalidRequest, match="siblings and lww"):
        client.get("k", bucket="serial-counts", serial=True)


def test_a_node_cut_off_from_a_majority_of_the_primaries_never_reports_a_claim_as_won(make_cluster) -> None:
    cluster = make_cluster(nodes=3, n=3, r=2, w=2)
    cluster.isolate("n3")
    wait_for(lambda: cluster.status()["n3"]["members"]["n1"] == "down", 30, "n3 sees itself cut off")
    with cluster.client(nodes=["n3"], timeout=2.0) as cut_off:
        with pytest.raises((QuorumFailed, RequestTimeout)):
            cut_off.put("user:alone", b"owner-n3", if_absent=True, serial=True)
    with cluster.client(nodes=["n1"]) as majority:
        majority.put("user:alone", b"owner-n1", if_absent=True, serial=True)  # the majority side decides
    cluster.heal()
    with cluster.client(nodes=["n3"]) as healed:

        def owner() -> list[bytes] | None:
            try:
                return healed.get("user:alone", serial=True).values
            except (QuorumFailed, RequestTimeout):        # n3 has not seen its peers back yet
                return None

        wait_for(lambda: owner() == [b"owner-n1"], 30, "the cut-off node serves the majority's decision once healed")


def test_the_cli_claims_a_name_once(shared_cluster: LocalCluster) -> None:
    runner = CliRunner()
    args = ["put", "user:cli", "first", "--if-absent", "--serial", "--data-dir", str(shared_cluster.data_dir)]
    assert runner.invoke(main, args).exit_code == 0
    again = runner.invoke(main, ["put", "user:cli", "second", "--if-absent", "--serial", "--data-dir",
                                 str(shared_cluster.data_dir)])
    assert again.exit_code == 1 and "exists" in again.output
    got = runner.invoke(main, ["get", "user:cli", "--serial", "--data-dir", str(shared_cluster.data_dir)])
    assert got.exit_code == 0 and got.output.strip() == "first"


def test_without_serial_two_racers_can_both_claim_a_name_during_a_partition(make_cluster) -> None:
    # The leak serial requests close: if_absent alone is checked by whichever first primary a side
    # reaches, so both sides of a partition can each "win".
    cluster = make_cluster(nodes=4, n=3, r=2, w=1)
    cluster.partition(["n1", "n2"], ["n3", "n4"])

    def split() -> bool:
        status = cluster.status()
        return all(status[a]["members"][b] == "down" for a, b in (("n1", "n3"), ("n1", "n4"), ("n2", "n3"),
                                                                  ("n2", "n4"), ("n3", "n1"), ("n3", "n2"),
                                                                  ("n4", "n1"), ("n4", "n2")))

    wait_for(split, 40, "every node sees the other side down")
    won = 0
    for nodes, owner in ((["n1", "n2"], b"left"), (["n3", "n4"], b"right")):
        with cluster.client(nodes=nodes) as side:
            try:
                side.put("user:split", owner, if_absent=True, w=1)
                won += 1
            except VersionMismatch:
                pass
    assert won == 2


def test_the_unique_usernames_example_gives_every_name_one_owner_only_with_serial() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "examples" / "unique_usernames.py")], cwd=root,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    serial, plain = done.stdout.strip().splitlines()[-2:]
    assert serial.startswith("serial") and serial.endswith("names with two owners: 0"), done.stdout
    assert plain.startswith("plain") and not plain.endswith("names with two owners: 0"), done.stdout
