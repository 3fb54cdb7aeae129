"""What a client process drives: leaderless, etcd (HTTP/JSON gateway, ``bench.etcd_client``), or a pysyncobj
replicated dict.

Every driver has the same two calls, so one loop (``bench.worker``) serves them all:

    handle = driver.submit("write", key, value)       # returns at once
    for handle, done_at, error in driver.wait(0.1):    # completions, in the order they happened
        ...

``done_at`` is the ``time.perf_counter()`` at which the reply arrived (stamped by the
thread that received it, not when the loop got round to it), so a slow request ahead of
a fast one does not inflate the fast one's latency.

A driver may also have ``submit_then(op, key, value, done)``, calling ``done(done_at, error)``
on the thread that received the reply; the worker then keeps its requests in flight from there.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable
from typing import Any

Completion = tuple[Any, float, BaseException | None]


def make_driver(target: dict[str, Any]) -> Any:
    kind = target["kind"]
    if kind == "leaderless":
        return LeaderlessDriver(target)
    if kind == "etcd":
        from .etcd_client import EtcdDriver
        return EtcdDriver(target)
    if kind == "pysyncobj":
        return SyncObjDriver(target)
    raise ValueError(f"unknown benchmark target {kind!r}")


def _drain(done: queue.SimpleQueue[Any], timeout: float) -> list[Any]:
    try:
        items = [done.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            items.append(done.get_nowait())
        except queue.Empty:
            return items


# --- leaderless -------------------------------------------------------------------------------

class Completions:
    """Futures completed on the connection thread, handed to the worker with one wake-up per batch.

    A ``SimpleQueue`` wakes a waiting worker on every ``put``: one futex call and one turn of the
    interpreter lock per reply (a quarter of a worker's CPU). Here the connection thread appends
    to a deque and wakes the worker only when it sleeps, so the replies of one frame cost one wake-up.
    """

    def __init__(self) -> None:
        self._done: deque[Any] = deque()
        self._sleeping = False
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()   # a token per wake-up (C-level)

    def put(self, item: Any) -> None:
        self._done.append(item)
        if self._sleeping:
            self._sleeping = False
            self._wake.put(None)

    def drain(self, timeout: float) -> list[Any]:
        """Everything completed so far, waiting up to ``timeout`` seconds for the first."""
        done = self._done
        if not done:
            self._sleeping = True           # say so before the last look: a put after it wakes us
            if not done:
                try:
                    self._wake.get(timeout=timeout)     # a stale token only makes one turn come back empty
                except queue.Empty:
                    pass
            self._sleeping = False
        items = []
        while done:
            items.append(done.popleft())
        return items


class LeaderlessDriver:
    """Requests through ``actors.Client``; each future's done callback stamps its reply.

    Besides ``submit``/``wait`` it has ``submit_then``: the worker's closed loop then runs on the
    client's I/O thread (a completion records itself and sends the next request), with no hand-over
    between threads per reply.
    """

    name = "leaderless"
    latency_source = "reply stamp"

    def __init__(self, target: dict[str, Any]) -> None:
        from actors import connect

        self.client = connect(target.get("data_dir"), seeds=target.get("seeds"), secret=target.get("secret"),
                              nodes=target.get("client_nodes"),
                              timeout=target.get("request_timeout"))
        self.bucket = target.get("bucket", "")
        self._completed = Completions()

    def _send(self, op: str, key: str, value: bytes) -> Any:
        if op == "read":
            return self.client.get_async(key, bucket=self.bucket)
        return self.client.put_async(key, value, bucket=self.bucket, serial=op == "cas")

    def submit(self, op: str, key: str, value: bytes) -> Any:
        future = self._send(op, key, value)
        put = self._completed.put
        future.add_done_callback(lambda f: put((f, time.perf_counter(), _error_of(f))))
        return future

    def wait(self, timeout: float) -> list[Completion]:
        return self._completed.drain(timeout)

    def submit_then(self, op: str, key: str, value: bytes, done: Callable[[float, BaseException | None], None]) -> None:
        """Send, and call ``done(done_at, error)`` on the client's I/O thread when the reply is in."""
        self._send(op, key, value).add_done_callback(lambda f: done(time.perf_counter(), _error_of(f)))

    def close(self) -> None:
        self.client.close()


def _error_of(future: Any) -> BaseException | None:
    try:
        future.get(0)
    except Exception as exc:                    # noqa: BLE001 - every failure is counted, by type
        return exc
    return None


# --- pysyncobj ------------------------------------------------------------------------------------

class _Handle:
    __slots__ = ()


class SyncObjDriver:
    """This process is one member of a 3-node pysyncobj cluster holding a ``ReplDict``.

    Writes are ``ReplDict.set`` with a callback (replicated through the Raft leader,
    answered when committed); reads are ``ReplDict.get``, the local copy: no quorum, so
    not comparable with a quorum read. pysyncobj's file journal is an mmap that is not
    flushed before a write is acknowledged.
    """

    name = "pysyncobj"
    latency_source = "reply stamp"

    def __init__(self, target: dict[str, Any]) -> None:
        from pysyncobj import SyncObj, SyncObjConf
        from pysyncobj.batteries import ReplDict

        self.dict = ReplDict()
        conf = SyncObjConf(journalFile=target["journal"], fullDumpFile=target["journal"] + ".dump",
                           dynamicMembershipChange=False, commandsWaitLeader=True, useFork=False,
                           connectionRetryTime=0.5)
        self.obj = SyncObj(target["self"], list(target["partners"]), conf=conf, consumers=[self.dict])
        self._done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        deadline = time.monotonic() + float(target.get("start_timeout", 30.0))
        while not self._ready():
            if time.monotonic() > deadline:
                raise RuntimeError("pysyncobj elected no leader in time")
            time.sleep(0.05)

    def _ready(self) -> bool:
        status = self.obj.getStatus()
        connected = [v for k, v in status.items() if k.startswith("partner_node_status_server_")]
        return status.get("leader") is not None and bool(status.get("has_quorum")) and all(v == 2 for v in connected)

    def submit(self, op: str, key: str, value: bytes) -> Any:
        handle = _Handle()
        if op == "read":
            self.dict.get(key)
            self._done.put((handle, time.perf_counter(), None))
        else:
            self.dict.set(key, value, callback=lambda _result, error, h=handle: self._finished(h, error))
        return handle

    def _finished(self, handle: Any, error: int) -> None:
        failure = None if error == 0 else RuntimeError(f"pysyncobj failed the write (reason {error})")
        self._done.put((handle, time.perf_counter(), failure))

    def wait(self, timeout: float) -> list[Completion]:
        return _drain(self._done, timeout)

    def close(self) -> None:
        self.obj.destroy()
