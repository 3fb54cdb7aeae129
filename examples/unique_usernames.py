"""Uniqueness, the leak of eventual consistency that needs consensus: 8 processes race to claim 200 names.

    python examples/unique_usernames.py

Eight claimant actors run in eight worker processes (shipped with cloudpickle). Each tries
to claim every one of 200 usernames, in its own order, with ``put(name, me, if_absent=True)``,
while one node of the five is partitioned away: six claimants talk to the majority side, two
to the lone node. It runs twice:

- with ``serial=True`` (Paxos among each name's primaries): every name has exactly one owner;
  the claimants on the lone node cannot decide anything (indeterminate or refused), which is
  the price of the guarantee;
- without it: ``if_absent`` is checked by whichever replica builds the write on each side of the
  partition, so some names end up claimed by two claimants, each told it won.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pykka

from actors import LeaderlessError, LocalCluster, VersionMismatch
from actors.workers import run_workers

NAMES = 200


class Claimant(pykka.ThreadingActor):
    """Claims every name, in an order of its own; reports which it won, lost, and could not tell."""

    def __init__(self, client):
        super().__init__()
        self.client = client

    def run(self, worker: int, serial: bool, prefix: str) -> dict[str, list[str]]:
        names = [f"{prefix}:user{i}" for i in range(NAMES)]
        random.Random(worker).shuffle(names)
        outcome: dict[str, list[str]] = {"won": [], "lost": [], "unknown": []}
        for name in names:
            try:
                self.client.put(name, f"claimant-{worker}".encode(), if_absent=True, serial=serial, w=1,
                                timeout=1.0)
                outcome["won"].append(name)
            except VersionMismatch:
                outcome["lost"].append(name)
            except LeaderlessError:
                outcome["unknown"].append(name)
        return outcome


def race(data_dir: str, serial: bool, prefix: str) -> None:
    params = {"serial": serial, "prefix": prefix}
    started = time.monotonic()
    with ThreadPoolExecutor(2) as sides:            # both sides race at once, each in its own processes
        left = sides.submit(run_workers, Claimant, count=6, data_dir=data_dir, params=params,
                            nodes=["n1", "n2", "n3", "n4"])
        right = sides.submit(run_workers, Claimant, count=2, data_dir=data_dir, params=params, nodes=["n5"])
        outcomes = left.result() + right.result()
    owners = Counter(name for outcome in outcomes for name in outcome["won"])
    doubled = sum(1 for count in owners.values() if count > 1)
    print(f"{'serial' if serial else 'plain '}: {len(owners)} names claimed in {time.monotonic() - started:.1f}s; "
          f"wins {sum(len(o['won']) for o in outcomes)}, losses {sum(len(o['lost']) for o in outcomes)}, "
          f"indeterminate {sum(len(o['unknown']) for o in outcomes)}; names with two owners: {doubled}")


def main() -> None:
    with tempfile.TemporaryDirectory() as data_dir, LocalCluster(nodes=5, data_dir=data_dir) as cluster:
        cluster.isolate("n5")                      # one node cut off while the claimants race
        cluster.wait_until_converged(cluster.nodes)
        race(data_dir, serial=True, prefix="serial")
        race(data_dir, serial=False, prefix="plain")


if __name__ == "__main__":
    main()
