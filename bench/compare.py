"""Peers side by side, in one run: leaderless against etcd, pysyncobj and the toy ceiling.

    python -m bench.compare [--workloads w,c] [--peers etcd,pysyncobj,toy] [--time 10] [--rounds 3] [--json]
    leaderless bench --compare ...                     # the same

Each system gets the same workloads, keys, value size, client processes and requests in
flight, one after the other on this machine; the table gives absolute numbers and the
ratios ours / peer, which drift much less between runs than the absolute numbers do on
a shared machine. A peer that is not installed is skipped with a message.

Even the ratios move when the machine's speed changes between one system's run and the
next (by a third within minutes here). ``--rounds K`` runs every system K times, in
alternating order (ABBA, so a steady drift favours no one), takes each ratio inside its
round and reports the median round's ratio with the lowest and highest beside it.

- **etcd** (3 members from the Debian package, started here on free loopback ports):
  driven through its HTTP/JSON gateway (``bench.etcd_client``): ``inflight`` keep-alive
  connections per client process, one request outstanding on each, all served by one
  selector loop, so etcd's client costs about what ours does per request. (``etcdctl``,
  one process per request, managed 47 puts/s here with 8 running at once; a blocking
  ``http.client`` connection per thread cost ten times our client's CPU per request and
  held etcd to under half of what it does now.)
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

from actors.console import result_console

from .config import BenchConfig, OptionError
from .etcd import EtcdCluster, PeerUnavailable, free_ports
from .report import ms, stamp
from .runner import (CpuSampler, Progress, client_specs, cpu_per_op, machine, merge_results, run_on_cluster,
                     run_workers, start_cluster)
from .workload import WORKLOADS

PEERS = ("etcd", "pysyncobj", "toy")


def check_workloads(text: str) -> tuple[str, ...]:
    names = tuple(w.strip().lower() for w in text.split(",") if w.strip())
    unknown = [w for w in names if w not in WORKLOADS]
    if unknown or not names:
        raise OptionError("workloads", f"unknown workloads {', '.join(unknown) or '(none)'}: use "
                                       f"{', '.join(WORKLOADS)}")
    serial = [w for w in names if WORKLOADS[w].write_op != "write"]
    if serial:
        raise OptionError("workloads", f"{', '.join(serial)} has no counterpart in the peers: run it with "
                                       "`leaderless bench --workload cas`, beside `--workload w`")
    return names


def check_peers(text: str) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip() and p.strip().lower() != "none")
    unknown = [p for p in names if p not in PEERS]
    if unknown:
        raise OptionError("peers", f"unknown peers {', '.join(unknown)}: use {', '.join(PEERS)} (or none)")
    return names


def check_rounds(rounds: int) -> int:
    if not 1 <= rounds <= 20:
        raise OptionError("rounds", f"--rounds {rounds} must lie between 1 and 20")
    return rounds


def run_compare(config: BenchConfig, workloads: tuple[str, ...] = ("w", "c"), peers: tuple[str, ...] = PEERS,
                progress: Progress | None = None, say: Callable[[str], None] = print,
                rounds: int = 1) -> dict[str, Any]:
    """Every system, every workload, ``rounds`` times; returns ``{"systems": {system: {workload: report |
    {"skipped": why}}}, "ratios": {peer: {workload: {"throughput": ours/peer, "write_p99": ..., ...}}}, ...}``.

    With several rounds, every round runs every system (in reverse order every other round, so
    a machine that speeds up or slows down during the run favours no one); a ratio is taken
    inside each round and the report gives the median round's ratio with every round's in
    ``throughput_rounds``, and for each system the run of median throughput. With both W and C,
    ``reads_over_writes`` is our C throughput over our W throughput, taken inside each round the same way.
    """
    order = ("leaderless", *peers)
    skipped: dict[str, str] = {}
    runs: list[dict[str, dict[str, Any]]] = []
    for number in range(rounds):
        systems: dict[str, dict[str, Any]] = {}
        for system in (order if number % 2 == 0 else tuple(reversed(order))):
            if system in skipped:
                systems[system] = {w: {"skipped": skipped[system]} for w in workloads}
                continue
            label = system if rounds == 1 else f"{system} (round {number + 1}/{rounds})"
            try:
                systems[system] = _RUNNERS[system](config, workloads, progress, label)
            except PeerUnavailable as exc:
                say(f"skipping {system}: {exc}")
                skipped[system] = str(exc)
                systems[system] = {w: {"skipped": str(exc)} for w in workloads}
        runs.append({system: systems[system] for system in order})
    ratios: dict[str, dict[str, Any]] = {}
    for peer in peers:
        ratios[peer] = {w: _median_ratio([_ratio(run["leaderless"][w], run[peer][w]) for run in runs])
                        for w in workloads}
    report: dict[str, Any] = {"benchmark": "compare", "workloads": list(workloads), "peers": list(peers),
                              "rounds": rounds, "systems": {system: {w: _median_run([run[system][w] for run in runs])
                                                                     for w in workloads} for system in order},
                              "ratios": ratios, "config": config.as_dict(), "machine": machine()}
    if rounds > 1:
        report["throughput_rounds"] = {system: {w: [run[system][w].get("throughput") for run in runs]
                                                for w in workloads} for system in order}
    if "w" in workloads and "c" in workloads:
        report["reads_over_writes"] = _median_ratio([_reads_over_writes(run["leaderless"]) for run in runs])
    return report


def _reads_over_writes(runs: dict[str, dict[str, Any]]) -> dict[str, float] | None:
    """Our C throughput over our W throughput in one round (reads at R against writes at W)."""
    reads, writes = runs["c"].get("throughput"), runs["w"].get("throughput")
    return {"throughput": round(reads / writes, 3)} if reads and writes else None


def _ratio(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float] | None:
    """ours / peer for throughput and each p99, from one round; None when the peer did not run it."""
    if not theirs.get("throughput") or not ours.get("throughput"):
        return None
    ratio = {"throughput": round(ours["throughput"] / theirs["throughput"], 3)}
    for op in ("write", "read"):
        a = ours["latency_ms"].get(op, {}).get("p99")
        b = theirs["latency_ms"].get(op, {}).get("p99")
        if a and b:
            ratio[f"{op}_p99"] = round(a / b, 3)
    return ratio


def _median_ratio(rounds: list[dict[str, float] | None]) -> dict[str, Any] | None:
    """The ratio of the round whose throughput ratio is the median (the lower one of an even count),
    with every round's throughput ratio beside it."""
    taken = [r for r in rounds if r is not None]
    if not taken:
        return None
    chosen: dict[str, Any] = dict(sorted(taken, key=lambda r: r["throughput"])[(len(taken) - 1) // 2])
    if len(rounds) > 1:
        chosen["throughput_rounds"] = [r["throughput"] for r in taken]
    return chosen


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    measured = [run for run in runs if "throughput" in run]
    if not measured:
        return runs[0]
    return sorted(measured, key=lambda run: run["throughput"])[(len(measured) - 1) // 2]


def _leaderless(config: BenchConfig, workloads: tuple[str, ...], progress: Progress | None,
                label: str = "leaderless") -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="leaderless-compare-") as data_dir:
        cluster = start_cluster(config, data_dir)
        try:
            loaded = False
            for w in workloads:
                load = WORKLOADS[w].load_first and not loaded
                out[w] = run_on_cluster(cluster, config.replace(workload=w), load=load, progress=progress,
                                        phase=f"{label} {w.upper()}")
                loaded = loaded or load
        finally:
            cluster.stop()
    return out


def _peer_run(system: str, config: BenchConfig, specs: list[dict[str, Any]], pids: dict[str, int],
              progress: Progress | None, label: str) -> dict[str, Any]:
    sampler = CpuSampler(pids)
    infos, results = run_workers(specs, config.warmup_s, config.time_s, progress=progress,
                                 phase=f"{label} {config.workload.upper()}",
                                 on_window=lambda edge: _sample(sampler, edge))
    report: dict[str, Any] = {"system": system, "workload": config.workload}
    report.update(merge_results(results, config.time_s, WORKLOADS[config.workload].ops))
    report["server_cpu"] = sampler.busy
    report["cpu_us_per_op"] = cpu_per_op(report)
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


def _etcd(config: BenchConfig, workloads: tuple[str, ...], progress: Progress | None,
          label: str = "etcd") -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="leaderless-etcd-") as tmp, EtcdCluster(tmp) as etcd:
        loaded = False
        for w in workloads:
            cfg = config.replace(workload=w)
            load = WORKLOADS[w].load_first and not loaded
            target = {"kind": "etcd", "endpoints": etcd.endpoints, "threads": cfg.inflight}   # connections
            specs = client_specs(cfg, target, load=load)
            for spec in specs:
                spec["target"]["offset"] = spec["index"]
            out[w] = _peer_run("etcd", cfg, specs, etcd.pids, progress, label)
            out[w]["client"] = "HTTP/JSON gateway, keep-alive connections on one selector loop per client process"
            loaded = loaded or load
    return out


def _pysyncobj(config: BenchConfig, workloads: tuple[str, ...], progress: Progress | None,
               label: str = "pysyncobj") -> dict[str, Any]:
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
            out[w] = _peer_run("pysyncobj", cfg, specs, {}, progress, label)
            out[w]["client"] = "in the members (ReplDict.set with a callback; get is a local read)"
    return out


def _toy(config: BenchConfig, workloads: tuple[str, ...], progress: Progress | None,
         label: str = "toy") -> dict[str, Any]:
    from .toy import run_toy

    out: dict[str, Any] = {}
    for w in workloads:
        if WORKLOADS[w].read_fraction > 0:
            out[w] = {"skipped": "the toy ceiling only writes"}
            continue
        if progress is not None:
            progress(f"{label} {w.upper()}", 0.0, 0.0, 0, 0)
        out[w] = run_toy(time_s=config.time_s, warmup_s=config.warmup_s, window=config.clients * config.inflight,
                         value_size=config.value_size, keys=config.keys, seed=config.seed)
    return out


_RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {"leaderless": _leaderless, "etcd": _etcd,
                                                      "pysyncobj": _pysyncobj, "toy": _toy}


# --- output --------------------------------------------------------------------------------------

def compare_table(report: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    config = report["config"]
    table = Table(title=f"side by side: {config['clients']} clients x {config['inflight']} in flight, "
                        f"{config['value_size']} B values, {config['time_s']:g}s per run"
                        + (f", median of {report['rounds']} rounds" if report.get("rounds", 1) > 1 else ""),
                  box=box.SIMPLE_HEAD,
                  padding=(0, 1), pad_edge=False, collapse_padding=True)
    for column in ("load", "system", "ops/s", "p50 ms", "p99 ms", "err", "cpu cl", "cpu srv", "srv µs/op",
                   "ours/peer"):
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
                              else "", _per_op(run) if first else "", _ratio_text(ratio) if first and ratio else "")
    return table


def _per_op(run: dict[str, Any]) -> str:
    server = (run.get("cpu_us_per_op") or {}).get("server")
    return "" if server is None else f"{server:,.0f}"


def _ratio_text(ratio: dict[str, Any]) -> str:
    text = f"{ratio['throughput']:.2f}x"
    rounds = ratio.get("throughput_rounds")
    if rounds:
        text += f" ({min(rounds):.2f}-{max(rounds):.2f})"
    return text


def print_compare(report: dict[str, Any]) -> None:
    console = result_console()
    console.print(compare_table(report))
    for system, runs in report["systems"].items():
        for w, run in runs.items():
            if "skipped" in run:
                console.print(f"{system} {w.upper()} skipped: {run['skipped']}", markup=False,
                              soft_wrap=True)
    rounds = report.get("rounds", 1)
    reads = report.get("reads_over_writes")
    if reads:
        console.print(f"leaderless reads/writes: {_ratio_text(reads)}, C ops/s over W ops/s"
                      + (" inside each round" if rounds > 1 else ""), markup=False, soft_wrap=True)
    console.print("ours/peer: leaderless ops/s over the peer's under the same load"
                  + (f", taken inside each of {rounds} rounds: the median, (lowest-highest); each system's row is "
                     "its median run" if rounds > 1 else "") + ". cpu cl / cpu srv: CPU seconds "
                  "per second summed over the client / server processes (1.0 = one core); srv µs/op: server CPU per "
                  "operation, what one request costs the machine. pysyncobj's clients are "
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
        for bar, value, name in zip(bars, values, names):
            ratio = report["ratios"].get(name, {}).get(w) if name != "leaderless" else None
            label = f"{value:,.0f}" + (f"\n{ratio['throughput']:.2f}x" if ratio else "")
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=8)
        ax.set_title(f"workload {w.upper()} ({WORKLOADS[w].description})")
        ax.set_ylabel("ops/s")
    rounds = report.get("rounds", 1)
    fig.suptitle("leaderless and peers, " + (f"median of {rounds} rounds" if rounds > 1 else "one run")
                 + " (label: ops/s, ours/peer)")
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
