"""Baseline throughput: a simple request loop and a pipelined client against a fresh cluster.

    python -m bench.baseline [--nodes 3] [--ops 5000] [--window 500] [--value-size 100] [--json]

One client process; N=3, R=2, W=2, durable acks. This is the starting point the
benchmark suite (YCSB-style workloads, peers side by side) measures against.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import click

from actors import Future, LocalCluster

log = logging.getLogger(__name__)


def loop_rate(ops: int, call: Callable[[int], Any], budget_s: float) -> float:
    """Requests per second issuing one request at a time (stops early after ``budget_s``)."""
    start = time.perf_counter()
    done = 0
    for i in range(ops):
        call(i)
        done += 1
        if time.perf_counter() - start > budget_s:
            break
    return done / (time.perf_counter() - start)


def pipelined_rate(ops: int, window: int, submit: Callable[[int], Future], budget_s: float) -> float:
    """Requests per second keeping ``window`` requests in flight on one connection."""
    start = time.perf_counter()
    in_flight: deque[Future] = deque()
    done = 0
    for i in range(ops):
        if len(in_flight) >= window:
            in_flight.popleft().get(timeout=30)
            done += 1
        in_flight.append(submit(i))
        if time.perf_counter() - start > budget_s:
            break
    while in_flight:
        in_flight.popleft().get(timeout=30)
        done += 1
    return done / (time.perf_counter() - start)


@click.command()
@click.option("--nodes", default=3, show_default=True)
@click.option("--ops", default=5000, show_default=True, help="Requests per measurement (bounded by --budget too).")
@click.option("--window", default=500, show_default=True, help="Requests in flight for the pipelined runs.")
@click.option("--value-size", default=100, show_default=True)
@click.option("--budget", default=20.0, show_default=True, help="Most seconds one measurement may take.")
@click.option("--json", "as_json", is_flag=True)
def main(nodes: int, ops: int, window: int, value_size: int, budget: float, as_json: bool) -> None:
    value = b"v" * value_size
    with tempfile.TemporaryDirectory(prefix="leaderless-bench-") as data_dir:
        with LocalCluster(nodes=nodes, n=3, r=2, w=2, data_dir=data_dir) as cluster:
            client = cluster.client(nodes=["n1"])
            results = {
                "put_loop": loop_rate(ops, lambda i: client.put(f"loop{i}", value), budget),
                "get_loop": loop_rate(ops, lambda i: client.get(f"loop{i}"), budget),
                "put_pipelined": pipelined_rate(ops * 4, window, lambda i: client.put_async(f"pipe{i}", value),
                                                budget),
                "get_pipelined": pipelined_rate(ops * 4, window, lambda i: client.get_async(f"pipe{i}"), budget),
            }
            counts = cluster.status()["n1"]["counts"]
    report = {"config": {"nodes": nodes, "n": 3, "r": 2, "w": 2, "value_size": value_size, "window": window,
                         "client_processes": 1},
              "ops_per_s": {k: round(v) for k, v in results.items()},
              "n1_commits": counts.get("replica.commits", 0), "n1_writes": counts.get("replica.writes", 0)}
    if as_json:
        click.echo(json.dumps(report))
    else:
        for name, rate in report["ops_per_s"].items():
            click.echo(f"{name:>14}: {rate:>8,} ops/s")
        writes, commits = report["n1_writes"], report["n1_commits"]
        click.echo(f"n1 group commit: {writes} writes in {commits} commits "
                   f"({writes / max(commits, 1):.1f} per fsync)")


if __name__ == "__main__":
    main()
