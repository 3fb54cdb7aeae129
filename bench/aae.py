"""Anti-entropy cost: bytes exchanged grow with the keys that differ, not with the keys held.

    python -m bench.aae [--keys 1000,20000] [--differ 10,100] [--json]

A 3-node cluster (N=3, so a write with one node down has no fallback and leaves no
hint: only anti-entropy can repair it) holds KEYS keys; n3 is stopped, DIFFER keys are
written at W=2, n3 is restarted, and the bytes its exchanges move are read from the
nodes' counters until n3 holds every key. Idle exchanges (nothing differs) are
measured first, so their cost can be told apart from the repair's.
"""

from __future__ import annotations

import json
import tempfile
import time

import click

from actors import LocalCluster


def _totals(cluster: LocalCluster) -> tuple[int, int, int]:
    status = [s for s in cluster.status().values() if s.get("up")]
    return (sum(s["aae_bytes"] for s in status), sum(s["aae_rounds"] for s in status),
            sum(s["aae_keys_repaired"] for s in status))


def measure(keys: int, differ: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="leaderless-aae-") as data_dir:
        with LocalCluster(nodes=3, n=3, data_dir=data_dir, aae_interval=0.02) as cluster:
            client = cluster.client(nodes=["n1", "n2"])
            for f in [client.put_async(f"k{i}", b"v" * 100, w=3) for i in range(keys)]:
                f.get(timeout=60)
            b0, r0, _ = _totals(cluster)
            time.sleep(3.0)
            b1, r1, _ = _totals(cluster)
            idle_per_round = (b1 - b0) / max(1, r1 - r0)
            cluster.terminate("n3")
            for f in [client.put_async(f"d{i}", b"x" * 100, w=2) for i in range(differ)]:
                f.get(timeout=60)
            cluster.restart("n3")
            b2, r2, k2 = _totals(cluster)
            started = time.monotonic()
            while cluster.status()["n3"]["keys"] < keys + differ and time.monotonic() - started < 120:
                time.sleep(0.05)
            b3, r3, k3 = _totals(cluster)
    repair_bytes = (b3 - b2) - idle_per_round * (r3 - r2)
    return {"keys": keys, "differ": differ, "idle_bytes_per_exchange": round(idle_per_round),
            "repair_bytes": round(repair_bytes), "repair_bytes_per_key": round(repair_bytes / max(differ, 1)),
            "keys_repaired": k3 - k2, "seconds": round(time.monotonic() - started, 2)}


@click.command()
@click.option("--keys", default="1000,20000", show_default=True)
@click.option("--differ", default="10,100", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def main(keys: str, differ: str, as_json: bool) -> None:
    rows = [measure(int(k), int(d)) for k in keys.split(",") for d in differ.split(",")]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        click.echo("keys={keys:>6} differ={differ:>4}: repair {repair_bytes:>8} B ({repair_bytes_per_key} B/key), "
                   "idle exchange {idle_bytes_per_exchange} B, {keys_repaired} keys repaired in {seconds}s"
                   .format(**row))


if __name__ == "__main__":
    main()
