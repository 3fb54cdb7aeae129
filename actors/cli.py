"""The ``leaderless`` command.

    leaderless cluster up [--nodes 5 --n 3 --r 2 --w 2 --data-dir ./leaderless-data --port 7001]
    leaderless cluster status [--json]
    leaderless put KEY VALUE [--w W] [--blind]
    leaderless get KEY [--r R] [--json]
    leaderless delete KEY [--w W]

Every command finds the cluster through its data dir (``--data-dir``, or the
``LEADERLESS_DATA_DIR`` environment variable, default ``./leaderless-data``). Errors are
one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import click

from .client import Client, connect
from .cluster import LocalCluster, free_ports, terminate_as_interrupt
from .config import ClusterConfig, load_secret
from .console import result_console
from .errors import LeaderlessError
from .node import run as node_run

DEFAULT_DATA_DIR = "./leaderless-data"


class _Group(click.Group):
    """Turns leaderless errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LeaderlessError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


data_dir_option = click.option(
    "--data-dir", envvar="LEADERLESS_DATA_DIR", default=DEFAULT_DATA_DIR, show_default=True,
    type=click.Path(file_okay=False), help="The cluster's data directory.")


def _quorum(value: str | None) -> int | str | None:
    if value is None:
        return None
    return int(value) if value.isdigit() else value


def _client(data_dir: str) -> Client:
    if not os.path.isdir(data_dir):
        raise click.ClickException(f"no data dir at {data_dir}: start a cluster with `leaderless cluster up` "
                                   "or pass --data-dir")
    return connect(data_dir)


def _show(value: bytes) -> str:
    return value.decode("utf-8", errors="backslashreplace")


@click.group(cls=_Group)
@click.option("--log-level", default="WARNING", show_default=True, help="Logging level for this command.")
def main(log_level: str) -> None:
    """leaderless: a Dynamo-style leaderless key-value store."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")


@main.group()
def cluster() -> None:
    """Start and watch a local cluster."""


@cluster.command("up")
@click.option("--nodes", default=5, show_default=True, type=click.IntRange(1, 64), help="Number of node processes.")
@click.option("--n", "n_val", default=3, show_default=True, type=click.IntRange(1, 64), help="Replicas per key.")
@click.option("--r", "r_val", default="2", show_default=True, help="Default read quorum (int, one, quorum, all).")
@click.option("--w", "w_val", default="2", show_default=True, help="Default write quorum (int, one, quorum, all).")
@click.option("--port", default=7001, show_default=True, type=click.IntRange(1024, 65535),
              help="Base port: node i listens on port + i - 1.")
@click.option("--refresh", default=1.0, show_default=True, type=click.FloatRange(0.1, 60), help="Seconds between "
              "status refreshes.")
@data_dir_option
def cluster_up(nodes: int, n_val: int, r_val: str, w_val: str, port: int, refresh: float, data_dir: str) -> None:
    """Start NODES node processes on 127.0.0.1 and watch them until Ctrl-C."""
    if n_val > nodes:
        raise click.BadParameter(f"n={n_val} is larger than --nodes={nodes}", param_hint="--n")
    local = LocalCluster(nodes=nodes, n=n_val, r=_quorum(r_val), w=_quorum(w_val), data_dir=data_dir,
                         base_port=port)
    click.echo(f"starting {nodes} nodes (n={n_val}, r={r_val}, w={w_val}) with data in {os.path.abspath(data_dir)}")
    try:
        with terminate_as_interrupt(), local:
            for name, (host, p) in local.addresses.items():
                click.echo(f"  {name} listening on {host}:{p}")
            click.echo("cluster up; Ctrl-C stops it. In another shell: leaderless put KEY VALUE / get KEY / "
                       "cluster status")
            _watch(local, refresh)
    except KeyboardInterrupt:          # Ctrl-C while starting or watching: every node is stopped either way
        click.echo("stopping...")
    click.echo("cluster stopped")


def _watch(local: LocalCluster, refresh: float) -> None:
    from rich.console import Console
    from rich.live import Live

    console = Console()
    if not console.is_terminal:
        while True:
            time.sleep(refresh)
    with Live(_table(local.status()), console=console, refresh_per_second=4) as live:
        while True:
            time.sleep(refresh)
            live.update(_table(local.status()))


def _table(status: dict[str, dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=f"leaderless cluster  {time.strftime('%H:%M:%S')}")
    for column in ("node", "address", "state", "sees up", "ring", "keys", "hints", "handoff", "puts ok", "gets ok",
                   "quorum failed", "read repairs", "aae repaired"):
        table.add_column(column, justify="left" if column in ("node", "address", "state") else "right")
    for name, s in status.items():
        if not s.get("up"):
            table.add_row(name, "", "[red]down[/red]", *[""] * 10)
            continue
        counts = s.get("counts", {})
        members = s.get("members", {})
        failed = sum(v for k, v in counts.items() if k.endswith("quorum_failed"))
        table.add_row(name, "%s:%s" % tuple(s["address"]), "[green]up[/green]",
                      f"{sum(1 for v in members.values() if v == 'up')}/{len(members)}",
                      f"v{s.get('ring_version', 0)}", str(s.get("keys", 0)), str(s.get("hints_pending", 0)),
                      str(s.get("handoff_pending", 0)), str(counts.get("put.ok", 0)), str(counts.get("get.ok", 0)),
                      str(failed), str(counts.get("read_repairs", 0)), str(s.get("aae_keys_repaired", 0)))
    return table


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (node -> status).")
@data_dir_option
def cluster_status(as_json: bool, data_dir: str) -> None:
    """Show every node's state and counters."""
    with _client(data_dir) as client:
        status = client.status_all()
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    result_console().print(_table(status))
    if not any(s.get("up") for s in status.values()):
        sys.exit(1)


@cluster.command("join")
@click.option("--name", default=None, help="The new node's name (default: the next free nN).")
@data_dir_option
def cluster_join(name: str | None, data_dir: str) -> None:
    """Start a new node here, in the foreground, and add it to the local cluster's ring."""
    config = ClusterConfig.load(data_dir)
    if name is None:
        taken = {int(n[1:]) for n in config.nodes if n[1:].isdigit()}
        name = f"n{max(taken, default=0) + 1}"
    if name in config.nodes:
        raise click.BadParameter(f"{name} is already a node of this cluster", param_hint="--name")
    host = next(iter(config.nodes.values()))[0]
    config.nodes[name] = (host, free_ports(1, host)[0])
    config.save(data_dir)
    click.echo(f"{name} listening on {host}:{config.nodes[name][1]}, joining; Ctrl-C stops it", err=True)
    sys.exit(node_run(name, data_dir, join=True))


@cluster.command("leave")
@click.argument("node")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the node has handed off its data.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for the handoff.")
@click.option("--force", is_flag=True, help="Leave even if fewer members than the largest n in use would remain.")
@data_dir_option
def cluster_leave(node: str, wait: bool, timeout: float, force: bool, data_dir: str) -> None:
    """Decommission NODE: it streams its data to the new owners, then stops.

    Refused when fewer members than the largest n in use (the cluster's, or a bucket's) would
    remain, unless --force."""
    with _client(data_dir) as client:
        if node not in client.addresses:
            raise click.BadParameter(f"no node {node} in {data_dir}", param_hint="NODE")
        version = client.ring_change(node, "leave", node, force=force)
        click.echo(f"{node} is leaving (ring version {version})", err=True)
        deadline = time.monotonic() + timeout
        while wait:
            try:
                state = client.status(node, timeout=2.0)
            except LeaderlessError:
                break                                   # it has left and stopped
            click.echo(f"  {node}: handing off {state['handoff_pending']} partitions, "
                       f"{state['keys']} keys held", err=True)
            if time.monotonic() > deadline:
                raise LeaderlessError(f"{node} did not finish its handoff within {timeout:.0f}s")
            time.sleep(1.0)
    if wait:
        config = ClusterConfig.load(data_dir)
        config.nodes.pop(node, None)
        config.save(data_dir)
    click.echo(f"{node} left" if wait else f"{node} is leaving")


@main.group()
def node() -> None:
    """Run one node in the foreground (several hosts: one per host)."""


@node.command("start")
@click.option("--name", required=True, help="This node's name.")
@click.option("--listen", default=None, help="HOST:PORT to listen on (default: from cluster.json, or a free port).")
@click.option("--join", "seed", default=None, help="HOST:PORT of any member: fetch the cluster's settings from it "
              "and join (DATA_DIR must hold a copy of the cluster's secret file).")
@data_dir_option
def node_start(name: str, listen: str | None, seed: str | None, data_dir: str) -> None:
    """Start node NAME here; with --join, a new node joins an existing cluster."""
    if seed is None:
        config = ClusterConfig.load(data_dir)
        if name not in config.nodes:
            raise click.BadParameter(f"{name} is not in {data_dir}/cluster.json; use --join HOST:PORT to add it")
        if listen is not None:
            config.nodes[name] = _address(listen, "--listen")
            config.save(data_dir)
        sys.exit(node_run(name, data_dir))
    secret = load_secret(data_dir)
    with Client({"seed": _address(seed, "--join")}, secret) as client:
        body = client.cluster_config("seed")
    body["nodes"] = {n: tuple(a) for n, a in body["nodes"].items()}
    config = ClusterConfig(**body)
    if name in config.nodes and name in config.initial_ring_nodes():
        raise click.BadParameter(f"{name} is already a member; pick another --name", param_hint="--name")
    if listen is not None:
        config.nodes[name] = _address(listen, "--listen")
    else:
        config.nodes[name] = ("127.0.0.1", free_ports(1)[0])
    config.save(data_dir)
    click.echo(f"{name} listening on %s:%d, joining through {seed}" % config.nodes[name], err=True)
    sys.exit(node_run(name, data_dir, join=True))


def _address(text: str, option: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint=option)
    return host, int(port)


BUCKET_TYPES = ("siblings", "lww", "counter", "set", "map", "register", "flag")


@main.group()
def bucket() -> None:
    """Create and show buckets (a key's conflict mode and n/r/w)."""


@bucket.command("create")
@click.argument("name")
@click.option("--type", "type_", type=click.Choice(BUCKET_TYPES), default="siblings", show_default=True,
              help="Conflict mode: siblings (DVV), lww (hybrid clock), or a server-merged CRDT.")
@click.option("--n", "n_val", type=click.IntRange(1, 64), default=None, help="Replicas (default: the cluster's).")
@click.option("--r", "r_val", default=None, help="Default read quorum.")
@click.option("--w", "w_val", default=None, help="Default write quorum.")
@data_dir_option
def bucket_create(name: str, type_: str, n_val: int | None, r_val: str | None, w_val: str | None,
                  data_dir: str) -> None:
    """Create bucket NAME (idempotent with the same properties)."""
    with _client(data_dir) as client:
        created = client.create_bucket(name, type=type_, n=n_val, r=_quorum(r_val), w=_quorum(w_val))
    click.echo(f"{created.name}: type={created.type} n={created.props.n} r={created.props.r} w={created.props.w}")


@bucket.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@data_dir_option
def bucket_show(name: str, as_json: bool, data_dir: str) -> None:
    """Show bucket NAME's properties."""
    with _client(data_dir) as client:
        props = client.bucket(name).props
    if as_json:
        click.echo(json.dumps(props._asdict()))
    else:
        click.echo(f"{props.name}: type={props.type} n={props.n} r={props.r} w={props.w}")


@main.command("put")
@click.argument("key")
@click.argument("value")
@click.option("--w", "w_val", default=None, help="Write quorum (int, one, quorum, all).")
@click.option("--blind", is_flag=True, help="Write without reading the context first (makes a sibling).")
@data_dir_option
def put(key: str, value: str, w_val: str | None, blind: bool, data_dir: str) -> None:
    """Write VALUE to KEY (replacing what a read sees, unless --blind)."""
    with _client(data_dir) as client:
        context = () if blind else client.get(key).context
        client.put(key, value.encode(), context=context, w=_quorum(w_val))
    click.echo("ok")


@main.command("get")
@click.argument("key")
@click.option("--r", "r_val", default=None, help="Read quorum (int, one, quorum, all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_dir_option
def get(key: str, r_val: str | None, as_json: bool, data_dir: str) -> None:
    """Read KEY and print every sibling, one per line."""
    with _client(data_dir) as client:
        result = client.get(key, r=_quorum(r_val))
    if as_json:
        click.echo(json.dumps({"key": key, "values": [_show(v) for v in result.values],
                               "context": [list(pair) for pair in result.context]}))
        return
    if not result.values:
        click.echo(f"(not found: {key})", err=True)
        sys.exit(1)
    if len(result.values) > 1:
        click.echo(f"({len(result.values)} siblings)", err=True)
    for value in result.values:
        click.echo(_show(value))


@main.command("delete")
@click.argument("key")
@click.option("--w", "w_val", default=None, help="Write quorum (int, one, quorum, all).")
@data_dir_option
def delete(key: str, w_val: str | None, data_dir: str) -> None:
    """Delete KEY (a tombstone covering every sibling a read sees)."""
    with _client(data_dir) as client:
        client.delete(key, context=client.get(key).context, w=_quorum(w_val))
    click.echo("ok")


@main.command("chaos")
@click.option("--nodes", default=5, show_default=True, type=int, help="Node processes (at least 3).")
@click.option("--nemesis", default="partition,kill,slow", show_default=True,
              help="Comma-separated faults: partition (halves, isolate, bridge, ring), kill, pause, slow, loss, "
                   "duplicate, reorder, degrade, clock, all.")
@click.option("--workload", default="set", show_default=True, help="set, register or counter.")
@click.option("--mode", default="siblings", show_default=True,
              help="Bucket type the set and register workloads write to: siblings or lww (lossy: measured).")
@click.option("--time", "time_s", default=60.0, show_default=True, type=float, help="Seconds of faults and load.")
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the fault schedule and workload.")
@click.option("--interval", default=None, type=float, help="Seconds per fault and per quiet spell "
              "[default: time/12, within 1..5].")
@click.option("--n", "n_val", default=3, show_default=True, type=int, help="Replicas per key.")
@click.option("--r", "r_val", default="2", show_default=True, help="Read quorum of the workload.")
@click.option("--w", "w_val", default="2", show_default=True, help="Write quorum of the workload.")
@click.option("--history", "history_path", default=None, type=click.Path(dir_okay=False),
              help="Write the whole history (every op) to this JSON file.")
@click.option("--data-dir", "chaos_dir", default=None, type=click.Path(file_okay=False),
              help="A fresh directory for the cluster (kept, with every node's log) [default: a temporary one].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (progress goes to stderr).")
def chaos(nodes: int, nemesis: str, workload: str, mode: str, time_s: float, seed: int, interval: float | None,
          n_val: int, r_val: str, w_val: str, history_path: str | None, chaos_dir: str | None, as_json: bool) -> None:
    """Run a fresh cluster under a workload and a nemesis, then check nothing acknowledged was lost.

    Exit code 0 only when the history is valid and every replica converged.
    """
    from rich.console import Console

    from .chaos import OptionError, check_options, one_line_usage_error, passed, run_chaos, verdict_table

    try:
        check_options(nodes, nemesis, workload, time_s, n_val, interval, mode)
    except OptionError as exc:
        raise one_line_usage_error(str(exc), f"'--{exc.option}'") from None
    progress_console = Console(stderr=True, highlight=False)
    with terminate_as_interrupt():
        result = run_chaos(nodes=nodes, nemesis=nemesis, workload=workload, mode=mode, time_s=time_s, seed=seed, n=n_val,
                           r=_quorum(r_val) or r_val, w=_quorum(w_val) or w_val, interval=interval,
                           progress=lambda line: progress_console.print(line, markup=False, soft_wrap=True),
                           history_path=history_path, data_dir=chaos_dir)
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        result_console().print(verdict_table(result))
    sys.exit(0 if passed(result) else 1)


from bench.command import BenchCommand, bench_options  # the benchmark suite lives in bench/


@main.command("bench", cls=BenchCommand)
@bench_options
def bench(**options: Any) -> None:
    """Benchmark a fresh local cluster, or a running one (--data-dir): YCSB-style workloads, peers side by side
    (--compare), a slow node (--gray).

    Prints a summary table (or one JSON object with --json) and saves the JSON and a PNG
    plot in --out. Bad options exit with code 2 and one line.
    """
    from bench.command import run

    run(**options)


if __name__ == "__main__":
    main()
