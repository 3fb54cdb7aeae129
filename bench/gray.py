"""Gray failure: how much one slow node costs the tail, for reads and for writes, in one run.

    python -m bench.gray [--slow-ms 50] [--workload a] [--time 10] [--json]
    leaderless bench --gray ...                        # the same

One fresh cluster, its keys loaded, runs the workload (default A: half reads, half
writes) three times: healthy; with every peer message to and from the last node
delayed by ``--slow-ms`` (``cluster.slow``); healthy again. The result, per operation,
is p99 slowed / p99 healthy (the two healthy phases' histograms merged, so drift on a
shared machine weighs on both sides). The goal is at most 1.3: reads answer at the
fastest R and writes at the fastest W, so one slow replica of N=3 should hardly show.

The clients send to the other nodes (``--client-nodes`` overrides): a request whose
coordinator is the slow node itself waits for its own peer messages, which is not the
case this measures. The load is kept below saturation (2 clients x 8 in flight by
default), since at saturation p99 is queueing, not the slow replica.
"""

from __future__ import annotations

import tempfile
from typing import Any

from actors.console import result_console

from .config import BenchConfig, OptionError
from .histogram import LatencyHistogram, summary_ms
from .report import ms, stamp
from .runner import Progress, latency_curve, machine, run_on_cluster, start_cluster
from .workload import WORKLOADS

GOAL = 1.3


def slow_node(config: BenchConfig) -> str:
    return f"n{config.nodes}"


def check_gray(config: BenchConfig, slow_ms: float) -> None:
    if config.nodes < 2:
        raise OptionError("nodes", "--gray needs at least 2 nodes (one to slow, one to talk to)")
    if not 0 < slow_ms <= 10_000:
        raise OptionError("slow-ms", f"--slow-ms {slow_ms} must be more than 0 and at most 10000")
    if config.client_nodes and list(config.client_nodes) == [slow_node(config)]:
        raise OptionError("client-nodes", f"the clients need a node other than the slowed {slow_node(config)}")


def run_gray(config: BenchConfig, slow_ms: float = 50.0, progress: Progress | None = None) -> dict[str, Any]:
    """Healthy, slowed, healthy again on one cluster; returns the phases and the p99 ratios.

    The healthy p99 is that of both healthy phases together, so drift during the run
    (a machine shared with other work) weighs on both sides of the ratio alike.
    """
    slow = slow_node(config)
    if config.client_nodes is None:
        config = config.replace(client_nodes=tuple(f"n{i + 1}" for i in range(config.nodes - 1)))
    config.validate()
    check_gray(config, slow_ms)
    with tempfile.TemporaryDirectory(prefix="leaderless-gray-") as data_dir:
        cluster = start_cluster(config, data_dir)
        try:
            first = run_on_cluster(cluster, config, load=WORKLOADS[config.workload].load_first,
                                   progress=progress, phase="1/3 healthy")
            cluster.slow(slow, slow_ms)
            slowed = run_on_cluster(cluster, config, load=False, progress=progress,
                                    phase=f"2/3 {slow} +{slow_ms:g}ms")
            cluster.slow(slow, 0)
            again = run_on_cluster(cluster, config, load=False, progress=progress, phase="3/3 healthy")
        finally:
            cluster.stop()
    healthy = _combine(first, again, config)
    ratios: dict[str, float | None] = {}
    for op in WORKLOADS[config.workload].ops:
        before = healthy["latency_ms"].get(op, {}).get("p99")
        after = slowed["latency_ms"].get(op, {}).get("p99")
        ratios[op] = round(after / before, 3) if before and after else None
    return {"benchmark": "gray", "slow_node": slow, "slow_ms": slow_ms, "p99_ratio": ratios, "goal": GOAL,
            "healthy": healthy, "slowed": slowed, "healthy_phases": [first, again],
            "errors": first["errors"] + slowed["errors"] + again["errors"], "config": config.as_dict(),
            "machine": machine()}


def _combine(first: dict[str, Any], again: dict[str, Any], config: BenchConfig) -> dict[str, Any]:
    """Both healthy phases as one: histograms merged, ops and errors added, the first one's timeline."""
    out: dict[str, Any] = {"ops": {}, "latency_ms": {}, "latency_curve_ms": {}, "histograms": {},
                           "per_second": first["per_second"], "errors": first["errors"] + again["errors"]}
    for op in first["histograms"]:
        hist = LatencyHistogram.decode(first["histograms"][op])
        hist.merge(LatencyHistogram.decode(again["histograms"][op]))
        out["ops"][op] = (first["ops"].get(op, 0) + again["ops"].get(op, 0)) / 2      # per phase, as the others
        out["latency_ms"][op] = summary_ms(hist)
        out["latency_curve_ms"][op] = latency_curve(hist)
        out["histograms"][op] = hist.encode()
    out["throughput"] = round((first["throughput"] + again["throughput"]) / 2, 1)
    return out


def gray_table(report: dict[str, Any]) -> Any:
    from rich import box
    from rich.table import Table

    config = report["config"]
    table = Table(title=f"gray failure: {report['slow_node']} slowed by {report['slow_ms']:g} ms; workload "
                        f"{config['workload'].upper()}, clients on {','.join(config['client_nodes'])}, "
                        f"{config['clients']}x{config['inflight']} in flight, {config['time_s']:g}s per phase",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True)
    for column in ("op", "p50 ok", "p99 ok", "p50 slow", "p99 slow", "p99 slow/ok", "ops/s ok", "ops/s slow"):
        table.add_column(column, justify="left" if column == "op" else "right", no_wrap=True)
    window = config["time_s"]
    for op, ratio in report["p99_ratio"].items():
        h, s = report["healthy"]["latency_ms"][op], report["slowed"]["latency_ms"][op]
        verdict = "" if ratio is None else (" ok" if ratio <= report["goal"] else f" > {report['goal']}")
        table.add_row(op, ms(h["p50"]), ms(h["p99"]), ms(s["p50"]), ms(s["p99"]),
                      f"{ratio:.2f}{verdict}" if ratio is not None else "-",
                      f"{report['healthy']['ops'].get(op, 0) / window:,.0f}",
                      f"{report['slowed']['ops'].get(op, 0) / window:,.0f}")
    return table


def print_gray(report: dict[str, Any]) -> None:
    console = result_console()
    console.print(gray_table(report))
    p99 = [", ".join(f"{op} {lat['p99']:.1f}" for op, lat in phase["latency_ms"].items())
           for phase in report["healthy_phases"]]
    console.print(f"ok = all nodes healthy (two phases, before and after the slow one, merged; p99 ms: {p99[0]} | "
                  f"{p99[1]}); slow = every peer message to and from {report['slow_node']} delayed "
                  f"{report['slow_ms']:g} ms. Goal: p99 slow/ok <= {report['goal']}.", markup=False, soft_wrap=True)
    console.print(f"errors: healthy {report['healthy']['errors']} (both phases), slowed {report['slowed']['errors']}",
                  markup=False, soft_wrap=True)
    files = report.get("files", {})
    console.print(f"saved {files.get('json')}" + (f" and {files['png']}" if "png" in files else ""),
                  markup=False, soft_wrap=True)


def plot_gray(report: dict[str, Any], path: Any) -> None:
    import math

    from .report import _curve_points, _percentile_axis, _pyplot

    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5))
    config = report["config"]
    seconds = max(1, math.ceil(config["warmup_s"] + config["time_s"]))
    timelines = (("1 healthy", report["healthy_phases"][0], "-"), ("2 slowed", report["slowed"], "--"),
                 ("3 healthy", report["healthy_phases"][1], ":"))
    for label, phase, style in timelines:
        series = phase["per_second"][:seconds]
        top.stairs(series, range(len(series) + 1), baseline=None, linestyle=style, label=label)
    for label, phase, style in (("healthy", report["healthy"], "-"), ("slowed", report["slowed"], "--")):
        for op, curve in phase.get("latency_curve_ms", {}).items():
            xs, ys = _curve_points(curve)
            bottom.plot(xs, ys, linestyle=style, marker="o", markersize=3, label=f"{op} {label}")
    top.axvspan(0, config["warmup_s"], color="0.9", zorder=0)
    top.set_xlabel("seconds")
    top.set_ylabel("ops/s")
    top.set_ylim(bottom=0)
    top.legend()
    top.set_title(f"{report['slow_node']} slowed by {report['slow_ms']:g} ms: p99 ratio "
                  + ", ".join(f"{op} {r:.2f}" for op, r in report["p99_ratio"].items() if r is not None))
    _percentile_axis(bottom)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency ms")
    bottom.grid(True, which="both", alpha=0.3)
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_gray(report: dict[str, Any], out_dir: str) -> dict[str, str]:
    from .report import save

    return save(report, out_dir, f"gray-{stamp()}", plot=plot_gray)


def main() -> None:
    from .command import main as command_main

    command_main.main(default_map={"gray": True}, prog_name="python -m bench.gray")


if __name__ == "__main__":
    main()
