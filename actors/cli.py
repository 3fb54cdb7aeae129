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
import signal
import sys
import time
from typing import Any

import click

from .client import Client, connect
from .cluster import LocalCluster
from .errors import LeaderlessError

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
    signal.signal(signal.SIGTERM, _interrupt)
    click.echo(f"starting {nodes} nodes (n={n_val}, r={r_val}, w={w_val}) with data in {os.path.abspath(data_dir)}")
    with local:
        for name, (host, p) in local.addresses.items():
            click.echo(f"  {name} listening on {host}:{p}")
        click.echo("cluster up; Ctrl-C stops it. In another shell: leaderless put KEY VALUE / get KEY / "
                   "cluster status")
        try:
            _watch(local, refresh)
        except KeyboardInterrupt:
            click.echo("stopping...")
    click.echo("cluster stopped")


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


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
    for column in ("node", "address", "state", "sees up", "keys", "hints", "puts ok", "gets ok", "quorum failed",
                   "read repairs"):
        table.add_column(column, justify="left" if column in ("node", "address", "state") else "right")
    for name, s in status.items():
        if not s.get("up"):
            table.add_row(name, "", "[red]down[/red]", *[""] * 7)
            continue
        counts = s.get("counts", {})
        members = s.get("members", {})
        failed = sum(v for k, v in counts.items() if k.endswith("quorum_failed"))
        table.add_row(name, "%s:%s" % tuple(s["address"]), "[green]up[/green]",
                      f"{sum(1 for v in members.values() if v == 'up')}/{len(members)}", str(s.get("keys", 0)),
                      str(s.get("hints_pending", 0)), str(counts.get("put.ok", 0)), str(counts.get("get.ok", 0)),
                      str(failed), str(counts.get("read_repairs", 0)))
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
    from rich.console import Console
    Console().print(_table(status))
    if not any(s.get("up") for s in status.values()):
        sys.exit(1)


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


if __name__ == "__main__":
    main()
