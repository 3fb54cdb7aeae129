"""Peers side by side, in one run: leaderless against etcd, pysyncobj and the toy ceiling.

    python -m bench.compare [--workloads w,c] [--peers etcd,pysyncobj,toy] [--time 10] [--json]
    leaderless bench --compare ...                     # the same

Each system gets the same workloads, keys, value size, client processes and requests in
flight, one after the other on this machine; the table gives absolute numbers and the
ratios ours / peer, which drift much less between runs than the absolute numbers do on
a shared machine. A peer that is not installed is skipped with a message.

- **etcd** (3 members from the Debian package, started here on free loopback ports):
  driven through its HTTP/JSON gateway with one keep-alive ``http.client`` connection
  per client thread, ``inflight`` threads in each client process. (``etcdctl``, one
  process per request, managed 47 puts/s here with 8 running at once; the gateway
  some thousands: it is the faster way in from Python.)
  Reads are linearizable (etcd's default). Writes are fsynced before the answer.
- **pysyncobj** (3 processes, each a Raft member holding a ``ReplDict``): the members
  are the clients (pysyncobj has no client protocol), so their busy share includes
  the store's work. Writes commit through the leader; reads are local dict lookups
  (no quorum); its journal is not fsynced before an answer.
- **toy**: ``bench.toy``, the write-only ceiling with as many writes in flight as all
  our clients together.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from typing import Any

from .config import BenchConfig, OptionError
from .etcd import EtcdCluster, PeerUnavailable, free_ports
from .report import ms, stamp
from .runner import (CpuSampler, Progress, client_specs, machine, merge_results, run_on_cluster, run_workers,
                     start_cluster)
from .workload import WORKLOADS

PEERS = ("etcd", "pysyncobj", "toy")


def check_workloads(text: str) -> tuple[str, ...]:
    names = tuple(w.strip().lower() for w in text.split(",") if w.strip())
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown or not names:
        raise OptionError("workloads", f"unknown workloads {', '.join(unknown) or '(none)'}: use "
                                       f"{', '.join(WORKLOADS)}")
    return names


def check_peers(text: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip() and p.strip().lower() != "none")
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise OptionError("peers", f"unknown peers {', '.join(unknown)}: use {', '.join(PEERS)} (or none)")
    return names


def run_compare(config: BenchConfig, workloads: tuple[str, ...] = ("w", "c"), peers: tuple[str, ...] = PEERS,
                progress: Progress | None = None, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every system, every workload; returns ``{"systems": {system: {workload: report | {"skipped": why}}},
    "ratios": {peer: {workload: {"throughput": ours/peer, "p99": ours/peer}}}, ...}``."""
    systems: dict[str, dict[str, Any]] = {"leaderless": _leaderless(config, workloads, progress)}
    for peer in peers:
        try:
            if peer == "etcd":
                systems[peer] = _etcd(config, workloads, progress)
            elif peer == "pysyncobj":
                systems[peer] = _pysyncobj(config, workloads, progress)
            elif peer == "toy":
                systems[peer] = _toy(config, workloads, progress)
        except PeerUnavailable as exc:
            say(f"skipping {peer}: {exc}")
            systems[peer] = {w: {"skipped": str(exc)} for w in workloads}
    ratios: dict[str, dict[str, Any]] = {}
    ours = systems["leaderless"]
    for peer in peers:
        ratios[peer] = {}
        for w in workloads:
            theirs = systems[peer].get(w, {})
            if "throughput" not in theirs or not theirs["throughput"]:
                ratios[peer][w] = None
                continue
            ratio: dict[str, float | None] = {"throughput": round(ours[w]["throughput"] / theirs["throughput"], 3)}
            for op in ("write", "read"):
                a = ours[w]["latency_ms"].get(op, {}).get("p99")
                b = theirs["latency_ms"].get(op, {}).get("p99")
                if a and b:
                    ratio[f"{op}_p99"] = round(a / b, 3)
            ratios[peer][w] = ratio
    return {"benchmark": "compare", "workloads": list(workloads), "peers": list(peers), "systems": systems,
            "ratios": ratios, "config": config.as_dict(), "machine": machine()}


def _leaderless(config: BenchConfig, workloads: tuple[str, ...], progress: Progress | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="leaderless-compare-") as data_dir:
        cluster = start_cluster(config, data_dir)
        try:
            loaded = False
            for w in workloads:
                load = WORKLOADS[w].load_first and not loaded
                out[w] = run_on_cluster(cluster, config.replace(workload=w), load=load, progress=progress,
                                        phase=f"leaderless {w.upper()}")
                loaded = loaded or load
        finally:
            cluster.stop()
    return out


def _peer_run(system: str, config: BenchConfig, specs: list[dict[str, Any]], pids: dict[str, int],
              progress: Progress | None) -> dict[str, Any]:
    sampler = CpuSampler(pids)
    infos, results = run_workers(specs, config.warmup_s, config.time_s, progress=progress,
                                 phase=f"{system} {config.workload.upper()}",
                                 on_window=lambda edge: _sample(sampler, edge))
    report: dict[str, Any] = {"system": system, "workload": config.workload}
    report.update(merge_results(results, config.time_s, WORKLOADS[config.workload].ops))
    report["server_cpu"] = sampler.busy
    loaded = [i for i in infos if i["loaded"]]
    if loaded:
        report["load"] = {"keys": sum(i["loaded"] for i in loaded),
                          "seconds": round(max(i["load_s"] for i in loaded), 2),
                          "errors": sum(i["load_errors"] for i in loaded)}
    report["config"] = config.as_dict()
    return report


def _sample(sampler: CpuSampler, edge: str) -> None:
    if edge == "start":
        sampler.start()
    else:
        sampler.stop()


def _etcd(config: BenchConfig, workloads: tuple[str, ...], progress: Progress | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="leaderless-etcd-") as tmp, EtcdCluster(tmp) as etcd:
        loaded = False
        for w in workloads:
            cfg = config.replace(workload=w)
            load = WORKLOADS[w].load_first and not loaded
            target = {"kind": "etcd", "endpoints": etcd.endpoints, "threads": cfg.inflight}
            specs = client_specs(cfg, target, load=load)
            for spec in specs:
                spec["target"]["offset"] = spec["index"]
            out[w] = _peer_run("etcd", cfg, specs, etcd.pids, progress)
            out[w]["client"] = "HTTP/JSON gateway, http.client keep-alive, one connection per thread"
            loaded = loaded or load
    return out


def _pysyncobj(config: BenchConfig, workloads: tuple[str, ...], progress: Progress | None) -> dict[str, Any]:
    if importlib.util.find_spec("pysyncobj") is None:
        raise PeerUnavailable("pysyncobj is not installed (pip install leaderless[bench])")
    out: dict[str, Any] = {}
    members = 3
    per_member = max(1, config.clients * config.inflight // members)
    for w in workloads:
        cfg = config.replace(workload=w, clients=members, inflight=per_member)
        with tempfile.TemporaryDirectory(prefix="leaderless-syncobj-") as tmp:
            addresses = [f"127.0.0.1:{p}" for p in free_ports(members)]
            specs = client_specs(cfg, {"kind": "pysyncobj"}, load=WORKLOADS[w].load_first)
            for spec in specs:
                i = spec["index"]
                spec["target"] = {"kind": "pysyncobj", "self": addresses[i],
                                  "partners": [a for a in addresses if a != addresses[i]],
                                  "journal": f"{tmp}/journal-{i}"}
            out[w] = _peer_run("pysyncobj", cfg, specs, {}, progress)
            out[w]["client"] = "in the members (ReplDict.set with a callback; get is a local read)"
    return out


def _toy(config: BenchConfig, workloads: tuple[str, ...], progress: Progress | None) -> dict[str, Any]:
    from .toy import run_toy

    out: dict[str, Any] = {}
    for w in workloads:
        if WORKLOADS[w].read_fraction > 0:
            out[w] = {"skipped": "the toy ceiling only writes"}
            continue
        if progress is not None:
            progress(f"toy {w.upper()}", 0.0, 0.0, 0, 0)
        out[w] = run_toy(time_s=config.time_s, warmup_s=config.warmup_s, window=config.clients * config.inflight,
                         value_size=config.value_size, keys=config.keys, seed=config.seed)
    return out


# --- output --------------------------------------------------------------------------------------

def compare_table(report: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    config = report["config"]
    table = Table(title=f"side by side: {config['clients']} clients x {config['inflight']} in flight, "
                        f"{config['value_size']} B values, {config['time_s']:g}s per run", box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False, collapse_padding=True)
    for column in ("load", "system", "ops/s", "p50 ms", "p99 ms", "err", "cpu cl", "cpu srv", "ours/peer"):
        table.add_column(column, justify="left" if column in ("load", "system") else "right", no_wrap=True)
    for w in report["workloads"]:
        for system, runs in report["systems"].items():
            run = runs.get(w, {})
            if "skipped" in run:
                table.add_row(w.upper(), system, "", "", "", "", "", "", "skipped", style="dim")
                continue
            ratio = report["ratios"].get(system, {}).get(w) if system != "leaderless" else None
            window = run.get("config", {}).get("time_s") or config["time_s"]
            for i, (op, lat) in enumerate(run["latency_ms"].items()):
                first = i == 0
                table.add_row(f"{w.upper()} {op}", system if first else "",
                              f"{run['ops'].get(op, 0) / window:,.0f}", ms(lat.get("p50")), ms(lat.get("p99")),
                              str(run["errors"]) if first else "",
                              f"{sum(run['client_cpu']):.2f}" if first else "",
                              f"{sum(run.get('server_cpu', {}).values()):.2f}" if first and run.get("server_cpu")
                              else "", f"{ratio['throughput']:.2f}x" if first and ratio else "")
    return table


def print_compare(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    console.print(compare_table(report))
    for system, runs in report["systems"].items():
        for w, run in runs.items():
            if "skipped" in run:
                console.print(f"{system} {w.upper()} skipped: {run['skipped']}", markup=False,
                              soft_wrap=True)
    console.print("ours/peer: leaderless ops/s over the peer's under the same load. cpu cl / cpu srv: CPU seconds "
                  "per second summed over the client / server processes (1.0 = one core). pysyncobj's clients are "
                  "its members, and its reads are local (no quorum).", markup=False, soft_wrap=True)
    files = report.get("files", {})
    console.print(f"saved {files.get('json')}" + (f" and {files['png']}" if "png" in files else ""),
                  markup=False, soft_wrap=True)


def plot_compare(report: dict[str, Any], path: Any) -> None:
    from .report import _pyplot

    plt = _pyplot()
    workloads = report["workloads"]
    systems = list(report["systems"])
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.5 * len(workloads), 4.5), squeeze=False)
    for ax, w in zip(axes[0], workloads):
        names, values = [], []
        for system in systems:
            run = report["systems"][system].get(w, {})
            if "throughput" in run:
                names.append(system)
                values.append(run["throughput"])
        bars = ax.bar(names, values, color=["tab:blue" if n == "leaderless" else "tab:gray" for n in names])
        ours = report["systems"]["leaderless"][w]["throughput"]
        for bar, value, name in zip(bars, values, names):
            label = f"{value:,.0f}" + ("" if name == "leaderless" else f"\n{ours / value:.2f}x" if value else "")
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
        ax.set_title(f"workload {w.upper()} ({WORKLOADS[w].description})")
        ax.set_ylabel("ops/s")
    fig.suptitle("leaderless and peers, one run (label: ops/s, ours/peer)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_compare(report: dict[str, Any], out_dir: str) -> dict[str, str]:
    from .report import save

    return save(report, out_dir, f"compare-{stamp()}", plot=plot_compare)


def main() -> None:
    from .command import main as command_main

    command_main.main(default_map={"compare": True}, prog_name="python -m bench.compare")


if __name__ == "__main__":
    main()
