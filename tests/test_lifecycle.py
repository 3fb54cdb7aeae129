"""Node processes never outlive what started them: an owner killed with SIGKILL, and commands ended by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from waiting import kill_leftovers, processes_using, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent

OWNER = """
import json, sys, time
from actors import LocalCluster
cluster = LocalCluster(nodes=2, n=2, r=1, w=1, data_dir=sys.argv[1]).start()
cluster.client().put("k", b"v")
print(json.dumps(cluster.pids), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"                    # a zombie has ended; only its parent's wait is missing


def test_nodes_stop_by_themselves_when_the_process_that_started_them_is_killed(tmp_path: Path) -> None:
    data_dir = tmp_path / "cluster"
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(data_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    try:
        line = owner.stdout.readline() if owner.stdout else b""
        assert line, owner.stderr.read().decode()[-2000:] if owner.stderr else "no output"
        pids = json.loads(line)
        assert sorted(pids) == ["n1", "n2"] and all(_alive(pid) for pid in pids.values())
        os.kill(owner.pid, signal.SIGKILL)          # no atexit, no finally: only the owner pipe tells the nodes
        owner.wait(timeout=10)
        wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=20,
                 what="nodes stopping after their owner was killed")
        log = (data_dir / "n1" / "node.log").read_text()
        assert "the process that started it is gone; stopping" in log and "node n1 stopped" in log
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
            owner.wait()
        kill_leftovers(data_dir)


def test_sigterm_ends_a_benchmark_run_with_its_cluster_stopped_and_its_directory_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = dict(os.environ, TMPDIR=str(scratch))          # the run's cluster directory goes here
    proc = subprocess.Popen([sys.executable, "-m", "actors.cli", "bench", "--workload", "w", "--time", "60",
                             "--clients", "1", "--inflight", "4", "--keys", "100", "--json", "--out",
                             str(tmp_path / "out")], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        wait_for(lambda: len(processes_using(scratch)) == 3, timeout=60, what="the benchmark's three nodes")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode != 0                      # interrupted, not a result
        assert not processes_using(scratch)
        assert list(scratch.iterdir()) == [], list(scratch.iterdir())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        kill_leftovers(scratch)
