"""The options of a benchmark run, validated once, with one error per bad option."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .workload import DISTRIBUTIONS, WORKLOADS

BUCKET_TYPES = ("lww", "siblings")
BENCH_BUCKET = "bench"


class OptionError(ValueError):
    """A bad benchmark option; ``option`` names it (``workload``, ``nodes``, ``time``...)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass
class BenchConfig:
    """Everything a run uses; ``as_dict()`` is the ``config`` of the JSON report."""

    workload: str = "w"
    distribution: str = "uniform"
    keys: int = 10_000
    value_size: int = 100
    nodes: int = 3
    n: int = 3
    r: int = 2
    w: int = 2
    clients: int = 4                    # client processes
    inflight: int = 64                  # requests outstanding per client process
    time_s: float = 10.0
    warmup_s: float = 2.0
    bucket_type: str = "lww"            # lww: overwrites, like the peers; siblings: blind puts keep siblings
    client_nodes: tuple[str, ...] | None = None     # nodes the clients send to (default: all)
    seed: int = 7
    request_timeout: float | None = None
    data_dir: str | None = None         # a running cluster's data dir (None: a fresh local cluster)
    seeds: str | None = None            # or a running cluster's seeds ("h1:p1,h2:p2") ...
    secret: str | None = None           # ... and the path of a copy of its secret file
    node_names: tuple[str, ...] | None = None       # that cluster's nodes (from its config)

    def validate(self) -> BenchConfig:
        self.workload = str(self.workload).lower()
        if self.workload not in WORKLOADS:
            raise OptionError("workload", f"unknown workload {self.workload!r}: one of {', '.join(WORKLOADS)}")
        if self.distribution not in DISTRIBUTIONS:
            raise OptionError("distribution", f"unknown key distribution {self.distribution!r}: one of "
                                              f"{', '.join(DISTRIBUTIONS)}")
        if self.nodes < 1:
            raise OptionError("nodes", f"--nodes {self.nodes}: a cluster needs at least 1 node")
        if not 1 <= self.n <= self.nodes:
            raise OptionError("n", f"--n {self.n} must lie between 1 and the number of nodes ({self.nodes})")
        for name in ("r", "w"):
            value = getattr(self, name)
            if not 1 <= value <= self.n:
                raise OptionError(name, f"--{name} {value} must lie between 1 and n ({self.n})")
        for name, low in (("keys", 1), ("value_size", 0), ("clients", 1), ("inflight", 1)):
            if getattr(self, name) < low:
                raise OptionError(name.replace("_", "-"), f"--{name.replace('_', '-')} {getattr(self, name)} "
                                                          f"must be at least {low}")
        if self.clients > 64 or self.inflight > 4096:
            raise OptionError("clients", "at most 64 client processes and 4096 requests in flight each")
        if not 0 < self.time_s <= 3600:
            raise OptionError("time", f"--time {self.time_s} must be more than 0 and at most 3600 seconds")
        if not 0 <= self.warmup_s <= 600:
            raise OptionError("warmup", f"--warmup {self.warmup_s} must lie between 0 and 600 seconds")
        if self.bucket_type not in BUCKET_TYPES:
            raise OptionError("bucket-type", f"unknown bucket type {self.bucket_type!r}: one of "
                                             f"{', '.join(BUCKET_TYPES)}")
        if self.client_nodes is not None:
            names = list(self.node_names) if self.node_names else [f"n{i + 1}" for i in range(self.nodes)]
            unknown = [n for n in self.client_nodes if n not in names]
            if unknown or not self.client_nodes:
                raise OptionError("client-nodes", f"--client-nodes {','.join(self.client_nodes)}: the cluster has "
                                                  f"{', '.join(names)}")
        return self

    @property
    def bucket(self) -> str:
        """The bucket the clients use. A fresh cluster's are made for the run (the LWW bench bucket,
        or the default bucket with the cluster's N/R/W). A running cluster gets a bucket of its own
        per type and N/R/W, so a run never meets keys of another kind or a bucket it cannot create."""
        if not self.running:
            return BENCH_BUCKET if self.bucket_type == "lww" else ""
        kind = "" if self.bucket_type == "lww" else f"-{self.bucket_type}"
        return f"{BENCH_BUCKET}{kind}-n{self.n}r{self.r}w{self.w}"

    @property
    def running(self) -> bool:
        """A cluster that was running before the run (``data_dir`` or ``seeds``), not a fresh one."""
        return self.data_dir is not None or self.seeds is not None

    @property
    def where(self) -> str:
        """The running cluster, as a person would name it."""
        return f"seeds {self.seeds}" if self.seeds else str(self.data_dir)

    def replace(self, **changes: Any) -> BenchConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["client_nodes"] = list(self.client_nodes) if self.client_nodes else None
        out["node_names"] = list(self.node_names) if self.node_names else None
        out["workload_mix"] = WORKLOADS[self.workload].description
        out["bucket"] = self.bucket
        out["durable_acks"] = True
        return out
