"""The parent of a benchmark: starts the client processes, runs the clock, merges what they measured.

    report = run_leaderless(BenchConfig(workload="w", time_s=10), progress=print_progress)
    report = run_running(BenchConfig(workload="w", data_dir="./leaderless-data"))   # a cluster already up

``run_workers`` is shared by every system measured (leaderless, etcd, pysyncobj): it
spawns one process per spec, waits until all are ready, gives them one common start
time, follows their ticks (for a progress bar), and returns their results. Every
process it started is ended by PID before it returns or raises.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import wait as wait_any
from pathlib import Path
from typing import Any

from .config import BENCH_BUCKET, BenchConfig
from .histogram import LatencyHistogram, summary_ms
from .worker import DRAIN_S, worker_main
from .workload import WORKLOADS

log = logging.getLogger(__name__)

START_DELAY_S = 0.3         # between "go" and the common start time, so every worker starts together
READY_TIMEOUT_S = 600.0     # connecting plus loading the keys
STOP_GRACE_S = 5.0
CURVE_PERCENTILES = (0.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0)

Progress = Callable[[str, float, float, int, int], None]     # phase, elapsed_s, total_s, completed, failed


class BenchError(RuntimeError):
    """A benchmark could not run (a client process failed, a peer would not start...)."""


class CpuSampler:
    """CPU seconds used by some processes (from /proc), between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._t0 = 0.0
        self.busy: dict[str, float] = {}

    @staticmethod
    def cpu_seconds(pid: int) -> float | None:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: s for name, pid in self.pids.items() if (s := self.cpu_seconds(pid)) is not None}

    def stop(self) -> dict[str, float]:
        wall = max(time.monotonic() - self._t0, 1e-9)
        for name, before in self._start.items():
            after = self.cpu_seconds(self.pids[name])
            if after is not None:
                self.busy[name] = round((after - before) / wall, 3)
        return self.busy


def run_workers(specs: list[dict[str, Any]], warmup_s: float, duration_s: float, *,
                progress: Progress | None = None, phase: str = "run",
                on_window: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run one closed-loop client process per spec; returns (ready infos, results), in spec order.

    ``on_window("start")`` / ``on_window("end")`` are called when the measured window
    opens and closes (to sample the servers' CPU, for instance).
    """
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    conns: list[Any] = []
    try:
        for spec in specs:
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(spec, child_end), name=f"bench-client-{spec['index']}",
                               daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            conns.append(parent_end)
        infos = _wait_ready(procs, conns, progress, phase)
        start_wall = time.time() + START_DELAY_S
        for conn in conns:
            conn.send(("go", start_wall, warmup_s, duration_s))
        results = _follow(procs, conns, start_wall, warmup_s, duration_s, progress, phase, on_window)
        for conn in conns:
            _send(conn, ("exit",))
        for proc in procs:
            proc.join(timeout=STOP_GRACE_S)
        return infos, results
    finally:
        for conn in conns:
            _send(conn, ("exit",))
        end_processes(procs)


def end_processes(procs: Iterable[Any]) -> None:
    """End each still running process by its PID: SIGTERM, then SIGKILL after a grace period."""
    procs = list(procs)
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            _kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        if proc.pid is None:
            continue
        proc.join(timeout=max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            _kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=5)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _send(conn: Any, message: tuple) -> None:
    try:
        conn.send(message)
    except (OSError, ValueError):
        pass


def _wait_ready(procs: list[Any], conns: list[Any], progress: Progress | None, phase: str) -> list[dict[str, Any]]:
    infos: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + READY_TIMEOUT_S
    started = time.monotonic()
    while len(infos) < len(conns):
        if time.monotonic() > deadline:
            raise BenchError(f"client processes not ready after {READY_TIMEOUT_S:.0f}s")
        waiting = [c for i, c in enumerate(conns) if i not in infos]
        for conn in wait_any(waiting, timeout=0.2):
            i = conns.index(conn)
            message = _recv(conn, procs[i], i)
            if message[0] == "ready":
                infos[i] = message[1]
        if progress is not None:
            progress(f"{phase}: starting clients", time.monotonic() - started, 0.0, 0, 0)
    return [infos[i] for i in range(len(conns))]


def _recv(conn: Any, proc: Any, index: int) -> tuple:
    try:
        message = conn.recv()
    except (EOFError, OSError):
        proc.join(timeout=1)
        raise BenchError(f"client process {index} exited (code {proc.exitcode}) without a word") from None
    if message[0] == "failed":
        raise BenchError(f"client process {index} failed: {message[1]}")
    return message


def _follow(procs: list[Any], conns: list[Any], start_wall: float, warmup_s: float, duration_s: float,
            progress: Progress | None, phase: str, on_window: Callable[[str], None] | None) -> list[dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    counts = [(0, 0)] * len(conns)
    total = warmup_s + duration_s
    deadline = start_wall + total + DRAIN_S + 30.0
    window = "before"
    while len(results) < len(conns):
        now = time.time()
        if now > deadline:
            raise BenchError("client processes did not finish in time")
        if on_window is not None:
            if window == "before" and now >= start_wall + warmup_s:
                window = "open"
                on_window("start")
            elif window == "open" and now >= start_wall + total:
                window = "closed"
                on_window("end")
        waiting = [c for i, c in enumerate(conns) if i not in results]
        for conn in wait_any(waiting, timeout=0.1):
            i = conns.index(conn)
            message = _recv(conn, procs[i], i)
            if message[0] == "tick":
                counts[i] = (message[1], message[2])
            elif message[0] == "done":
                results[i] = message[1]
        if progress is not None:
            elapsed = min(max(0.0, time.time() - start_wall), total)
            label = f"{phase}: warm-up" if elapsed < warmup_s else f"{phase}: measuring"
            progress(label, elapsed, total, sum(c for c, _ in counts), sum(f for _, f in counts))
    if on_window is not None and window == "open":
        on_window("end")
    return [results[i] for i in range(len(conns))]


def merge_results(results: list[dict[str, Any]], duration_s: float, ops: Iterable[str]) -> dict[str, Any]:
    """One report body from every worker's result: throughput, latency per op, errors, client CPU."""
    hists = {op: LatencyHistogram() for op in ops}
    for result in results:
        for op, blob in result["histograms"].items():
            hist = LatencyHistogram.decode(blob)
            if op in hists:
                hists[op].merge(hist)
            else:
                hists[op] = hist
    counts = {op: sum(r["ops"].get(op, 0) for r in results) for op in hists}
    errors: dict[str, int] = {}
    for result in results:
        for kind, n in result["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    length = max(len(r["per_second"]) for r in results) if results else 0
    per_second = [sum(r["per_second"][i] for r in results if i < len(r["per_second"])) for i in range(length)]
    total_ops = sum(counts.values())
    sources = sorted({r.get("latency_source", "") for r in results})
    return {
        "throughput": round(total_ops / duration_s, 1),
        "ops": counts,
        "latency_ms": {op: summary_ms(h) for op, h in hists.items()},
        "latency_curve_ms": {op: latency_curve(h) for op, h in hists.items() if h.count},
        "histograms": {op: h.encode() for op, h in hists.items()},        # microseconds; LatencyHistogram.decode
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "error_samples": [s for r in results for s in r["error_samples"]][:5],
        "errors_outside_window": sum(r["errors_outside_window"] for r in results),
        "unfinished": sum(r["unfinished"] for r in results),
        "client_cpu": [r["cpu"]["busy"] for r in results],
        "per_second": per_second,
        "latency_source": ", ".join(s for s in sources if s),
        "histogram": next(iter(hists.values())).backend if hists else "",
    }


def cpu_per_op(report: dict[str, Any]) -> dict[str, float | None]:
    """CPU microseconds per operation, summed over the server processes and over the client processes:
    what one request costs the machine, beside what the machine could do in total. ``server`` is None when the servers' CPU was not sampled (pysyncobj's members are its clients)."""
    throughput = report.get("throughput") or 0.0
    if not throughput:
        return {"server": None, "client": None}
    servers = report.get("server_cpu") or {}
    return {"server": round(sum(servers.values()) / throughput * 1e6, 1) if servers else None,
            "client": round(sum(report.get("client_cpu") or ()) / throughput * 1e6, 1)}


def latency_curve(hist: LatencyHistogram) -> list[list[float]]:
    """[percentile, milliseconds] pairs for the percentile plot."""
    return [[p, v / 1000] for p, v in hist.percentiles(CURVE_PERCENTILES).items()]


def machine() -> dict[str, Any]:
    """What the numbers were measured on; ``load_avg`` (1, 5, 15 min) shows other work sharing the CPUs."""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(terse=True),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "revision": revision()}


def revision() -> str | None:
    """The git commit the code was checked out at (read from .git, no git command), if any."""
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:12]
        ref = head[5:]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return None


def client_specs(config: BenchConfig, target: dict[str, Any], *, load: bool) -> list[dict[str, Any]]:
    return [{"index": i, "workers": config.clients, "target": dict(target), "workload": config.workload,
             "distribution": config.distribution, "keys": config.keys, "value_size": config.value_size,
             "inflight": config.inflight, "seed": config.seed, "load": load}
            for i in range(config.clients)]


def run_on_cluster(cluster: Any, config: BenchConfig, *, load: bool, progress: Progress | None = None,
                   phase: str = "leaderless") -> dict[str, Any]:
    """One measured run against a running cluster (a ``LocalCluster`` or a ``RunningCluster``: its
    ``data_dir``, ``pids`` to sample and ``status()``) whose bench bucket exists."""
    target = {"kind": "leaderless", "data_dir": str(cluster.data_dir) if cluster.data_dir else None,
              "seeds": getattr(cluster, "seeds", None), "secret": getattr(cluster, "secret", None),
              "client_nodes": list(config.client_nodes) if config.client_nodes else None,
              "bucket": config.bucket,
              "request_timeout": config.request_timeout}
    before = machine()          # load average with our cluster idle: how busy others keep the machine
    sampler = CpuSampler(cluster.pids)
    counters: dict[str, dict[str, dict[str, int]]] = {}

    def on_window(edge: str) -> None:
        if edge == "start":
            sampler.start()
        else:
            sampler.stop()
        counters[edge] = _node_counters(cluster)

    infos, results = run_workers(client_specs(config, target, load=load), config.warmup_s, config.time_s,
                                 progress=progress, phase=phase, on_window=on_window)
    report: dict[str, Any] = {"system": "leaderless", "workload": config.workload}
    report.update(merge_results(results, config.time_s, WORKLOADS[config.workload].ops))
    report["server_cpu"] = sampler.busy
    report["cpu_us_per_op"] = cpu_per_op(report)
    report["group_commit"] = _group_commit(counters.get("start", {}), counters.get("end", {}))
    report["actor_batches"] = _actor_batches(counters.get("start", {}), counters.get("end", {}))
    report["load"] = _load_summary(infos) if load else None
    report["config"] = config.as_dict()
    report["machine"] = before
    return report


def _node_counters(cluster: Any) -> dict[str, dict[str, int]]:
    try:
        return {node: dict(status.get("counts", {})) for node, status in cluster.status().items()}
    except Exception as exc:            # noqa: BLE001 - the counters are a footnote, not the measurement
        log.warning("could not read the nodes' counters: %s", exc)
        return {}


def _group_commit(start: dict[str, dict[str, int]], end: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Per node, over the measured window: replica writes, LMDB commits, and writes per commit (per fsync)."""
    out: dict[str, Any] = {}
    for node, after in end.items():
        before = start.get(node, {})
        writes = after.get("replica.writes", 0) - before.get("replica.writes", 0)
        commits = after.get("replica.commits", 0) - before.get("replica.commits", 0)
        out[node] = {"writes": writes, "commits": commits,
                     "per_commit": round(writes / commits, 1) if commits else None}
    return out


def _actor_batches(start: dict[str, dict[str, int]], end: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Over the measured window, all nodes together: messages each kind of actor handled per batch it
    was handed (a batch is one inbox message: what one socket read or one sender's flush carried)."""
    out: dict[str, Any] = {}
    for actor in ("coordinator", "replica"):
        messages = batches = 0
        for node, after in end.items():
            before = start.get(node, {})
            messages += after.get(f"{actor}.messages", 0) - before.get(f"{actor}.messages", 0)
            batches += after.get(f"{actor}.batches", 0) - before.get(f"{actor}.batches", 0)
        out[actor] = {"messages": messages, "batches": batches,
                      "per_batch": round(messages / batches, 2) if batches else None}
    return out


def _load_summary(infos: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = max((i["load_s"] for i in infos), default=0.0)
    keys = sum(i["loaded"] for i in infos)
    return {"keys": keys, "seconds": round(seconds, 2), "rate": round(keys / seconds, 1) if seconds else None,
            "errors": sum(i["load_errors"] for i in infos)}


def start_cluster(config: BenchConfig, data_dir: str) -> Any:
    """A fresh ``LocalCluster`` for ``config`` with the bench bucket created (caller stops it)."""
    from actors import LocalCluster
    from actors.config import ClusterConfig

    # Gossip at the interval `leaderless cluster up` uses (LocalCluster's test default is 5x faster).
    cluster = LocalCluster(nodes=config.nodes, n=config.n, r=config.r, w=config.w, data_dir=data_dir,
                           timeout=config.request_timeout or 3.0, gossip_interval=ClusterConfig.gossip_interval)
    cluster.start()
    try:
        if config.bucket_type == "lww":
            client = cluster.client()
            try:
                client.create_bucket(BENCH_BUCKET, "lww")
            finally:
                client.close()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def run_leaderless(config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """A fresh cluster in a temporary directory, one workload run (loading the keys first for A/B/C)."""
    config.validate()
    with tempfile.TemporaryDirectory(prefix="leaderless-bench-") as data_dir:
        cluster = start_cluster(config, data_dir)
        try:
            return run_on_cluster(cluster, config, load=WORKLOADS[config.workload].load_first, progress=progress)
        finally:
            cluster.stop()


def run_running(config: BenchConfig, progress: Progress | None = None) -> dict[str, Any]:
    """One workload run against the cluster already running at ``config.data_dir`` (or reached through
    ``config.seeds`` and ``config.secret``): its nodes are left as they were; the keys go to a bucket of
    the run's own (``config.bucket``, made if absent)."""
    from actors.errors import LeaderlessError

    from .running import RunningCluster

    config.validate()
    assert config.running
    try:
        cluster = RunningCluster(config.data_dir, seeds=config.seeds, secret=config.secret)
    except LeaderlessError as exc:
        raise BenchError(f"cannot reach the cluster at {config.where}: {exc}") from exc
    try:
        try:
            cluster.client.create_bucket(config.bucket, config.bucket_type, n=config.n, r=config.r, w=config.w)
        except LeaderlessError as exc:
            raise BenchError(f"cannot make the bench bucket {config.bucket!r} on the cluster at "
                             f"{config.where}: {exc}") from exc
        report = run_on_cluster(cluster, config, load=WORKLOADS[config.workload].load_first, progress=progress)
        report["servers_sampled"] = sorted(cluster.pids)
        return report
    finally:
        cluster.close()
