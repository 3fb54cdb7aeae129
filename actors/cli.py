"""The ``leaderless`` command.

    leaderless cluster up [--nodes 5 --n 3 --r 2 --w 2 --data-dir ./leaderless-data --port 7001]
    leaderless cluster status [--json]
    leaderless put KEY VALUE [--w W] [--blind]
    leaderless get KEY [--r R] [--json]
    leaderless delete KEY [--w W]
    leaderless node start --name a1 --listen 10.0.0.1:7001 --data-dir DIR --n 3 --r 2 --w 2   # first host
    leaderless node start --name a2 --listen 10.0.0.2:7001 --data-dir DIR --join 10.0.0.1:7001   # the others
    leaderless --seeds 10.0.0.1:7001 --secret FILE put KEY VALUE                # from any machine

Every command finds the cluster through its data dir (``--data-dir``, or the
``LEADERLESS_DATA_DIR`` environment variable, default ``./leaderless-data``), or through
seeds and a copy of the cluster's secret (``--seeds``/``--secret`` before the command, or
``LEADERLESS_SEEDS``/``LEADERLESS_SECRET``). Errors are one line on stderr and a non-zero
exit code, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

import click

from storage.store import StoreError

from .client import Client, connect
from .cluster import LocalCluster, free_ports, terminate_as_interrupt
from .config import ClusterConfig
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
    """A client through the global ``--seeds``/``--secret`` when given, else through ``data_dir``."""
    ctx = click.get_current_context(silent=True)
    options = (ctx.find_root().obj if ctx is not None else None) or {}
    seeds, secret = options.get("seeds"), options.get("secret")
    if seeds:
        if not secret:
            if not os.path.exists(os.path.join(data_dir, "secret")):
                raise click.ClickException("--seeds needs --secret FILE (a copy of the cluster's secret file), or "
                                           "LEADERLESS_SECRET")
            return connect(data_dir, seeds=seeds)
        return connect(seeds=seeds, secret=secret)
    if secret:
        raise click.ClickException("--secret goes with --seeds HOST:PORT[,HOST:PORT...] (or LEADERLESS_SEEDS)")
    if not os.path.isdir(data_dir):
        raise click.ClickException(f"no data dir at {data_dir}: start a cluster with `leaderless cluster up` "
                                   "or pass --data-dir, or --seeds and --secret")
    return connect(data_dir)


def _show(value: bytes) -> str:
    return value.decode("utf-8", errors="backslashreplace")


@click.group(cls=_Group)
@click.option("--log-level", default=None, help="Logging level for this command [default: WARNING; node start: "
              "INFO].")
@click.option("--seeds", envvar="LEADERLESS_SEEDS", default=None, metavar="HOST:PORT[,HOST:PORT...]",
              help="Reach the cluster through these members (any that answers) instead of a data dir; needs "
                   "--secret. Env: LEADERLESS_SEEDS.")
@click.option("--secret", envvar="LEADERLESS_SECRET", default=None, type=click.Path(dir_okay=False),
              help="A copy of the cluster's secret file (mode 0600), with --seeds. Env: LEADERLESS_SECRET.")
@click.pass_context
def main(ctx: click.Context, log_level: str | None, seeds: str | None, secret: str | None) -> None:
    """leaderless: a Dynamo-style leaderless key-value store."""
    ctx.obj = {"seeds": seeds, "secret": secret, "log_level": log_level}
    if ctx.invoked_subcommand != "node":        # node start sets up its own log, with timestamps
        logging.basicConfig(level=(log_level or "WARNING").upper(), format="%(levelname)s %(name)s: %(message)s")


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
            address = "{}:{}".format(*s["address"]) if s.get("address") else ""
            table.add_row(name, address, f"[red]{s.get('state', 'down')}[/red]", *[""] * 10)
            continue
        counts = s.get("counts", {})
        members = s.get("members", {})
        failed = sum(v for k, v in counts.items() if k.endswith("quorum_failed"))
        table.add_row(name, "%s:%s" % tuple(s["address"]), f"[green]{members.get(name, 'up')}[/green]",
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
    if wait and os.path.exists(os.path.join(data_dir, "cluster.json")):    # not so with --seeds from elsewhere
        config = ClusterConfig.load(data_dir)
        if node in config.nodes and len(config.nodes) > 1:
            config.nodes.pop(node, None)
            config.save(data_dir)
    click.echo(f"{node} left" if wait else f"{node} is leaving")


@main.group()
def node() -> None:
    """Run one node in the foreground (several hosts: one per host)."""


@node.command("start")
@click.option("--name", required=True, help="This node's name (unique in the cluster).")
@click.option("--listen", default=None, metavar="HOST:PORT",
              help="Address to listen on (a new node: required, except that --join alone picks a free port on "
                   "127.0.0.1; a restart: the saved one, a new one moves the node).")
@click.option("--advertise", default=None, metavar="HOST:PORT",
              help="Address peers and clients use, when not the --listen one (required with --listen 0.0.0.0:PORT).")
@click.option("--join", "seeds", default=None, metavar="HOST:PORT[,HOST:PORT...]",
              help="Members to join through (any that answers); DATA_DIR must hold a copy of the cluster's secret "
                   "file. Without it, and without a cluster in DATA_DIR, a new cluster starts.")
@click.option("--n", "n_val", default=None, type=click.IntRange(1, 64),
              help="A new cluster's replicas per key [default: 3]; later: must match the cluster's.")
@click.option("--r", "r_val", default=None, help="A new cluster's default read quorum [default: 2].")
@click.option("--w", "w_val", default=None, help="A new cluster's default write quorum [default: 2].")
@data_dir_option
@click.pass_context
def node_start(ctx: click.Context, name: str, listen: str | None, advertise: str | None, seeds: str | None,
               n_val: int | None, r_val: str | None, w_val: str | None, data_dir: str) -> None:
    """Run node NAME here, in the foreground: start a new cluster, join one (--join), or restart.

    The same command restarts the node, whether or not its seeds answer (it uses the members and
    addresses it saved). Bad input is one line and exit code 1, with nothing written to DATA_DIR.
    """
    from .hosts import plan_start

    level = ((ctx.find_root().obj or {}).get("log_level") or "INFO").upper()
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
    plan = plan_start(name, data_dir, listen=listen, advertise=advertise, join=seeds, n=n_val,
                      r=_quorum(r_val), w=_quorum(w_val))
    plan.commit()
    click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {plan.summary()}; Ctrl-C stops it", err=True)
    try:
        code = node_run(name, data_dir, join=plan.join, listen=plan.listen)
    except StoreError as exc:           # a store that cannot open (full disk, permissions): one line
        raise LeaderlessError(f"node {name}: {exc}") from None
    sys.exit(code)


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
@click.option("--if-absent", is_flag=True, help="Only if KEY holds nothing (else: error, exit 1).")
@click.option("--serial", is_flag=True, help="Linearizable: by Paxos among KEY's primaries (with --if-absent, "
              "exactly one of racing writers wins).")
@data_dir_option
def put(key: str, value: str, w_val: str | None, blind: bool, if_absent: bool, serial: bool, data_dir: str) -> None:
    """Write VALUE to KEY (replacing what a read sees, unless --blind)."""
    with _client(data_dir) as client:
        context = () if blind or if_absent or serial else client.get(key).context
        client.put(key, value.encode(), context=context, w=_quorum(w_val), if_absent=if_absent, serial=serial)
    click.echo("ok")


@main.command("get")
@click.argument("key")
@click.option("--r", "r_val", default=None, help="Read quorum (int, one, quorum, all).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--serial", is_flag=True, help="A linearizable read (a Paxos round among KEY's primaries).")
@data_dir_option
def get(key: str, r_val: str | None, as_json: bool, serial: bool, data_dir: str) -> None:
    """Read KEY and print every sibling, one per line."""
    with _client(data_dir) as client:
        result = client.get(key, r=_quorum(r_val), serial=serial)
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
                   "duplicate, reorder, degrade, clock, join, leave, membership, all.")
@click.option("--workload", default="set", show_default=True,
              help="set, orset, map, register, counter or delete.")
@click.option("--mode", default="siblings", show_default=True,
              help="Bucket type the set, register and delete workloads write to: siblings or lww (lossy: measured).")
@click.option("--time", "time_s", default=60.0, show_default=True, type=float, help="Seconds of faults and load.")
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the fault schedule and workload.")
@click.option("--interval", default=None, type=float, help="Seconds per fault and per quiet spell "
              "[default: time/12, within 3..5, so that a fault outlasts failure detection].")
@click.option("--n", "n_val", default=3, show_default=True, type=int, help="Replicas per key (the cluster's n).")
@click.option("--bucket-n", "bucket_n", default=None, type=int,
              help="n of a bucket of the workload's own (its r and w are --r and --w, capped at it) "
                   "[default: the cluster's n].")
@click.option("--r", "r_val", default="2", show_default=True, help="Read quorum of the workload.")
@click.option("--w", "w_val", default="2", show_default=True, help="Write quorum of the workload.")
@click.option("--history", "history_path", default=None, type=click.Path(dir_okay=False),
              help="Write the whole history (every op) to this JSON file.")
@click.option("--data-dir", "chaos_dir", default=None, type=click.Path(file_okay=False),
              help="A fresh directory for the cluster (kept, with every node's log) [default: a temporary one].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (progress goes to stderr).")
def chaos(nodes: int, nemesis: str, workload: str, mode: str, time_s: float, seed: int, interval: float | None,
          n_val: int, bucket_n: int | None, r_val: str, w_val: str, history_path: str | None, chaos_dir: str | None,
          as_json: bool) -> None:
    """Run a fresh cluster under a workload and a nemesis, then check nothing acknowledged was lost.

    Exit code 0 only when the history is valid and every replica converged.
    """
    from rich.console import Console

    from .chaos import OptionError, check_options, one_line_usage_error, passed, run_chaos, verdict_table

    try:
        check_options(nodes, nemesis, workload, time_s, n_val, interval, mode, bucket_n)
    except OptionError as exc:
        raise one_line_usage_error(str(exc), f"'--{exc.option}'") from None
    progress_console = Console(stderr=True, highlight=False)
    with terminate_as_interrupt():
        result = run_chaos(nodes=nodes, nemesis=nemesis, workload=workload, mode=mode, time_s=time_s, seed=seed, n=n_val,
                           bucket_n=bucket_n, r=_quorum(r_val) or r_val, w=_quorum(w_val) or w_val, interval=interval,
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

    given = click.get_current_context().find_root().obj or {}     # `leaderless --seeds ... --secret ... bench`
    for option in ("seeds", "secret"):
        if options.get(option) is None and given.get(option):
            options[option] = given[option]
    run(**options)


if __name__ == "__main__":
    main()
