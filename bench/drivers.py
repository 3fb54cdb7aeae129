"""What a client process drives: leaderless, etcd (HTTP/JSON gateway, ``bench.etcd_client``), or a pysyncobj
replicated dict.

Every driver has the same two calls, so one loop (``bench.worker``) serves them all:

    handle = driver.submit("write", key, value)       # returns at once
    for handle, done_at, error in driver.wait(0.1):    # completions, in the order they happened
        ...

``done_at`` is the ``time.perf_counter()`` at which the reply arrived (stamped by the
thread that received it, not when the loop got round to it), so a slow request ahead of
a fast one does not inflate the fast one's latency.
"""

from __future__ import annotations

import queue
import time
from collections import deque
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


_COMPLETED = Completions()
_PATCHED = False


def _install_timed_futures() -> None:
    """Make this process's client futures stamp their completion time and report it.

    The client builds its futures from ``actors.client.Future``; in a benchmark worker
    that name is pointed at a subclass that, when the reply is set by the connection's
    reader thread, records ``perf_counter()`` and puts itself on a queue. Nothing
    changes for the store; if the client stops using that name, the driver notices and
    falls back to waiting on the oldest request first.
    """
    global _PATCHED
    if _PATCHED:
        return
    from actors import client as client_module

    class TimedFuture(client_module.Future):        # type: ignore[misc,name-defined]
        done_at = 0.0
        error: BaseException | None = None

        def set(self, value: Any = None) -> None:
            stamp = time.perf_counter()
            super().set(value)
            self.done_at = stamp
            _COMPLETED.put(self)

        def set_exception(self, exc_info: Any = None) -> None:
            stamp = time.perf_counter()
            super().set_exception(exc_info)
            self.done_at = stamp
            self.error = exc_info[1] if exc_info else RuntimeError("request failed")
            _COMPLETED.put(self)

    client_module.Future = TimedFuture           # type: ignore[misc]
    _PATCHED = True


class LeaderlessDriver:
    name = "leaderless"

    def __init__(self, target: dict[str, Any]) -> None:
        from actors import connect

        _install_timed_futures()
        self.client = connect(target["data_dir"], nodes=target.get("client_nodes"),
                              timeout=target.get("request_timeout"))
        self.bucket = target.get("bucket", "")
        self.reply_wait = float(target.get("request_timeout") or 3.0) + 5.0
        self._fifo: deque[Any] = deque()
        self.stamped: bool | None = None        # do futures carry their completion time?

    @property
    def latency_source(self) -> str:
        return "reply stamp" if self.stamped is not False else "oldest-first wait"

    def submit(self, op: str, key: str, value: bytes) -> Any:
        if op == "read":
            future = self.client.get_async(key, bucket=self.bucket)
        else:
            future = self.client.put_async(key, value, bucket=self.bucket)
        if self.stamped is None:
            self.stamped = hasattr(future, "done_at")
        if not self.stamped:
            self._fifo.append(future)
        return future

    def wait(self, timeout: float) -> list[Completion]:
        if self.stamped is not False:
            return [(f, f.done_at, f.error) for f in _COMPLETED.drain(timeout)]
        if not self._fifo:
            time.sleep(min(timeout, 0.01))
            return []
        future = self._fifo.popleft()
        try:
            future.get(timeout=self.reply_wait)
            return [(future, time.perf_counter(), None)]
        except Exception as exc:                # noqa: BLE001 - every failure is counted, by type
            return [(future, time.perf_counter(), exc)]

    def close(self) -> None:
        self.client.close()


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
