"""The benchmark suite: one short run end to end, and its pure parts (histograms, key choice, the loop).

Speed is measured by the benchmarks, never asserted here.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from actors import LocalCluster
from actors.cli import main
from bench import compare
from bench.config import BenchConfig
from bench.drivers import Completions
from bench.etcd import EtcdCluster, PeerUnavailable
from bench.histogram import LatencyHistogram, hdr_available
from bench.runner import cpu_per_op
from bench.toy import run_toy
from bench.worker import run_load
from bench.workload import WORKLOADS, Zipfian, key_chooser, key_name

BACKENDS = ["log"] + (["hdr"] if hdr_available() else [])


@pytest.mark.cluster
def test_bench_json_prints_one_object_with_throughput_latency_errors_config_and_saves_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["bench", "--nodes", "3", "--workload", "a", "--time", "2", "--json",
                                       "--keys", "300", "--warmup", "0.5", "--clients", "2", "--inflight", "8",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert report["throughput"] > 0
    assert report["errors"] == 0
    assert set(report["latency_ms"]) == {"read", "write"}
    for lat in report["latency_ms"].values():
        assert {"p50", "p95", "p99", "p999"} <= set(lat)
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"]
    assert report["config"]["workload"] == "a" and report["config"]["nodes"] == 3
    assert len(report["client_cpu"]) == 2
    per_op = report["cpu_us_per_op"]                  # what one request cost the servers and the clients
    assert per_op["server"] == round(sum(report["server_cpu"].values()) / report["throughput"] * 1e6, 1) > 0
    assert per_op["client"] == round(sum(report["client_cpu"]) / report["throughput"] * 1e6, 1) > 0
    assert Path(report["files"]["json"]).exists()
    pytest.importorskip("matplotlib")
    png = Path(report["files"]["png"])
    assert png.parent == out and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cluster
def test_bench_on_a_running_cluster_uses_its_nodes_its_own_bucket_and_leaves_it_running(make_cluster: Any,
                                                                                       tmp_path: Path) -> None:
    cluster = make_cluster(nodes=4)
    pids = dict(cluster.pids)
    result = CliRunner().invoke(main, ["bench", "--data-dir", str(cluster.data_dir), "--workload", "a", "--time", "1",
                                       "--json", "--keys", "200", "--warmup", "0.3", "--clients", "2",
                                       "--inflight", "4", "--out", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    report = json.loads([line for line in result.stdout.splitlines() if line.strip()][0])
    assert report["throughput"] > 0 and report["errors"] == 0
    config = report["config"]
    assert (config["nodes"], config["node_names"], config["bucket"]) == (4, ["n1", "n2", "n3", "n4"], "bench-n3r2w2")
    assert report["servers_sampled"] == ["n1", "n2", "n3", "n4"] and set(report["server_cpu"]) == set(pids)
    assert cluster.pids == pids                         # the same node processes, still running
    client = cluster.client()
    assert client.get(key_name(0), bucket="bench-n3r2w2").values     # the loaded keys are in its bucket
    assert client.get(key_name(0)).values == []                       # and only there


def test_bench_on_a_cluster_that_is_not_running_fails_with_one_line(tmp_path: Path) -> None:
    LocalCluster(nodes=3, data_dir=tmp_path / "stopped")            # configured, never started
    result = CliRunner().invoke(main, ["bench", "--data-dir", str(tmp_path / "stopped"), "--time", "1",
                                       "--out", str(tmp_path / "results")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot make the bench bucket" in lines[0] and "cannot reach node n1" in lines[0]


@pytest.mark.parametrize("args, says", [
    (["--nodes", "3"], "'--nodes': --nodes sizes a fresh cluster"),
    (["--compare"], "--data-dir benchmarks a running cluster; --compare starts"),
    (["--gray"], "--data-dir benchmarks a running cluster; --gray starts"),
    (["--n", "5"], "the number of nodes (4)"),
    (["--client-nodes", "n9"], "the cluster has n1, n2, n3, n4")])
def test_bad_options_for_a_running_cluster_exit_2_with_one_line(args: list[str], says: str, tmp_path: Path) -> None:
    LocalCluster(nodes=4, data_dir=tmp_path)                         # its configuration is all these need
    result = CliRunner().invoke(main, ["bench", "--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines


def test_bench_on_a_data_dir_without_a_cluster_exits_2_with_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bench", "--data-dir", str(tmp_path / "none")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'--data-dir': no cluster in" in lines[0], lines


@pytest.mark.parametrize("args, option", [(["--workload", "x"], "--workload"), (["--nodes", "0"], "--nodes"),
                                          (["--compare", "--peers", "nope"], "--peers"),
                                          (["--compare", "--rounds", "0"], "--rounds")])
def test_bad_bench_options_exit_2_with_one_line(args: list[str], option: str) -> None:
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_merged_histograms_give_the_percentiles_of_all_samples(backend: str) -> None:
    low, high = LatencyHistogram(backend), LatencyHistogram(backend)
    for micros in range(1, 1001):
        low.record(micros * 10)                # 10 µs .. 10 ms
    for micros in range(1001, 2001):
        high.record(micros * 10)               # 10 ms .. 20 ms
    merged = LatencyHistogram.decode(low.encode())
    merged.merge(LatencyHistogram.decode(high.encode()))
    assert merged.count == 2000
    for p, exact in ((50.0, 10_000), (90.0, 18_000), (99.0, 19_800), (99.9, 19_980), (100.0, 20_000)):
        assert merged.percentile(p) == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_histogram_keeps_counts_not_samples(backend: str) -> None:
    hist = LatencyHistogram(backend)
    hist.record(1500, count=1_000_000)
    assert hist.count == 1_000_000
    assert hist.percentile(99.9) == pytest.approx(1500, rel=0.01)
    assert len(hist.encode()) < 2000


def test_zipfian_key_choice_favours_low_ranks() -> None:
    draw = Zipfian(1000, random.Random(1))
    counts = Counter(draw() for _ in range(50_000))
    assert all(0 <= rank < 1000 for rank in counts)
    assert counts[0] > counts[1] > counts[10] > counts[100]
    assert sum(counts[r] for r in range(10)) > 0.3 * 50_000          # the top 1% of keys get a third of the load
    uniform = Counter(key_chooser("uniform", 1000, random.Random(1))() for _ in range(50_000))
    assert sum(uniform[r] for r in range(10)) < 0.02 * 50_000


def test_workload_mixes_follow_ycsb() -> None:
    rng = random.Random(3)
    reads = Counter(WORKLOADS["b"].choose(rng) for _ in range(10_000))
    assert 0.93 < reads["read"] / 10_000 < 0.97
    assert WORKLOADS["c"].ops == ("read",) and WORKLOADS["w"].ops == ("write",)


class InstantDriver:
    """Completes every request on the next wait; remembers the most ever outstanding."""

    latency_source = "fake"

    def __init__(self) -> None:
        self.outstanding: list[Any] = []
        self.most = 0

    def submit(self, op: str, key: str, value: bytes) -> Any:
        handle = object()
        self.outstanding.append(handle)
        self.most = max(self.most, len(self.outstanding))
        return handle

    def wait(self, timeout: float) -> list[tuple[Any, float, None]]:
        import time

        done, self.outstanding = self.outstanding, []
        now = time.perf_counter()
        return [(h, now, None) for h in done]


def test_the_closed_loop_keeps_inflight_requests_outstanding_and_records_only_the_window() -> None:
    import time

    driver = InstantDriver()
    spec = {"index": 0, "workers": 1, "workload": "a", "distribution": "zipfian", "keys": 100, "value_size": 10,
            "inflight": 16, "seed": 1}
    result = run_load(driver, spec, None, time.time(), 0.1, 0.2)
    assert driver.most == 16
    assert set(result["ops"]) == {"read", "write"} and sum(result["ops"].values()) > 0
    assert sum(result["per_second"]) >= sum(result["ops"].values())
    assert result["errors"] == {} and result["unfinished"] == 0


class CallbackDriver:
    """Completes requests on its own thread and calls back there, as the client's I/O thread does."""

    latency_source = "fake"

    def __init__(self, fail_after: int | None = None) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.outstanding = self.most = self.sent = 0
        self.lock = threading.Lock()
        self.fail_after = fail_after
        self.thread = threading.Thread(target=self._complete, daemon=True)
        self.thread.start()

    def submit_then(self, op: str, key: str, value: bytes, done: Any) -> None:
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise ConnectionError("no node could be reached")
        with self.lock:
            self.sent += 1
            self.outstanding += 1
            self.most = max(self.most, self.outstanding)
        self.queue.put(done)

    def _complete(self) -> None:
        while True:
            done = self.queue.get()
            if done is None:
                return
            time.sleep(0.0005)
            with self.lock:
                self.outstanding -= 1
            done(time.perf_counter(), None)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(5)


def test_the_closed_loop_on_reply_callbacks_keeps_inflight_requests_outstanding_and_drains() -> None:
    driver = CallbackDriver()
    spec = {"index": 0, "workers": 1, "workload": "w", "distribution": "uniform", "keys": 100, "value_size": 10,
            "inflight": 16, "seed": 1}
    try:
        result = run_load(driver, spec, None, time.time(), 0.1, 0.3)
    finally:
        driver.close()
    assert driver.most == 16
    assert result["ops"]["write"] > 0 and sum(result["per_second"]) == driver.sent
    assert result["unfinished"] == 0 and driver.outstanding == 0
    assert result["errors"] == {}


def test_the_closed_loop_on_reply_callbacks_fails_when_no_request_can_be_sent() -> None:
    driver = CallbackDriver(fail_after=40)
    spec = {"index": 0, "workers": 1, "workload": "w", "distribution": "uniform", "keys": 100, "value_size": 10,
            "inflight": 8, "seed": 1}
    try:
        with pytest.raises(ConnectionError, match="no node"):
            run_load(driver, spec, None, time.time(), 0.1, 5.0)
    finally:
        driver.close()


def test_the_closed_loop_on_reply_callbacks_stops_early_when_the_parent_says_stop() -> None:
    import multiprocessing

    parent, child = multiprocessing.Pipe()
    driver = CallbackDriver()
    spec = {"index": 0, "workers": 1, "workload": "w", "distribution": "uniform", "keys": 100, "value_size": 10,
            "inflight": 8, "seed": 1}
    threading.Timer(0.6, parent.send, args=(("stop",),)).start()
    started = time.monotonic()
    try:
        result = run_load(driver, spec, child, time.time(), 0.1, 60.0)
    finally:
        driver.close()
    assert time.monotonic() - started < 30                  # not the 60 s asked for
    assert result["stopped_early"] and result["unfinished"] == 0 and driver.outstanding == 0
    ticks = []
    while parent.poll():
        ticks.append(parent.recv())
    assert ticks and all(t[0] == "tick" for t in ticks) and ticks[-1][1] > 0


def test_the_toy_ceiling_runs_for_a_second_and_reports_writes() -> None:
    result = run_toy(time_s=1.0, warmup_s=0.2, window=64, keys=100)
    assert result["throughput"] > 0
    assert result["latency_ms"]["write"]["p99"] > 0


def _fake_run(throughput: float) -> dict[str, Any]:
    return {"throughput": throughput, "latency_ms": {"write": {"p99": 1000.0 / throughput}}}


def test_compare_rounds_alternate_the_order_and_give_the_median_ratio_of_each_round(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The machine slows down as the rounds go: each system's throughput falls with every run
    # started, so only ratios taken inside a round stay fair.
    calls: list[str] = []
    ours = iter([9000.0, 6000.0, 8000.0])
    etcd = iter([3000.0, 3000.0, 2000.0])

    def runner(system: str, speeds: Any) -> Any:
        def run(config: BenchConfig, workloads: tuple[str, ...], progress: Any, label: str) -> dict[str, Any]:
            calls.append(system)
            if speeds is None:
                raise PeerUnavailable("not here")
            return {w: _fake_run(next(speeds)) for w in workloads}
        return run

    monkeypatch.setattr(compare, "_RUNNERS", {"leaderless": runner("leaderless", ours), "etcd": runner("etcd", etcd),
                                              "toy": runner("toy", None)})
    said: list[str] = []
    report = compare.run_compare(BenchConfig(), workloads=("w",), peers=("etcd", "toy"), say=said.append, rounds=3)

    assert calls == ["leaderless", "etcd", "toy", "etcd", "leaderless", "leaderless", "etcd"]   # toy tried once
    assert said == ["skipping toy: not here"]
    ratio = report["ratios"]["etcd"]["w"]
    assert ratio["throughput_rounds"] == [3.0, 2.0, 4.0]
    assert ratio["throughput"] == 3.0 and ratio["write_p99"] == round((1000 / 9000) / (1000 / 3000), 3)
    assert report["ratios"]["toy"]["w"] is None
    assert report["systems"]["leaderless"]["w"]["throughput"] == 8000.0     # each system's median run
    assert report["systems"]["toy"]["w"] == {"skipped": "not here"}
    assert report["throughput_rounds"]["leaderless"]["w"] == [9000.0, 6000.0, 8000.0]


def test_compare_gives_our_reads_over_writes_inside_each_round(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # The "reads at R=2: at least 2x the write throughput", taken like the peer ratios:
    # C over W of the same round, then the median round, with the range beside it.
    speeds = [10000.0, 25000.0, 5000.0, 9000.0, 8000.0, 17000.0]     # (W, C) per round

    def leaderless(config: BenchConfig, workloads: tuple[str, ...], progress: Any, label: str) -> dict[str, Any]:
        return {w: {**_fake_run(speeds.pop(0)), "ops": {}, "errors": 0, "client_cpu": [0.1]} for w in workloads}

    monkeypatch.setattr(compare, "_RUNNERS", {"leaderless": leaderless})
    report = compare.run_compare(BenchConfig(), workloads=("w", "c"), peers=(), rounds=3)
    assert report["reads_over_writes"] == {"throughput": 2.125, "throughput_rounds": [2.5, 1.8, 2.125]}

    report["config"] = {"clients": 4, "inflight": 64, "value_size": 100, "time_s": 10.0}
    compare.print_compare(report)
    assert "leaderless reads/writes: 2.12x (1.80-2.50), C ops/s over W ops/s inside each round" in \
        capsys.readouterr().out

    speeds.append(7000.0)
    assert "reads_over_writes" not in compare.run_compare(BenchConfig(), workloads=("w",), peers=(), rounds=1)


@pytest.mark.cluster
def test_compare_with_rounds_runs_end_to_end_and_prints_the_ratio_range(tmp_path: Path) -> None:
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["bench", "--compare", "--peers", "toy", "--workloads", "w", "--rounds", "2",
                                       "--time", "0.5", "--warmup", "0.2", "--keys", "200", "--clients", "1",
                                       "--inflight", "4", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rounds"] == 2
    assert len(report["throughput_rounds"]["leaderless"]["w"]) == 2 and report["systems"]["toy"]["w"]["throughput"]
    assert report["systems"]["toy"]["w"]["cpu_us_per_op"]["server"] > 0
    assert report["systems"]["leaderless"]["w"]["cpu_us_per_op"]["server"] > 0
    ratio = report["ratios"]["toy"]["w"]
    assert len(ratio["throughput_rounds"]) == 2 and ratio["throughput"] == min(ratio["throughput_rounds"])
    table = compare.compare_table(report)
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(table)
    assert f"({min(ratio['throughput_rounds']):.2f}-{max(ratio['throughput_rounds']):.2f})" in console.export_text()


@pytest.mark.cluster
def test_gray_slows_the_last_node_in_the_middle_phase_only(tmp_path: Path) -> None:
    # At R=W=3 every request waits for n3, so the slowed phase shows the whole delay and the
    # healthy phases before and after it none of it: the node is slowed, then restored.
    out = tmp_path / "gray"
    result = CliRunner().invoke(main, ["bench", "--gray", "--slow-ms", "150", "--r", "3", "--w", "3", "--time", "1",
                                       "--warmup", "0.2", "--keys", "200", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["slow_node"] == "n3" and report["config"]["client_nodes"] == ["n1", "n2"]
    assert report["errors"] == 0
    for op in ("read", "write"):
        assert report["slowed"]["latency_ms"][op]["p50"] >= 150
        assert [phase["latency_ms"][op]["p99"] < 150 for phase in report["healthy_phases"]] == [True, True]
        assert report["p99_ratio"][op] == round(report["slowed"]["latency_ms"][op]["p99"]
                                                / report["healthy"]["latency_ms"][op]["p99"], 3)
    assert Path(report["files"]["json"]).exists() and Path(report["files"]["png"]).stat().st_size > 0


def test_result_tables_printed_to_a_pipe_keep_their_column_headers_whole(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Rich assumes 80 columns when stdout is not a terminal, and the compare table then printed
    # "p50 …" and "ours/pe…" into log files.
    monkeypatch.delenv("COLUMNS", raising=False)

    def run(throughput: float) -> dict[str, Any]:
        return {"throughput": throughput, "ops": {"write": throughput * 10}, "errors": 0, "client_cpu": [0.1, 0.1],
                "server_cpu": {"n1": 0.5}, "cpu_us_per_op": {"server": 100.0},
                "latency_ms": {"write": {"p50": 12.3, "p99": 45.6}}}

    report = {"config": {"clients": 4, "inflight": 64, "value_size": 100, "time_s": 10.0}, "rounds": 3,
              "workloads": ["w"], "systems": {"leaderless": {"w": run(13000.0)}, "etcd": {"w": run(7000.0)}},
              "ratios": {"etcd": {"w": {"throughput": 1.857, "throughput_rounds": [1.74, 1.857, 1.88]}}}}
    compare.print_compare(report)
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "system" in line)
    assert header.split() == ["load", "system", "ops/s", "p50", "ms", "p99", "ms", "err", "cpu", "cl", "cpu", "srv",
                              "srv", "µs/op", "ours/peer"]
    assert "1.86x (1.74-1.88)" in out


def test_cpu_per_op_is_none_for_servers_that_were_not_sampled() -> None:
    assert cpu_per_op({"throughput": 2000.0, "server_cpu": {"n1": 0.5, "n2": 0.3}, "client_cpu": [0.1, 0.1]}) == \
        {"server": 400.0, "client": 100.0}
    assert cpu_per_op({"throughput": 1000.0, "server_cpu": {}, "client_cpu": [0.5]}) == {"server": None, "client": 500.0}
    assert cpu_per_op({"throughput": 0.0, "server_cpu": {"n1": 0.5}, "client_cpu": [0.5]}) == \
        {"server": None, "client": None}


def test_etcd_is_skipped_with_a_message_when_it_is_not_installed(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PeerUnavailable, match="etcd is not on PATH"):
        EtcdCluster(tmp_path)


def test_latencies_counted_at_hdr_precision_and_folded_in_later_give_the_same_percentiles() -> None:
    from bench.histogram import LatencyHistogram
    from bench.worker import _fold, hdr_floor

    rng = random.Random(3)
    values = [int(rng.lognormvariate(8, 1.5)) + 1 for _ in range(20_000)]
    direct, folded = LatencyHistogram(), LatencyHistogram()
    counts: Counter[int] = Counter()
    for value in values:
        direct.record(value)
        counts[hdr_floor(value)] += 1
    _fold(folded, counts)
    wanted = [50.0, 90.0, 99.0, 99.9, 100.0]
    assert folded.count == direct.count == len(values)
    assert folded.percentiles(wanted) == direct.percentiles(wanted)
    assert len(counts) == 0


def test_the_actor_microbenchmark_runs_every_request_to_a_successful_reply() -> None:
    from bench.micro_actors import measure

    for kind in ("put", "get"):
        result = measure(kind, 300, 8)
        assert (result["ok"], result["failed"]) == (300, 0)
        assert result["cpu_us_per_op"] > 0


def test_completions_from_another_thread_all_reach_the_worker_once_and_in_order() -> None:
    completions = Completions()
    assert completions.drain(0.01) == []                       # nothing completed: the wait times out

    def produce() -> None:
        for i in range(3000):
            completions.put(i)
            if i % 7 == 0:
                time.sleep(0.0002)                             # let the worker fall asleep now and then

    producer = threading.Thread(target=produce)
    producer.start()
    got: list[int] = []
    deadline = time.monotonic() + 60
    while len(got) < 3000 and time.monotonic() < deadline:
        got += completions.drain(1.0)
    producer.join()
    assert got == list(range(3000))
