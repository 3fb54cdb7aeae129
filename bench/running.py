"""A cluster that was running before the benchmark, as ``run_on_cluster`` sees it.

    cluster = RunningCluster("./leaderless-data")    # `leaderless cluster up`'s, or a copy of one's
    cluster = RunningCluster(seeds="10.0.0.1:7001", secret="/path/to/secret")   # one across hosts
    cluster.status()                                  # every node's status ({"up": False} if silent)
    cluster.pids                                      # the nodes on this host, for the CPU sampler

Its nodes are never started or stopped here. Their CPU is sampled only for nodes on this
host: a node whose address is a loopback one and whose PID (from its status) is a
``python -m actors.node`` or ``leaderless node start`` process of that name.
"""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path
from typing import Any

from actors import connect


class RunningCluster:
    def __init__(self, data_dir: str | None = None, *, seeds: str | None = None, secret: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.seeds = seeds
        self.secret = str(Path(secret).resolve()) if secret is not None else None
        self.client = connect(str(self.data_dir) if self.data_dir else None, seeds=seeds, secret=self.secret)
        try:
            self.pids = local_node_pids(self.status())
        except BaseException:
            self.client.close()
            raise

    def status(self) -> dict[str, dict[str, Any]]:
        return self.client.status_all()

    def close(self) -> None:
        self.client.close()


def local_node_pids(status: dict[str, dict[str, Any]]) -> dict[str, int]:
    """The PIDs of the nodes (name -> pid) that run on this host, from their status."""
    out = {}
    for name, node in status.items():
        pid, address = node.get("pid"), node.get("address") or ("", 0)
        if node.get("up") and isinstance(pid, int) and _loopback(address[0]) and _is_node(pid, name):
            out[name] = pid
    return out


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_node(pid: int, name: str) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    node = b"actors.node" in args or any(a == b"node" and b == b"start" for a, b in itertools.pairwise(args))
    return node and any(a == b"--name" and b == name.encode() for a, b in itertools.pairwise(args))


__all__ = ["RunningCluster", "local_node_pids"]
