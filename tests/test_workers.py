"""Workload actors shipped to worker processes with cloudpickle."""

from __future__ import annotations

import pykka
import pytest

from actors import LocalCluster
from actors.workers import WorkerFailed, run_workers

pytestmark = pytest.mark.cluster


def test_actors_in_worker_processes_share_one_cluster(shared_cluster: LocalCluster) -> None:
    shared_cluster.client().create_bucket("worker-counts", type="counter")

    class Counter(pykka.ThreadingActor):          # defined in a function: shipped by value
        def __init__(self, client):
            super().__init__()
            self.views = client.bucket("worker-counts")

        def run(self, worker: int, times: int) -> tuple[int, int]:
            for _ in range(times):
                self.views.increment("page")
            return worker, __import__("os").getpid()

    results = run_workers(Counter, count=3, data_dir=shared_cluster.data_dir, params={"times": 20})
    assert [worker for worker, _ in results] == [0, 1, 2]
    assert len({pid for _, pid in results}) == 3                 # three processes
    assert shared_cluster.client().bucket("worker-counts").get("page", r=3) == 60


def test_a_worker_that_raises_is_reported_with_its_traceback(shared_cluster: LocalCluster) -> None:
    class Broken(pykka.ThreadingActor):
        def __init__(self, client):
            super().__init__()

        def run(self, worker: int) -> None:
            raise RuntimeError(f"worker {worker} broke")

    with pytest.raises(WorkerFailed, match="RuntimeError: worker 0 broke"):
        run_workers(Broken, count=1, data_dir=shared_cluster.data_dir)


def test_a_worker_whose_process_dies_without_a_word_is_reported_at_once(shared_cluster: LocalCluster) -> None:
    class Vanishing(pykka.ThreadingActor):
        def __init__(self, client):
            super().__init__()

        def run(self, worker: int) -> None:
            __import__("os")._exit(3)          # as a kill -9 or a failed interpreter start would

    # Waiting for the timeout (600 s) would fail the test on its own (pytest-timeout: 180 s).
    with pytest.raises(WorkerFailed, match="exited with code 3"):
        run_workers(Vanishing, count=2, data_dir=shared_cluster.data_dir, timeout=600)


def test_the_shopping_cart_example_loses_no_item() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "examples" / "shopping_cart.py")], cwd=root,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(", 0 lost") == 2, done.stdout
