"""A cluster's data directory: its configuration file and its secret.

    DATA_DIR/
      cluster.json     nodes and their addresses, n/r/w, timings (written by LocalCluster, or by
                       `leaderless node start` for a node of a cluster across hosts)
      secret           the cluster secret, 32 random bytes hex, mode 0600 (any bytes will do;
                       ASCII whitespace around them is ignored; empty or readable by others: refused)
      n1/store/        n1's LMDB environment
      n1/node.log      n1's log
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ClusterUnavailable, InvalidRequest

log = logging.getLogger(__name__)

CONFIG_FILE = "cluster.json"
SECRET_FILE = "secret"


@dataclass
class ClusterConfig:
    """Everything a node or a client needs to know about the cluster."""
    nodes: dict[str, tuple[str, int]]
    n: int = 3
    r: int | str = 2
    w: int | str = 2
    partitions: int = 64
    timeout: float = 3.0
    gossip_interval: float = 0.5
    phi_threshold: float = 8.0        # phi accrual conviction threshold (Cassandra's default)
    map_size: int = 16 << 30          # LMDB map size per node: the most a node's store may hold
    ring_nodes: list[str] = field(default_factory=list)   # the members of the first ring (later: gossip)
    hint_interval: float = 0.2
    hint_window: float = 3 * 3600.0   # hints older than this are dropped (Cassandra's max_hint_window)
    handoff_interval: float = 0.5
    aae_interval: float = 1.0         # one anti-entropy exchange (one partition, one peer) per interval
    tombstone_grace: float = 4 * 3600.0   # must exceed hint_window and the longest outage (gc_grace)
    reap_interval: float = 5.0
    read_repair_chance: float = 0.1   # share of reads (r < n) that ask every replica, not the fastest r
    cluster_id: str = ""              # set when `leaderless node start` makes a cluster; joiners copy it
    extra: dict[str, Any] = field(default_factory=dict)

    def initial_ring_nodes(self) -> list[str]:
        return list(self.ring_nodes) or sorted(self.nodes)

    def validate(self, *, growing: bool = False) -> None:
        """Refuse settings no cluster can run with; ``growing``: a cluster whose other nodes are still to
        join (started one host at a time), so it may have fewer nodes than n for now."""
        if not self.nodes:
            raise InvalidRequest("a cluster needs at least one node")
        if not 1 <= self.n:
            raise InvalidRequest(f"n={self.n} must be at least 1")
        if self.n > len(self.nodes) and not growing:
            raise InvalidRequest(f"n={self.n} is larger than the {len(self.nodes)} nodes of the cluster")
        from .quorum import resolve
        resolve("r", self.r, self.r, self.n)
        resolve("w", self.w, self.w, self.n)
        if isinstance(self.read_repair_chance, bool) or not isinstance(self.read_repair_chance, (int, float)) \
                or not 0.0 <= self.read_repair_chance <= 1.0:
            raise InvalidRequest(f"read_repair_chance={self.read_repair_chance!r} must be a number in [0, 1]")
        if self.tombstone_grace < self.hint_window:
            raise InvalidRequest(f"tombstone_grace ({self.tombstone_grace}s) must be at least hint_window "
                                 f"({self.hint_window}s), or a late hint could bring deleted data back")

    def save(self, data_dir: str | os.PathLike[str]) -> None:
        path = Path(data_dir) / CONFIG_FILE
        tmp = path.with_suffix(".tmp")
        body = asdict(self)
        body["nodes"] = {name: list(addr) for name, addr in self.nodes.items()}
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True))
        os.replace(tmp, path)

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str]) -> "ClusterConfig":
        path = Path(data_dir) / CONFIG_FILE
        try:
            body = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ClusterUnavailable(f"no cluster in {data_dir} (missing {CONFIG_FILE}); start one with "
                                     "`leaderless cluster up`") from exc
        except (OSError, ValueError) as exc:
            raise ClusterUnavailable(f"cannot read {path}: {exc}") from exc
        body["nodes"] = {name: (host, int(port)) for name, (host, port) in body["nodes"].items()}
        return cls(**body)


def holds_cluster(data_dir: str | os.PathLike[str]) -> bool:
    """True if ``data_dir`` already holds a cluster: its ``cluster.json``, or any node's store."""
    root = Path(data_dir)
    return (root / CONFIG_FILE).exists() or any(root.glob("*/store"))


def ensure_secret(data_dir: str | os.PathLike[str]) -> bytes:
    """The cluster secret, generated (0600) on first use of a new data dir.

    Never for a data dir that already holds a cluster: a new secret there would lock every node
    and client that has the old one out (and hide that the file was lost), so the operator is
    asked to copy the cluster's secret back instead.
    """
    path = Path(data_dir) / SECRET_FILE
    if not os.path.lexists(path):
        if holds_cluster(data_dir):
            raise ClusterUnavailable(
                f"{data_dir} holds a cluster but no secret file ({path}): copy the cluster's secret there "
                f"(from another node's data dir) and `chmod 600 {path}`; a new secret would lock every "
                "existing node and client out")
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        log.info("generated a new cluster secret in %s", path)
    return load_secret(data_dir)


def load_secret(data_dir: str | os.PathLike[str]) -> bytes:
    """The cluster secret: the bytes of ``DATA_DIR/secret`` (see ``read_secret_file``)."""
    path = Path(data_dir) / SECRET_FILE
    if not os.path.lexists(path):
        raise ClusterUnavailable(f"no cluster secret in {data_dir} (missing {SECRET_FILE})")
    return read_secret_file(path)


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The cluster secret in the file ``path``, ASCII whitespace around it stripped.

    Refused (``ClusterUnavailable``, naming the file): a missing, unreadable or empty file (an empty
    secret would let in anyone with an empty secret), and, as ssh does for keys, a file that its
    group or others may read or write.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise ClusterUnavailable(f"the cluster secret {path} is not a regular file")
        if mode & 0o077:
            raise ClusterUnavailable(f"the cluster secret {path} is open to others (mode {stat.S_IMODE(mode):04o}): "
                                     f"run `chmod 600 {path}`")
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ClusterUnavailable(f"no cluster secret at {path}") from exc
    except OSError as exc:
        raise ClusterUnavailable(f"cannot read the cluster secret {path}: {exc}") from exc
    secret = data.strip()                 # bytes.strip(): ASCII whitespace only, any other byte is kept
    if not secret:
        raise ClusterUnavailable(f"the cluster secret {path} is empty: copy the cluster's secret into it")
    return secret


def parse_address(text: str, what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 host) as ``(host, port)``; ``InvalidRequest`` otherwise."""
    host, _, port = str(text).strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidRequest(f"{what} {text!r} is not HOST:PORT")
    return host, int(port)


def parse_seeds(seeds: str | Iterable[str | tuple[str, int]], what: str = "seed") -> list[tuple[str, int]]:
    """Seeds as addresses: ``"h1:p1,h2:p2"``, or a list of ``"h:p"`` strings or ``(host, port)`` pairs."""
    items = seeds.split(",") if isinstance(seeds, str) else list(seeds)
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, str):
            if item.strip():
                out.append(parse_address(item, what))
        else:
            host, port = item
            out.append((str(host), int(port)))
    if not out:
        raise InvalidRequest(f"no {what} address given (HOST:PORT, comma-separated)")
    return out
