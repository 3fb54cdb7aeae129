"""Workload actors, shipped to worker processes with cloudpickle.

A workload script defines a Pykka actor class (in ``__main__`` is fine) whose
constructor takes a ``Client`` and whose ``run(**params)`` method does the work and
returns a picklable result. ``run_workers`` starts that actor in ``count`` separate
processes, each with its own connection to the cluster, so the load uses every core
rather than one Python interpreter's:

    class Shopper(pykka.ThreadingActor):
        def __init__(self, client):
            super().__init__()
            self.carts = client.bucket("carts")
        def run(self, worker, items):
            for i in range(items):
                self.carts.add(f"cart{worker}", f"item{i}")
            return items

    results = run_workers(Shopper, count=4, data_dir=cluster.data_dir, params={"items": 100})

Each worker calls ``run(worker=<index>, **params)``; the results come back in worker
order. A worker that raises makes ``run_workers`` raise ``WorkerFailed`` with its
traceback; every process is ended (by PID) before ``run_workers`` returns.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

import cloudpickle

from .errors import LeaderlessError


class WorkerFailed(LeaderlessError):
    """A workload actor raised in its worker process (the message holds its traceback)."""


def _worker_main(payload: bytes, data_dir: str, nodes: list[str] | None, index: int, params: dict[str, Any],
                 results: Any) -> None:
    from .client import connect

    try:
        actor_class = cloudpickle.loads(payload)
        client = connect(data_dir, nodes=nodes)
        ref = actor_class.start(client)
        try:
            result = ref.proxy().run(worker=index, **params).get()
        finally:
            ref.stop()
            client.close()
        results.put((index, True, cloudpickle.dumps(result)))
    except BaseException:  # report everything to the parent, which raises it
        results.put((index, False, traceback.format_exc()))


def run_workers(actor_class: type, count: int, data_dir: str | os.PathLike[str],
                params: Mapping[str, Any] | None = None, timeout: float = 300.0,
                nodes: Iterable[str] | None = None) -> list[Any]:
    """Run ``actor_class`` in ``count`` worker processes against the cluster in ``data_dir``
    (their clients talk to ``nodes``, or to every node)."""
    if count < 1:
        raise ValueError(f"count={count} must be at least 1")
    payload = cloudpickle.dumps(actor_class)
    context = multiprocessing.get_context("spawn")     # no fork: LMDB and threads do not survive it
    results = context.Queue()
    chosen = list(nodes) if nodes is not None else None
    procs = [context.Process(target=_worker_main, args=(payload, str(data_dir), chosen, i, dict(params or {}), results),
                             daemon=True) for i in range(count)]
    for proc in procs:
        proc.start()
    try:
        collected: dict[int, Any] = {}
        failures: list[str] = []
        reported: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(reported) < count:
            try:
                index, ok, body = results.get(timeout=0.5)
            except queue.Empty:
                # A worker that died without a word (killed, or its interpreter could not start) would
                # otherwise be waited for until the timeout.
                dead = [i for i, proc in enumerate(procs) if i not in reported and proc.exitcode not in (None, 0)]
                if dead:
                    raise WorkerFailed("; ".join(f"worker {i} exited with code {procs[i].exitcode} before "
                                                 "reporting" for i in dead)) from None
                if time.monotonic() > deadline:
                    raise WorkerFailed(f"no result from workers {sorted(set(range(count)) - reported)} "
                                       f"within {timeout:.0f}s") from None
                continue
            reported.add(index)
            if ok:
                collected[index] = cloudpickle.loads(body)
            else:
                failures.append(f"worker {index}:\n{body}")
        if failures:
            raise WorkerFailed("\n".join(failures))
        return [collected[i] for i in range(count)]
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
