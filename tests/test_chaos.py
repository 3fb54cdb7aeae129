"""Chaos runs end to end: short runs under every kind of fault lose nothing and converge; the CLI and the schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from waiting import kill_leftovers, processes_using

from actors.chaos import (
    FAST_REPAIR,
    MATRIX_SPECS,
    await_convergence,
    current_ring,
    matrix_spec,
    matrix_summary,
    primaries_of,
    run_chaos,
    stale_by_fault,
)
from actors.cli import main
from actors.errors import InvalidRequest
from actors.history import History
from actors.nemesis import FAULTS, Fault, Nemesis, expand, plan, ring_blocked
from actors.ring import Ring

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("valid", "acknowledged", "lost", "unexpected", "recovered", "converged", "convergence_s", "stale_reads",
            "seed", "nemesis", "workload", "resurrected", "over_counted", "copies_exact", "copy_failures", "bucket")


def assert_passed(result: dict) -> None:
    summary = {k: result[k] for k in REQUIRED} | {k: result[k] for k in ("errors", "ops", "elapsed_s", "convergence")}
    summary |= {"faults": [f["fault"]["description"] for f in result["faults"]],
                "unread_keys": result["checker"].get("unread_keys")}
    assert result["valid"] and result["converged"], summary
    assert result["lost"] == 0 and result["unexpected"] == 0, summary
    assert result["resurrected"] == 0 and result["over_counted"] == 0, summary
    assert result["copies_exact"] and result["copy_failures"] == 0, summary
    assert result["acknowledged"] > 100, summary            # the workload did work despite the faults
    assert len(result["faults"]) >= 2, summary              # and the nemesis did break things
    assert result["errors"] == [], summary
    assert result["convergence_s"] is not None and result["convergence_s"] < 30, summary   # matrix: under 10 s


# --- short runs ------------------------------------------------------------------------------------

def test_a_set_run_under_partitions_and_kills_loses_no_acknowledged_add_and_converges(tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    lines: list[str] = []
    try:
        result = run_chaos(nodes=5, nemesis=("partition", "kill"), workload="set", time_s=8, seed=1,
                           data_dir=data_dir, progress=lines.append, history_path=tmp_path / "history.json")
    finally:
        kill_leftovers(data_dir)
    assert_passed(result)
    assert {f["fault"]["kind"] for f in result["faults"]} <= {"halves", "isolate", "bridge", "ring", "kill"}
    assert any("fault" in line for line in lines) and any("converged" in line for line in lines)
    ops = History.load(tmp_path / "history.json")
    assert sum(1 for op in ops if op.kind == "add" and op.outcome == "ok") == result["acknowledged"]
    assert not processes_using(data_dir), "a node process outlived the run"


def test_a_register_run_under_pauses_slowness_loss_duplication_reordering_and_clock_skew_converges(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    try:
        result = run_chaos(nodes=5, nemesis=("pause", "slow", "degrade", "clock"), workload="register", time_s=6,
                           seed=3, data_dir=data_dir)
    finally:
        kill_leftovers(data_dir)
    assert_passed(result)
    assert result["checker"]["single_writer_keys"] and result["checker"]["multi_writer_keys"]
    assert result["checker"]["reads"] > 0
    assert not processes_using(data_dir)


def test_a_counter_run_under_kills_pauses_and_duplication_at_r1_w3_never_over_counts(tmp_path: Path) -> None:
    # Kills and pauses are where a retry built by another replica used to count an increment
    # twice (issue 17); the exactly-once window makes that an error again.
    data_dir = tmp_path / "cluster"
    try:
        result = run_chaos(nodes=5, nemesis=("kill", "pause", "duplicate"), workload="counter", time_s=7, seed=5,
                           data_dir=data_dir, r=1, w=3)
    finally:
        kill_leftovers(data_dir)
    assert_passed(result)
    checker = result["checker"]
    assert result["mode"] == "counter" and checker["reads"] > 0 and result["bucket"]["r"] == 1
    assert all(isinstance(value, int) for value in checker["final"].values()) and checker["errors"] == []
    assert all(checker["acknowledged_sum"][k] <= v <= checker["attempted_sum"][k] for k, v in checker["final"].items())


@pytest.mark.parametrize("workload, nemesis, nodes, bucket_n, r, w, seed", [
    ("orset", ("halves", "isolate"), 4, 3, 1, 1, 11),
    ("orset", ("partition", "kill"), 4, 2, 1, 1, 11),
    ("map", ("partition",), 5, 5, 3, 3, 12),
    ("delete", ("kill", "isolate"), 4, 1, 1, 1, 13),
])
def test_removes_and_deletes_stick_and_each_key_has_exactly_its_buckets_n_copies(
        tmp_path: Path, workload: str, nemesis: tuple[str, ...], nodes: int, bucket_n: int, r: int, w: int,
        seed: int) -> None:
    # 9 s: two faults of 3 s each, longer than failure detection (~2 s), so that writes and removes
    # go to fallbacks (sloppy quorum) and hints, handoff and copy counts are exercised. On the code
    # before issue 17 (removes without their context only) the first run undid 22-34 acknowledged
    # removes (a fallback built them on an empty set) and the other three left keys with more
    # copies than their bucket's n.
    data_dir = tmp_path / "cluster"
    try:
        result = run_chaos(nodes=nodes, nemesis=nemesis, workload=workload, time_s=9, seed=seed, data_dir=data_dir,
                           bucket_n=bucket_n, r=r, w=w)
    finally:
        kill_leftovers(data_dir)
    assert_passed(result)
    assert result["bucket"]["n"] == bucket_n and result["bucket"]["name"] == f"chaos-{workload}"
    assert set(result["convergence"]["copy_counts"]) == {str(bucket_n)}       # every key written, n copies each
    checker = result["checker"]
    if workload == "delete":
        assert checker["deletes"]["ok"] > 10 and checker["writes"]["ok"] > 10
    else:
        assert checker["removed"] > 10 and checker["kept"] > 10 and checker["removes"]["ok"] > 10


@pytest.mark.parametrize("workload, nemesis, seed", [
    ("cas-register", ("partition", "kill"), 21),
    ("unique", ("isolate", "pause", "clock"), 22),
])
def test_serial_workloads_stay_linearizable_under_faults(tmp_path: Path, workload: str, nemesis: tuple[str, ...],
                                                         seed: int) -> None:
    data_dir = tmp_path / "cluster"
    try:
        result = run_chaos(nodes=5, nemesis=nemesis, workload=workload, time_s=9, seed=seed, data_dir=data_dir)
    finally:
        kill_leftovers(data_dir)
    summary = {k: result[k] for k in ("valid", "converged", "acknowledged", "lost", "unexpected", "indeterminate")}
    assert result["valid"] and result["converged"] and result["copies_exact"], summary
    assert result["lost"] == 0 and result["unexpected"] == 0, summary
    checker = result["checker"]
    assert checker["keys"] > 0 and checker["linearizable_keys"] == checker["keys"]
    assert not checker["not_linearizable"] and not checker["two_winners"] and not checker["unknown_keys"]
    assert result["acknowledged"] > 5


def current_ring_nodes(result: dict) -> list[str]:
    nodes = [f"n{i}" for i in range(1, result["nodes"] + 1)]
    for action, node in result["membership"]:
        nodes = nodes + [node] if action == "join" else [n for n in nodes if n != node]
    return nodes


def test_nodes_joining_and_leaving_during_a_run_keep_every_acknowledged_add_and_remove_and_exact_copies(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    try:
        result = run_chaos(nodes=4, nemesis=("membership", "isolate"), workload="orset", time_s=8, seed=2,
                           data_dir=data_dir, bucket_n=2, r=1, w=1, interval=1.0)
    finally:
        kill_leftovers(data_dir)
    assert_passed(result)
    actions = [action for action, _ in result["membership"]]
    assert "join" in actions and "leave" in actions, result["membership"]
    assert sorted(result["members"]) == sorted(current_ring_nodes(result))
    assert set(result["convergence"]["copy_counts"]) == {"2"}


def test_last_write_wins_loses_concurrent_adds_and_the_verdict_says_how_many(tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    try:
        result = run_chaos(nodes=5, nemesis=("slow",), workload="set", mode="lww", time_s=4, seed=6,
                           data_dir=data_dir, workload_options={"keys": 1})
    finally:
        kill_leftovers(data_dir)
    assert result["mode"] == "lww" and result["converged"]
    assert not result["valid"] and result["lost"] > 0 and result["unexpected"] == 0
    assert 0 < result["lost_fraction"] < 1 and result["lost"] == len(result["checker"]["lost_elements"])


def test_the_cli_prints_exactly_one_json_object_with_the_verdict_and_exits_0(tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    proc = subprocess.Popen([sys.executable, "-m", "actors.cli", "chaos", "--nodes", "5", "--nemesis", "partition,kill",
                             "--workload", "set", "--time", "6", "--seed", "2", "--json", "--data-dir", str(data_dir)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_leftovers(data_dir)
    assert proc.returncode == 0, err.decode()[-2000:]
    result = json.loads(out)                                 # the whole of stdout is one JSON object
    assert isinstance(result, dict) and set(REQUIRED) <= set(result)
    assert result["seed"] == 2 and result["workload"] == "set"
    assert result["nemesis"] == ["halves", "isolate", "bridge", "ring", "kill"]
    assert_passed(result)
    assert b"fault" in err and b"converged" in err           # progress went to stderr


def test_a_majorities_ring_blocks_exactly_the_far_nodes_and_heal_clears_it(make_cluster) -> None:
    cluster = make_cluster(nodes=5, **FAST_REPAIR)
    nemesis = Nemesis(cluster, ["ring"], History(), seed=1)
    order = ("n3", "n1", "n4", "n2", "n5")
    nemesis._apply(Fault("ring", nodes=order))
    status = cluster.status()
    assert {node: tuple(s["blocked"]) for node, s in status.items()} == ring_blocked(order)
    assert {node: tuple(f["blocked"]) for node, f in cluster._faults.items()} == ring_blocked(order)
    nemesis._heal(Fault("ring", nodes=order))
    assert all(s["blocked"] == [] for s in cluster.status().values())
    cluster.wait_until_converged(cluster.nodes, timeout=15)


def test_await_convergence_counts_copies_per_bucket_n_and_calls_a_key_with_more_copies_than_its_n_unconverged(
        make_cluster) -> None:
    cluster = make_cluster(nodes=4, **FAST_REPAIR)
    with cluster.client() as client:
        client.create_bucket("two", type="set", n=2, r=1, w=2).add("k", "a")
        client.put("plain", b"v", w=3)
    keys = {"two\x00k": 2, "plain": 3}
    result = await_convergence(cluster, keys, timeout=10)
    assert result["converged"] and result["copies_exact"] and result["copy_counts"] == {"2": 1, "3": 1}
    primaries = primaries_of(cluster, keys)
    assert len(primaries["two\x00k"]) == 2 and all(cluster.inspect(n, "two\x00k") for n in primaries["two\x00k"])
    wrong = await_convergence(cluster, {"two\x00k": 1, "plain": 3}, timeout=0.5)    # as if its n were 1
    assert not wrong["converged"] and wrong["copy_failures"] == 1 and list(wrong["wrong_copies"]) == ["two\x00k"]


# --- options and the schedule (no cluster) ---------------------------------------------------------

def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    nodes = ["n1", "n2", "n3", "n4", "n5"]
    first = plan(nodes, FAULTS, seed=7, count=60)
    assert first == plan(nodes, FAULTS, seed=7, count=60)
    assert first != plan(nodes, FAULTS, seed=8, count=60)
    assert {fault.kind for fault in first} == set(FAULTS)
    kills = [fault for fault in first if fault.kind == "kill"]
    assert kills and all(1 <= len(fault.nodes) <= 4 for fault in kills)
    for fault in first:
        if fault.kind == "bridge":
            grouped = {n for group in fault.groups for n in group}
            assert fault.nodes[0] not in grouped and len(grouped) == 4


@pytest.mark.parametrize("count", [4, 5, 6, 7, 9])
def test_in_a_majorities_ring_each_node_sees_a_different_majority_and_blocking_is_mutual(count: int) -> None:
    order = [f"n{i}" for i in range(1, count + 1)]
    blocked = ring_blocked(order)
    sees = {node: frozenset(order) - set(blocked[node]) for node in order}
    assert all(len(seen) > count // 2 and node in seen for node, seen in sees.items())
    assert len(set(sees.values())) == count
    assert all(a in blocked[b] for a in order for b in blocked[a])


def test_nemesis_names_expand_and_unknown_ones_are_refused() -> None:
    assert expand(["partition", "kill"]) == ("halves", "isolate", "bridge", "ring", "kill")
    assert expand(["degrade", "loss"]) == ("loss", "duplicate", "reorder")
    assert set(expand(["all"])) == set(FAULTS)
    with pytest.raises(ValueError, match="unknown nemesis 'flood'"):
        expand(["kill", "flood"])


def test_stale_reads_are_attributed_to_the_fault_in_force_when_they_began() -> None:
    faults = [{"fault": {"kind": "halves"}, "started": 1.0, "ended": 2.0},
              {"fault": {"kind": "kill"}, "started": 3.0, "ended": None}]      # ended by the final heal
    assert stale_by_fault([0.5, 1.5, 1.9, 2.5, 3.5], faults) == {"halves": 2, "kill": 1, "none": 2}


def test_the_matrix_rotation_covers_every_workload_every_quorum_pair_and_every_n() -> None:
    specs = [matrix_spec(seed) for seed in range(1, 21)]
    assert {s["workload"] for s in specs} == {"set", "orset", "map", "register", "counter", "delete"}
    assert {(s["r"], s["w"]) for s in specs} == {(r, w) for r in (1, 2, 3) for w in (1, 2, 3)}
    assert {s["bucket_n"] or 3 for s in specs} == {1, 2, 3, 4, 5}
    counts = {w: sum(1 for s in specs if s["workload"] == w) for w in {s["workload"] for s in specs}}
    assert min(counts.values()) >= 3
    assert matrix_spec(21) == matrix_spec(1) and len(MATRIX_SPECS) == 20
    assert matrix_spec(3, nodes=4)["bucket_n"] == 4 and matrix_spec(3, nodes=3)["bucket_n"] is None
    assert all(s["r"] <= (s["bucket_n"] or 3) and s["w"] <= (s["bucket_n"] or 3) for s in specs)


def test_the_matrix_summary_totals_acknowledged_operations_per_workload_and_every_error_kind() -> None:
    def run(workload: str, ack: int, conv: float, **errors: int) -> dict:
        return {"workload": workload, "acknowledged": ack, "convergence_s": conv, "valid": not errors,
                "converged": True, "copies_exact": True, "lost": 0, "unexpected": 0, "recovered": 1,
                "stale_reads": 2, "seed": 1, "bucket": {"type": "set", "n": 2, "r": 1, "w": 2},
                "membership": [["join", "n6"]], **errors}
    lines = matrix_summary([run("orset", 10, 1.5), run("orset", 5, 0.5, resurrected=2), run("counter", 7, 3.0,
                                                                                            over_counted=1)])
    assert lines[0].startswith("3 runs: 1 passed, 1 valid, 3 converged, 3 with exact copy counts")
    assert "counter 7 (1 runs), orset 15 (2 runs); total 22" in lines[1]
    assert "resurrected 2, over-counted 1, copy-count failures 0" in lines[2] and "3 joins, 0 leaves" in lines[2]
    assert lines[3].startswith("slowest convergence: 3.0 s")


def test_the_ring_the_harness_rebuilds_after_joins_and_leaves_is_the_one_the_nodes_build() -> None:
    class Config:
        n, partitions, nodes = 3, 64, {}

        @staticmethod
        def initial_ring_nodes() -> list[str]:
            return ["n1", "n2", "n3", "n4"]

    class FakeCluster:
        config = Config()

    first = Ring(["n1", "n2", "n3", "n4"], partitions=64, target_n=3)
    ring = current_ring(FakeCluster(), [("join", "n5"), ("leave", "n2")])
    assert ring.owners == first.with_node("n5").without_node("n2").owners
    assert ring.owners != Ring(["n1", "n3", "n4", "n5"], partitions=64, target_n=3).owners   # not a fresh ring


class MembershipCluster:
    """Just enough of a LocalCluster for the nemesis' membership decisions."""

    def __init__(self, nodes: int, refuse: bool = False) -> None:
        self.config = type("Config", (), {"nodes": {f"n{i}": ("127.0.0.1", 0) for i in range(1, nodes + 1)}})()
        self.refuse = refuse
        self.left: list[str] = []

    @property
    def nodes(self) -> list[str]:
        return sorted(self.config.nodes, key=lambda name: int(name[1:]))

    def decommission(self, name: str, timeout: float = 0.0) -> None:
        if self.refuse:
            raise InvalidRequest(f"{name} cannot leave: 2 members would be left for a bucket with n=3")
        self.left.append(name)

    def status(self) -> dict:
        return {n: {"name": n, "up": True, "ring_version": 1, "ring_nodes": self.nodes} for n in self.nodes}


def test_a_leave_below_the_largest_n_is_skipped_a_join_past_the_cap_too_and_a_refused_leave_is_no_error() -> None:
    nemesis = Nemesis(MembershipCluster(3), ["leave", "join"], History(), min_members=3, max_members=4)
    skipped = nemesis._resolve(Fault("leave", nodes=("n2",)))
    assert skipped.skipped and "2 members would be left" in skipped.describe()
    assert nemesis._resolve(Fault("join")).nodes == ("n4",)
    nemesis = Nemesis(MembershipCluster(4), ["join"], History(), max_members=4)
    assert nemesis._resolve(Fault("join")).skipped.startswith("4 members already")
    refusing = MembershipCluster(4, refuse=True)
    nemesis = Nemesis(refusing, ["leave"], History(), min_members=3)
    nemesis._act("start", nemesis._resolve(Fault("leave", nodes=("n4",))), nemesis._apply)
    assert nemesis.errors == [] and nemesis.ring_changes == [] and refusing.nodes == ["n1", "n2", "n3", "n4"]


@pytest.mark.parametrize("args, message", [
    (["--nodes", "2"], "at least 3 nodes"),
    (["--bucket-n", "6"], "bucket n=6 must be between 1 and the 5 nodes"),
    (["--workload", "orset", "--mode", "lww"], "orset workload uses a set bucket"),
    (["--nemesis", "partition,flood"], "unknown nemesis 'flood'"),
    (["--workload", "bank"], "unknown workload 'bank'"),
    (["--mode", "quorum"], "unknown mode 'quorum'"),
    (["--workload", "counter", "--mode", "lww"], "counter workload uses a counter bucket"),
    (["--time", "0"], "positive number of seconds"),
])
def test_bad_options_are_one_line_and_exit_code_2(args: list[str], message: str) -> None:
    started = time.monotonic()
    result = CliRunner().invoke(main, ["chaos", *args, "--json"])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 5                   # refused before any cluster starts
