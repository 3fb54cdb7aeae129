"""What a run shows: a progress bar while it runs, a summary table, the JSON and a PNG plot on disk."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.console import result_console

PERCENTILE_COLUMNS = (("p50", "p50"), ("p95", "p95"), ("p99", "p99"), ("p999", "p99.9"))


class ProgressBar:
    """A rich progress bar on stderr, fed by the runner's ``progress`` callback."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.fields[rate]}"),
                                  TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                                  disable=not enabled)
        self._task: Any = None
        self._last: tuple[float, int] | None = None
        self._rate = 0.0

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        self._task = self._progress.add_task("starting", total=1.0, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def __call__(self, label: str, elapsed: float, total: float, completed: int, failed: int) -> None:
        now = time.monotonic()
        if self._last is None or completed < self._last[1]:
            self._last = (now, completed)
        elif now - self._last[0] >= 1.0:
            self._rate = (completed - self._last[1]) / (now - self._last[0])
            self._last = (now, completed)
        rate = f"{self._rate:>9,.0f} ops/s" + (f"  {failed} errors" if failed else "") if completed else ""
        self._progress.update(self._task, description=label, completed=elapsed if total else 0.0,
                              total=total or 1.0, rate=rate)


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.3f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def summary_table(report: dict[str, Any], title: str | None = None) -> Table:
    config = report["config"]
    table = Table(title=title or (f"{report['system']}: workload {config['workload'].upper()} "
                                  f"({config['workload_mix']}), {config['nodes']} nodes, N={config['n']} "
                                  f"R={config['r']} W={config['w']}, {config['clients']}x{config['inflight']} "
                                  f"in flight, {config['time_s']:g}s"))
    table.add_column("op")
    table.add_column("ops/s", justify="right")
    for _, label in PERCENTILE_COLUMNS:
        table.add_column(f"{label} ms", justify="right")
    table.add_column("errors", justify="right")
    window = config["time_s"]
    for op, lat in report["latency_ms"].items():
        errors = sum(n for kind, n in report["error_kinds"].items() if kind.startswith(f"{op}:"))
        table.add_row(op, f"{report['ops'].get(op, 0) / window:,.0f}", *(ms(lat[k]) for k, _ in PERCENTILE_COLUMNS),
                      str(errors))
    table.add_row("total", f"{report['throughput']:,.0f}", "", "", "", "", str(report["errors"]), style="bold")
    return table


def footnotes(report: dict[str, Any]) -> list[str]:
    lines = []
    cpu = report.get("client_cpu") or []
    if cpu:
        lines.append("client processes busy (CPU/wall, 1.0 = one core): " + ", ".join(f"{c:.2f}" for c in cpu)
                     + ("  <- a client near 1.0 is the bottleneck" if max(cpu) > 0.85 else ""))
    servers = report.get("server_cpu") or {}
    if servers:
        lines.append("servers busy: " + ", ".join(f"{n} {c:.2f}" for n, c in servers.items())
                     + f"  (machine: {report.get('machine', {}).get('cpus', '?')} CPUs)")
    per_op = report.get("cpu_us_per_op") or {}
    if per_op.get("server") is not None:
        lines.append(f"CPU per operation: servers {per_op['server']:,.0f} µs, clients {per_op['client']:,.0f} µs")
    commits = {n: g for n, g in (report.get("group_commit") or {}).items() if g.get("commits")}
    if commits:
        lines.append("group commit (writes per fsync): "
                     + ", ".join(f"{n} {g['per_commit']}" for n, g in commits.items()))
    config = report.get("config") or {}
    if config.get("data_dir") or config.get("seeds"):
        sampled = report.get("servers_sampled") or []
        where = f"seeds {config['seeds']}" if config.get("seeds") else config["data_dir"]
        lines.append(f"running cluster at {where}, bucket {config['bucket']}; servers' CPU sampled on "
                     + (", ".join(sampled) if sampled else "none (no node of it runs on this host)"))
    if report.get("load"):
        load = report["load"]
        lines.append(f"load phase: {load['keys']} keys in {load['seconds']}s ({load['errors']} errors)")
    for sample in report.get("error_samples", [])[:3]:
        lines.append(f"error: {sample}")
    return lines


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def save(report: dict[str, Any], out_dir: str | os.PathLike[str], stem: str,
         plot: Any = None) -> dict[str, str]:
    """Write ``STEM.json`` and (matplotlib permitting) ``STEM.png`` into ``out_dir``; returns their paths.

    ``plot(report, path)`` draws the figure (``plot_run`` by default). The paths are also
    put into ``report["files"]`` before the JSON is written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out / f"{stem}.json")}
    png = out / f"{stem}.png"
    try:
        (plot or plot_run)(report, png)
        files["png"] = str(png)
    except ImportError:
        files["png_skipped"] = "matplotlib is not installed (pip install leaderless[bench])"
    report["files"] = files
    Path(files["json"]).write_text(json.dumps(report, indent=1, default=str) + "\n")
    return files


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _percentile_axis(ax: Any) -> None:
    """x = 1 / (1 - percentile) on a log scale, labelled in percentiles (the HDR plot)."""
    ax.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    ax.set_xticks(ticks)
    ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlabel("percentile")


def _curve_points(curve: list[list[float]]) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for p, v in curve:
        if p >= 100.0:
            continue
        xs.append(1.0 / (1.0 - p / 100.0))
        ys.append(v)
    return xs, ys


def plot_run(report: dict[str, Any], path: Path) -> None:
    """Throughput per second (warm-up shaded) over latency by percentile, one line per operation."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.5))
    config = report["config"]
    seconds = max(1, math.ceil(config["warmup_s"] + config["time_s"]))
    per_second = report["per_second"][:seconds]          # the last bucket holds only the drain
    top.stairs(per_second, range(len(per_second) + 1), baseline=None, color="tab:blue", linewidth=1.5)
    top.axvspan(0, config["warmup_s"], color="0.9", label="warm-up", zorder=0)
    top.axhline(report["throughput"], color="tab:red", linestyle="--", linewidth=1,
                label=f"measured mean {report['throughput']:,.0f} ops/s")
    top.set_xlabel("seconds")
    top.set_ylabel("ops/s")
    top.set_xlim(0, seconds)
    top.set_ylim(bottom=0)
    top.set_title(f"{report['system']}: workload {config['workload'].upper()}, {config['nodes']} nodes, "
                  f"N={config['n']} R={config['r']} W={config['w']}, "
                  f"{config['clients']}x{config['inflight']} in flight")
    top.legend(loc="lower right")
    for op, curve in report.get("latency_curve_ms", {}).items():
        xs, ys = _curve_points(curve)
        bottom.plot(xs, ys, marker="o", markersize=3, label=op)
    _percentile_axis(bottom)
    bottom.set_ylabel("latency ms")
    bottom.set_yscale("log")
    bottom.grid(True, which="both", alpha=0.3)
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_run(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or result_console()
    console.print(summary_table(report))
    for line in footnotes(report):
        console.print(line, markup=False, soft_wrap=True)
    files = report.get("files", {})
    console.print(f"saved {files.get('json')}" + (f" and {files['png']}" if "png" in files else
                                                  f" ({files.get('png_skipped', 'no plot')})"), markup=False,
                  soft_wrap=True)
