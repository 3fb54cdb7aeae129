"""The ``leaderless bench`` command (also ``python -m bench``, ``python -m bench.compare``, ``python -m bench.gray``).

    leaderless bench --nodes 3 --workload w --time 10 [--json] [--out ./bench-results]
    leaderless bench --data-dir ./leaderless-data --workload a      # a cluster already running
    leaderless bench --seeds 10.0.0.1:7001 --secret FILE --workload a   # one across hosts
    leaderless bench --compare [--workloads w,c] [--peers etcd,pysyncobj,toy] [--rounds 3]
    leaderless bench --gray [--slow-ms 50]

Bad options exit with code 2 and one line on stderr; a run that cannot start (a peer
failing, a client process dying) exits with code 1 and one line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .config import BUCKET_TYPES, BenchConfig, OptionError
from .workload import DISTRIBUTIONS, WORKLOADS

DEFAULT_OUT = "./bench-results"


class OneLineUsageError(click.UsageError):
    """A usage error printed as one line (exit code 2), without the usage block."""

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class BenchCommand(click.Command):
    """Turns every option-parsing error into one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise OneLineUsageError(exc.format_message(), ctx) from None


def bench_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The options of ``leaderless bench`` (shared with ``python -m bench.compare`` / ``bench.gray``)."""
    options = [
        click.option("--workload", default=None,
                     help="[default: w; gray: a] YCSB workload: "
                          + "; ".join(f"{k} = {w.description}" for k, w in WORKLOADS.items())),
        click.option("--distribution", default="uniform", show_default=True,
                     help=f"Key choice: {' or '.join(DISTRIBUTIONS)} (YCSB's constant 0.99)."),
        click.option("--keys", default=10_000, show_default=True, type=int, help="Key count."),
        click.option("--value-size", default=100, show_default=True, type=int, help="Value bytes."),
        click.option("--nodes", default=None, type=int, help="Node processes of the fresh cluster [default: 3]."),
        click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                     help="Benchmark the running cluster with this data directory (`leaderless cluster up`'s, "
                          "or a copy of a multi-host cluster's) instead of a fresh one; its nodes are left "
                          "running and the keys go to a bucket of their own, bench-nNrRwW."),
        click.option("--seeds", default=None, envvar="LEADERLESS_SEEDS", metavar="HOST:PORT[,HOST:PORT...]",
                     help="Benchmark the running cluster these members belong to (a cluster across hosts), "
                          "like --data-dir; needs --secret. Env: LEADERLESS_SEEDS."),
        click.option("--secret", default=None, envvar="LEADERLESS_SECRET", type=click.Path(dir_okay=False),
                     help="With --seeds: a copy of the cluster's secret file. Env: LEADERLESS_SECRET."),
        click.option("--n", "n_val", default=3, show_default=True, type=int, help="Replicas per key."),
        click.option("--r", "r_val", default=2, show_default=True, type=int, help="Read quorum."),
        click.option("--w", "w_val", default=2, show_default=True, type=int, help="Write quorum."),
        click.option("--clients", default=None, type=int,
                     help="Client processes [default: 4; gray: 2]."),
        click.option("--inflight", default=None, type=int,
                     help="Requests in flight per client process [default: 64; gray: 8, below saturation]."),
        click.option("--time", "time_s", default=10.0, show_default=True, type=float,
                     help="Measured seconds (per run with --compare, per phase with --gray)."),
        click.option("--warmup", "warmup_s", default=2.0, show_default=True, type=float,
                     help="Seconds of load before measuring."),
        click.option("--bucket-type", default="lww", show_default=True,
                     help=f"{' or '.join(BUCKET_TYPES)}: lww overwrites (as the peers do); siblings writes blind "
                          "puts to the default bucket, which keep every value as a sibling."),
        click.option("--client-nodes", default=None,
                     help="Comma-separated nodes the clients send to [default: all; gray: all but the slow one]."),
        click.option("--seed", default=7, show_default=True, type=int),
        click.option("--out", "out_dir", default=DEFAULT_OUT, show_default=True, type=click.Path(file_okay=False),
                     help="Directory for the JSON and PNG of each run."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout (progress: none)."),
        click.option("--compare", is_flag=True, help="Run the peers side by side (etcd, pysyncobj, toy ceiling)."),
        click.option("--workloads", default="w,c", show_default=True, help="With --compare: workloads to run."),
        click.option("--peers", default="etcd,pysyncobj,toy", show_default=True,
                     help="With --compare: peers to run (each skipped with a message when not installed)."),
        click.option("--rounds", default=1, show_default=True, type=int,
                     help="With --compare: run every system this many times, alternating the order, and give "
                          "the median of the ratios taken inside each round (3 or more on a busy machine)."),
        click.option("--gray", is_flag=True, help="p99 with one node slowed over p99 healthy, reads and writes."),
        click.option("--slow-ms", default=50.0, show_default=True, type=float, help="With --gray: the delay."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_config(options: dict[str, Any], mode: str) -> BenchConfig:
    client_nodes = options.get("client_nodes")
    gray = mode == "gray"
    data_dir, node_names, nodes = options.get("data_dir"), None, options["nodes"]
    seeds, secret = options.get("seeds"), options.get("secret")
    if seeds is not None and data_dir is not None:
        raise OptionError("seeds", "--seeds and --data-dir both name a running cluster: pick one")
    if secret is not None and seeds is None:
        raise OptionError("secret", "--secret goes with --seeds")
    if data_dir is not None or seeds is not None:
        option = "data-dir" if data_dir is not None else "seeds"
        if nodes is not None:
            raise OptionError("nodes", f"--nodes sizes a fresh cluster; with --{option} the running cluster's "
                                       "nodes are used")
        if data_dir is not None:
            data_dir = os.path.abspath(data_dir)
            node_names = _running_nodes(data_dir)
        else:
            if secret is None:
                raise OptionError("secret", "--seeds needs --secret FILE (a copy of the cluster's secret file)")
            secret = os.path.abspath(secret)
            node_names = _members(seeds, secret)
        nodes = len(node_names)
    config = BenchConfig(
        workload=options["workload"] or ("a" if gray else "w"),
        distribution=options["distribution"], keys=options["keys"], value_size=options["value_size"],
        nodes=nodes if nodes is not None else 3, n=options["n_val"], r=options["r_val"], w=options["w_val"],
        clients=options["clients"] if options["clients"] is not None else (2 if gray else 4),
        inflight=options["inflight"] if options["inflight"] is not None else (8 if gray else 64),
        time_s=options["time_s"], warmup_s=options["warmup_s"], bucket_type=options["bucket_type"],
        client_nodes=tuple(n.strip() for n in client_nodes.split(",") if n.strip()) if client_nodes else None,
        seed=options["seed"], data_dir=data_dir, node_names=node_names, seeds=seeds, secret=secret)
    return config.validate()


def _running_nodes(data_dir: str) -> tuple[str, ...]:
    """The node names in a running cluster's configuration; OptionError if there is none to read."""
    from actors.config import ClusterConfig
    from actors.errors import LeaderlessError

    try:
        return tuple(ClusterConfig.load(data_dir).nodes)
    except LeaderlessError as exc:
        raise OptionError("data-dir", str(exc)) from None


def _members(seeds: str, secret: str) -> tuple[str, ...]:
    """The members of the cluster the seeds belong to; OptionError if none answers."""
    from actors import connect
    from actors.errors import LeaderlessError

    try:
        with connect(seeds=seeds, secret=secret) as client:
            return tuple(client.addresses)
    except LeaderlessError as exc:
        raise OptionError("seeds", str(exc)) from None


def run(mode: str | None = None, **options: Any) -> None:
    """Carry out one ``leaderless bench`` invocation (``mode``: None, "compare" or "gray")."""
    mode = mode or ("compare" if options.get("compare") else "gray" if options.get("gray") else "bench")
    if options.get("compare") and options.get("gray"):
        raise OneLineUsageError("--compare and --gray are separate runs: pick one")
    for option in ("data_dir", "seeds"):
        if options.get(option) is not None and mode != "bench":
            raise OneLineUsageError(f"--{option.replace('_', '-')} benchmarks a running cluster; --{mode} starts "
                                    "clusters of its own")
    try:
        config = make_config(options, mode)
        if mode == "compare":
            from .compare import check_peers, check_rounds, check_workloads
            workloads = check_workloads(options["workloads"])
            peers = check_peers(options["peers"])
            rounds = check_rounds(options["rounds"])
        if mode == "gray":
            from .gray import check_gray
            check_gray(config, options["slow_ms"])
    except OptionError as exc:
        raise OneLineUsageError(f"Invalid value for '--{exc.option}': {exc}") from None

    from rich.console import Console

    from actors.cluster import terminate_as_interrupt

    from .report import ProgressBar
    from .runner import BenchError

    as_json = options["as_json"]
    err = Console(stderr=True, highlight=False)
    try:
        with terminate_as_interrupt(), ProgressBar(enabled=not as_json) as progress:
            if mode == "compare":
                from .compare import print_compare, run_compare, save_compare
                report = run_compare(config, workloads=workloads, peers=peers, progress=progress, rounds=rounds,
                                     say=lambda line: err.print(line, markup=False, soft_wrap=True))
                files = save_compare(report, options["out_dir"])
                show = print_compare
            elif mode == "gray":
                from .gray import print_gray, run_gray, save_gray
                report = run_gray(config, slow_ms=options["slow_ms"], progress=progress)
                files = save_gray(report, options["out_dir"])
                show = print_gray
            else:
                from .report import print_run, save, stamp
                from .runner import run_leaderless, run_running
                report = (run_running if config.running else run_leaderless)(config, progress=progress)
                files = save(report, options["out_dir"], f"bench-{config.workload}-{stamp()}")
                show = print_run
    except BenchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(report, default=str))
        err.print("saved " + " and ".join(v for k, v in files.items() if k in ("json", "png")), markup=False,
                  soft_wrap=True)
    else:
        show(report)


@click.command(cls=BenchCommand)
@bench_options
def main(**options: Any) -> None:
    """Throughput and latency of a fresh local cluster or a running one (YCSB-style workloads), peers side by side."""
    run(**options)
