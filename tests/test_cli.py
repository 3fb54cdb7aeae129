"""The `leaderless` command: cluster up end to end, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from actors import LocalCluster, connect
from actors.cli import main
from actors.errors import LeaderlessError

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def free_base_port(count: int) -> int:
    for _ in range(100):
        base = random.randint(20000, 60000 - count)
        try:
            socks = []
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


AS_FROM_A_TERMINAL = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "runpy.run_module('actors.cli', run_name='__main__', alter_sys=True)")


def test_cluster_up_serves_the_other_commands_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    base = free_base_port(3)
    # SIGINT as a terminal's Ctrl-C delivers it, even when this test runs in a background job (where the
    # shell starts everything with SIGINT ignored, and Python then installs no handler for it).
    proc = subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, "cluster", "up", "--nodes", "3", "--port", str(base),
                             "--data-dir", str(data_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                with connect(str(data_dir)) as client:
                    status = client.status_all()
                if all(s.get("up") and all(v == "up" for v in s["members"].values()) for s in status.values()):
                    break
            except LeaderlessError:
                pass
            assert time.monotonic() < deadline, "cluster up did not come up"
            time.sleep(0.1)
        pids = [s["pid"] for s in status.values()]
        assert [s["address"][1] for s in status.values()] == [base, base + 1, base + 2]
        assert stat.S_IMODE(os.stat(data_dir / "secret").st_mode) == 0o600

        assert run("put", "cart:priya", "milk", "--data-dir", str(data_dir)) == (0, "ok\n")
        assert run("get", "cart:priya", "--data-dir", str(data_dir)) == (0, "milk\n")
        assert run("put", "cart:priya", "eggs", "--blind", "--data-dir", str(data_dir))[0] == 0
        code, out = run("get", "cart:priya", "--data-dir", str(data_dir))
        assert code == 0 and sorted(out.splitlines()[-2:]) == ["eggs", "milk"]
        assert run("delete", "cart:priya", "--data-dir", str(data_dir)) == (0, "ok\n")
        code, _ = run("get", "cart:priya", "--data-dir", str(data_dir))
        assert code == 1                                    # not found
        code, out = run("cluster", "status", "--json", "--data-dir", str(data_dir))
        assert code == 0 and '"hints_pending"' in out

        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        assert b"cluster stopped" in out
        assert not [pid for pid in pids if alive(pid)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_missing_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    code, out = run("get", "k", "--data-dir", str(tmp_path / "nowhere"))
    assert code == 1 and "no data dir" in out and len(out.strip().splitlines()) == 1


def test_an_unreachable_cluster_is_one_clear_line(tmp_path: Path) -> None:
    LocalCluster(nodes=3, data_dir=tmp_path)          # configured, never started
    code, out = run("get", "k", "--data-dir", str(tmp_path))
    assert code == 1 and out.startswith("error: no node could be reached")


def test_n_larger_than_the_cluster_is_a_usage_error(tmp_path: Path) -> None:
    code, out = run("cluster", "up", "--nodes", "2", "--n", "3", "--data-dir", str(tmp_path))
    assert code == 2 and "larger than --nodes" in out


def test_a_bad_key_or_quorum_is_one_clear_line_and_changes_nothing(shared_cluster: LocalCluster) -> None:
    data_dir = str(shared_cluster.data_dir)
    code, out = run("put", "", "v", "--data-dir", data_dir)
    assert code == 1 and out.startswith("error: key must be a non-empty string")
    code, out = run("get", "k", "--r", "7", "--data-dir", data_dir)
    assert code == 1 and out.startswith("error: r=7 is larger than n=3")
    code, out = run("put", "k", "v", "--w", "lots", "--data-dir", data_dir)
    assert code == 1 and "not an integer" in out
    assert shared_cluster.client().get("k").values == []


def test_status_printed_to_a_pipe_keeps_every_column_header_whole(shared_cluster: LocalCluster,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)             # CliRunner's output is not a terminal
    code, out = run("cluster", "status", "--data-dir", str(shared_cluster.data_dir))
    assert code == 0
    for header in ("address", "sees up", "quorum failed", "read repairs", "aae repaired"):
        assert header in out, out
    assert "…" not in out
    assert out.count("5/5") == 5                               # every node up, seeing all five


def test_status_of_a_cluster_with_a_dead_node_shows_it_down(make_cluster) -> None:
    cluster = make_cluster(nodes=3)
    cluster.kill("n3")
    code, out = run("cluster", "status", "--json", "--data-dir", str(cluster.data_dir))
    assert code == 0
    status = json.loads(out)
    assert status["n3"]["up"] is False and status["n1"]["up"] is True


def test_a_node_started_elsewhere_joins_through_a_seed_and_leaves_on_command(make_cluster, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=3, aae_interval=0.05, handoff_interval=0.2)
    cluster.client().put("before-join", b"kept", w=3)
    elsewhere = tmp_path / "host-b"
    elsewhere.mkdir()
    (elsewhere / "secret").write_bytes((cluster.data_dir / "secret").read_bytes())   # the operator copies it
    (elsewhere / "secret").chmod(0o600)                                              # as the README says
    seed = "%s:%d" % cluster.addresses["n1"]
    proc = subprocess.Popen([sys.executable, "-m", "actors.cli", "node", "start", "--name", "b1", "--join", seed,
                             "--data-dir", str(elsewhere)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30

        def everyone_has_b1() -> bool:
            try:
                with connect(str(elsewhere)) as client:
                    return all("b1" in s.get("ring_nodes", ()) for s in client.status_all().values())
            except LeaderlessError:
                return False

        while not everyone_has_b1():
            assert proc.poll() is None and time.monotonic() < deadline, "b1 did not join"
            time.sleep(0.1)
        assert set(json.loads((elsewhere / "cluster.json").read_text())["nodes"]) == {"n1", "n2", "n3", "b1"}
        code, out = run("cluster", "leave", "b1", "--data-dir", str(elsewhere))
        assert code == 0 and out.strip().endswith("b1 left")
        assert proc.wait(timeout=30) == 0
        assert all("b1" not in s["ring_nodes"] for s in cluster.status().values())
        assert cluster.client().get("before-join", r=3).values == [b"kept"]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_joining_without_the_secret_is_one_clear_line(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    seed = "%s:%d" % shared_cluster.addresses["n1"]
    code, out = run("node", "start", "--name", "x", "--join", seed, "--data-dir", str(tmp_path))
    assert code == 1 and out.startswith("error: no cluster secret")
