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

from actors.chaos import FAST_REPAIR, run_chaos, stale_by_fault
from actors.cli import main
from actors.history import History
from actors.nemesis import FAULTS, Fault, Nemesis, expand, plan, ring_blocked

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("valid", "acknowledged", "lost", "unexpected", "recovered", "converged", "convergence_s", "stale_reads",
            "seed", "nemesis", "workload")


def assert_passed(result: dict) -> None:
    summary = {k: result[k] for k in REQUIRED} | {k: result[k] for k in ("errors", "ops", "elapsed_s", "convergence")}
    summary |= {"faults": [f["fault"]["description"] for f in result["faults"]],
                "unread_keys": result["checker"].get("unread_keys")}
    assert result["valid"] and result["converged"], summary
    assert result["lost"] == 0 and result["unexpected"] == 0, summary
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


def test_a_counter_run_under_slowness_and_duplication_stays_between_acknowledged_and_attempted_increments(
        tmp_path: Path) -> None:
    # Not kill/pause/partition: there, an increment whose first replica fails after applying it and
    # before answering is retried through another replica and can count twice (the documented
    # limit of idempotent retries without consensus; README "Idempotent retries").
    data_dir = tmp_path / "cluster"
    try:
        result = run_chaos(nodes=5, nemesis=("slow", "duplicate"), workload="counter", time_s=6, seed=5,
                           data_dir=data_dir)
    finally:
        kill_leftovers(data_dir)
    assert_passed(result)
    checker = result["checker"]
    assert result["mode"] == "counter" and checker["reads"] > 0
    assert all(isinstance(value, int) for value in checker["final"].values()) and checker["errors"] == []


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


@pytest.mark.parametrize("args, message", [
    (["--nodes", "2"], "at least 3 nodes"),
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
