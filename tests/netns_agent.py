"""The client host of test_hosts.py: run inside the client's network namespace, it holds one
``connect(seeds=..., secret=...)`` client and answers one JSON request per stdin line with one JSON
line on stdout, until stdin closes.

    ip netns exec NS python -m tests.netns_agent --seeds 10.77.0.1:7001 --secret DIR/secret

Requests: ``{"op": "status"}``, ``{"op": "members"}``, ``{"op": "put", "key", "value", "w"}``,
``{"op": "start_writes", "prefix", "w", "pause"}`` / ``{"op": "stop_writes"}`` (a writer thread: one
put at a time, each acknowledged key with the wall-clock time of its acknowledgement),
``{"op": "read_all", "keys", "r"}`` (every key must read back as written: the bad ones) and
``{"op": "placement", "keys", "n"}`` (every key must be held by exactly its n primaries: the
others, with who holds them).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from actors import LeaderlessError, connect
from actors.client import Client
from actors.messages import InspectRequest


class Writer:
    """Writes ``prefix-0``, ``prefix-1``... with value = key, one at a time, until stopped."""

    def __init__(self, client: Client, prefix: str, w: int, pause: float) -> None:
        self.client, self.prefix, self.w, self.pause = client, prefix, w, pause
        self.acked: list[tuple[str, float]] = []
        self.failed: list[tuple[str, float, str]] = []        # (key, when, error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            key = f"{self.prefix}-{i}"
            i += 1
            try:
                self.client.put(key, key.encode(), w=self.w, timeout=2.0)
                self.acked.append((key, time.time()))
            except LeaderlessError as exc:
                self.failed.append((key, time.time(), f"{type(exc).__name__}: {exc}"[:300]))
            self._stop.wait(self.pause)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=30)
        return {"acked": self.acked, "failed": self.failed}


def read_all(client: Client, keys: list[str], r: int, attempts: int = 3) -> dict[str, Any]:
    """Read every key at ``r``: ``wrong`` (keys whose read did not return exactly the value written: lost) and
    ``errors`` (keys no read of ``attempts`` answered, with the last error)."""
    wrong: list[Any] = []
    errors: dict[str, str] = {}
    for attempt in range(attempts):
        futures = [(key, client.get_async(key, r=r, timeout=5.0)) for key in keys]
        errors = {}
        for key, future in futures:
            try:
                values = future.get(10.0).values
            except LeaderlessError as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"[:300]
                continue
            if values != [key.encode()]:
                wrong.append([key, [v.decode(errors="replace") for v in values]])
        keys = list(errors)
        if not keys:
            break
        time.sleep(0.5 * (attempt + 1))
    return {"wrong": wrong, "errors": sorted(errors.items())}


def handle(client: Client, request: dict[str, Any], state: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "status":
        return client.status_all(timeout=request.get("timeout", 1.0))
    if op == "members":
        client.refresh_members()
        return {name: list(m) for name, m in client.members().items()}
    if op == "put":
        client.put(request["key"], request["value"].encode(), w=request.get("w"), timeout=request.get("timeout", 3.0))
        return True
    if op == "start_writes":
        state["writer"] = Writer(client, request["prefix"], request.get("w", 2), request.get("pause", 0.01))
        return True
    if op == "stop_writes":
        return state.pop("writer").stop()
    if op == "read_all":
        return read_all(client, request["keys"], request.get("r", 3))
    if op == "placement":
        client.refresh_members()
        ring = client.ring()
        nodes = sorted(ring.nodes)
        asked = {node: [(key, client._connection(node).request(InspectRequest, key)) for key in request["keys"]]
                 for node in nodes}                 # pipelined: every key of a node in flight at once
        holders: dict[str, list[str]] = {key: [] for key in request["keys"]}
        for node, futures in asked.items():
            for key, future in futures:
                if future.get(30.0) is not None:
                    holders[key].append(node)
        wrong = []
        for key in request["keys"]:
            primaries = sorted(ring.primaries(key, request.get("n", 3)))
            if sorted(holders[key]) != primaries:
                wrong.append([key, sorted(holders[key]), primaries])
        return {"wrong": wrong, "nodes": nodes}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    client = connect(seeds=args.seeds.split(","), secret=args.secret)
    state: dict[str, Any] = {}
    print(json.dumps({"ok": True, "result": sorted(client.addresses)}), flush=True)
    for line in sys.stdin:
        try:
            reply = {"ok": True, "result": handle(client, json.loads(line), state)}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the test as data
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply, default=str), flush=True)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
