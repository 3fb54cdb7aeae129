"""Client: the API workload scripts use.

    client = connect("./leaderless-data")          # or cluster.client()
    ctx = client.put("cart:priya", b"milk")
    obj = client.get("cart:priya")                  # obj.values (siblings), obj.context
    client.put("cart:priya", b"milk,eggs", context=obj.context)
    futures = [client.put_async(f"k{i}", b"v") for i in range(1000)]
    futures[0].add_done_callback(lambda f: ...)    # runs when the reply is in (client's I/O thread)

One authenticated connection per node, opened on first use; many requests in flight on
each (pipelining); replies matched by request id. Requests go round-robin over the
client's nodes; a node that cannot be reached is skipped for the next one (from a done
callback, on the client's I/O thread, so is a node whose connection is not open: it is
reopened on a thread of its own, which that I/O thread never waits for). Every future
is done by its deadline (the request's timeout plus ``REPLY_MARGIN``; without one, the
nodes' own timeout from the cluster's configuration plus that margin, else ``DEFAULT_WAIT``):
with the reply, or with ``RequestTimeout`` when a node (paused, cut off) never answers, so
done callbacks always run. A client is safe to share between threads.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pykka

from .config import ClusterConfig, load_secret
from .errors import (AuthenticationFailed, ClusterUnavailable, ConnectionError_, InvalidRequest, LeaderlessError,
                     ProtocolError, QuorumFailed, RequestTimeout)
from .ioloop import shared_loop
from .limits import check_key, check_value
from .messages import (BucketCreate, BucketInfo, ClientGet, ClientPut, ClientUpdate, ConfigRequest, GetResult, Hello,
                       InspectRequest, LocalObject, Reply, RingChange, SetFaults, StatusRequest)
from .transport import Connection
from .wire import FrameReader, client_handshake, encode

if TYPE_CHECKING:
    from .buckets import Bucket, Session

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
RETRY_BACKOFF = 0.05    # seconds before the first retry of an idempotent operation; doubles each time
REPLY_MARGIN = 2.0      # seconds a blocking call waits beyond the server-side request timeout
DEFAULT_WAIT = 30.0     # seconds a blocking call waits when the node's own default timeout applies
SWEEP_S = 0.25          # how often a connection with requests out fails the overdue ones
REOPEN_PAUSE = 1.0      # seconds between background attempts to reopen one node's connection


class Future(pykka.ThreadingFuture):
    """A pending reply; ``get(timeout)`` raises ``RequestTimeout`` when it does not come in time.

    A Pykka ``ThreadingFuture`` (``pykka.get_all`` and the other Pykka helpers take it) that
    waits on a plain lock, released once when the reply is set, instead of a ``Condition``:
    a client makes one per request, and the condition's allocation and notification were a
    tenth of a benchmark client's CPU.
    """

    _deadline = math.inf                    # (monotonic) when its connection fails it with RequestTimeout

    def __init__(self) -> None:
        pykka.Future.__init__(self)
        self._result: Any = None
        self._ready = threading.Lock()
        self._ready.acquire()
        self._callbacks: list[Callable[[Future], None]] | None = None

    def get(self, timeout: float | None = None) -> Any:
        if self._result is None:
            if self._get_hook is not None:
                return pykka.Future.get(self, timeout=timeout)
            if not self._ready.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                raise RequestTimeout(f"no reply within {timeout}s")
            self._ready.release()
            if self._result is None:                     # woken by a get hook
                return pykka.Future.get(self, timeout=timeout)
        value, exc_info = self._result
        if exc_info is not None:
            raise exc_info[1].with_traceback(exc_info[2])
        return value

    def set(self, value: Any = None) -> None:
        self._complete((value, None))

    def set_exception(self, exc_info: Any = None) -> None:
        self._complete((None, exc_info or sys.exc_info()))

    def set_get_hook(self, func: Any) -> None:
        pykka.Future.set_get_hook(self, func)
        self._ready.release()

    def add_done_callback(self, fn: Callable[[Future], None]) -> None:
        """Call ``fn(future)`` once the reply (or the failure) is in; at once, on this thread, if it already is.

        Otherwise ``fn`` runs on the client's I/O thread, so it must not block: it may read the result with
        ``get(0)`` and send further requests. Pipelined scripts use it to keep requests in flight
        without a thread waiting on each one. It runs by the request's deadline at the latest
        (``RequestTimeout`` if no reply came). An exception from ``fn`` is logged and ignored.
        A request sent from ``fn`` goes to a node whose connection is open (a closed one is
        reopened in the background), so ``fn`` never waits for a connect.
        """
        with _CALLBACKS:
            if self._result is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        _run_callback(fn, self)

    def _complete(self, result: tuple[Any, Any]) -> None:
        with _CALLBACKS:
            if self._result is not None:
                raise queue.Full
            self._result = result
            callbacks, self._callbacks = self._callbacks, None
        self._ready.release()
        if callbacks:
            for fn in callbacks:
                _run_callback(fn, self)


_CALLBACKS = threading.Lock()        # orders adding a callback against completing its future


def _run_callback(fn: Callable[[Future], None], future: Future) -> None:
    try:
        fn(future)
    except Exception:  # a script's callback must not stop the connection that delivered the reply
        log.exception("a done callback failed")


def _fail(future: Future, error: BaseException) -> None:
    try:
        raise error
    except BaseException:
        future.set_exception(sys.exc_info())


class NodeConnection:
    """One pipelined connection to one node."""

    def __init__(self, name: str, address: tuple[str, int], secret: bytes) -> None:
        self.name = name
        self.address = address
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._sweeping = False              # a look for overdue requests is due on the loop
        self._loop = shared_loop()
        try:
            sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise ClusterUnavailable(f"cannot reach node {name} at {address[0]}:{address[1]}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client_handshake(sock, secret)
        except OSError as exc:
            sock.close()
            raise ClusterUnavailable(f"node {name} at {address[0]}:{address[1]} dropped the connection: {exc}") \
                from exc
        except LeaderlessError:
            sock.close()
            raise
        self._conn = Connection(sock, "node", name, self._on_frames, self._on_close, self._loop)
        self._conn.send(Hello("client"))
        self._conn.start(FrameReader(), [])

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def request(self, make: Any, *args: Any, wait: float = DEFAULT_WAIT) -> Future:
        """Send ``make(req_id, *args)``; the returned future holds the reply's result, or
        ``RequestTimeout`` if none came within ``wait`` seconds."""
        future = Future()
        future._deadline = time.monotonic() + wait
        with self._lock:
            if self._conn.closed:
                raise ConnectionError_(f"connection to {self.name} is closed")
            req_id = next(self._ids)
            self._pending[req_id] = future
            sweep = not self._sweeping
            self._sweeping = True
        self._conn.send_data(encode(make(req_id, *args)))
        if sweep:
            self._loop.call_later(SWEEP_S, self._sweep)
        return future

    def close(self) -> None:
        self._conn.close()

    def _on_frames(self, _conn: Connection, messages: list[Any]) -> None:
        for message in messages:
            if not isinstance(message, Reply):
                log.warning("node %s sent an unexpected %s", self.name, type(message).__name__)
                continue
            with self._lock:
                future = self._pending.pop(message.req_id, None)
            if future is None:
                continue
            if message.ok:
                future.set(message.result)
            elif isinstance(message.result, BaseException):
                _fail(future, message.result)
            else:
                _fail(future, ProtocolError(f"node {self.name} sent a malformed error"))

    def _sweep(self) -> None:
        """On the loop: fail the requests past their deadline; look again while any are out."""
        now = time.monotonic()
        with self._lock:
            overdue = [req_id for req_id, future in self._pending.items() if future._deadline <= now]
            expired = [self._pending.pop(req_id) for req_id in overdue]
            again = self._sweeping = bool(self._pending)
        if again:
            self._loop.call_later(SWEEP_S, self._sweep)
        for future in expired:
            _fail(future, RequestTimeout(f"no reply from {self.name} by the request's deadline "
                                         "(the request may or may not have been applied)"))

    def _on_close(self, _conn: Connection) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            _fail(future, ConnectionError_(f"connection to {self.name} closed before the reply "
                                           "(the request may or may not have been applied)"))


class Client:
    """Talks to a cluster through some of its nodes (all of them by default).

    ``timeout``: sent with every request that names none (None: the nodes' own default).
    ``node_timeout``: that default, the cluster configuration's ``timeout`` (``connect`` and
    ``LocalCluster.client`` pass it); a request sent without a timeout is waited for that
    long plus ``REPLY_MARGIN``, or ``DEFAULT_WAIT`` when it is not known.
    """

    def __init__(self, addresses: Mapping[str, tuple[str, int]], secret: bytes, *, timeout: float | None = None,
                 nodes: Iterable[str] | None = None, node_timeout: float | None = None) -> None:
        chosen = list(nodes) if nodes is not None else sorted(addresses)
        unknown = [n for n in chosen if n not in addresses]
        if unknown:
            raise ClusterUnavailable(f"unknown nodes {', '.join(unknown)}; the cluster has {', '.join(addresses)}")
        if not chosen:
            raise ClusterUnavailable("a client needs at least one node")
        self.addresses = {name: tuple(addresses[name]) for name in chosen}
        self._names = tuple(self.addresses)
        self._all_addresses = dict(addresses)
        self._secret = secret
        self.timeout = timeout
        self.node_timeout = node_timeout
        self._connections: dict[str, NodeConnection] = {}
        self._lock = threading.Lock()
        self._rr = itertools.count()
        self._reopening: dict[str, float] = {}     # node -> when a background reopen may start again
        self._reopen_lock = threading.Lock()        # not ``_lock``: a connect holds that one
        self._closes = 0                            # how many times ``close`` ran

    # --- key-value API (contract) --------------------------------------------------------

    def put(self, key: str, value: bytes, context: Any = None, *, w: int | str | None = None,
            timeout: float | None = None, bucket: str = "", if_context: Any = None,
            if_absent: bool = False) -> tuple:
        """Write ``value`` after ``context``; returns the new causal context.

        ``if_context=ctx`` / ``if_absent=True`` make it conditional: ``VersionMismatch`` when the
        key's replica that checks it holds something else (not linearizable: see README).
        """
        return self._wait(self.put_async(key, value, context, w=w, timeout=timeout, bucket=bucket,
                                         if_context=if_context, if_absent=if_absent), timeout)

    def get(self, key: str, *, r: int | str | None = None, timeout: float | None = None,
            bucket: str = "") -> GetResult:
        """Read every sibling of ``key``: ``.values`` ([] when absent or deleted) and ``.context``."""
        return self._wait(self.get_async(key, r=r, timeout=timeout, bucket=bucket), timeout)

    def delete(self, key: str, context: Any = None, *, w: int | str | None = None,
               timeout: float | None = None, bucket: str = "") -> tuple:
        """Write a tombstone after ``context``; returns the tombstone's context."""
        return self._wait(self.delete_async(key, context, w=w, timeout=timeout, bucket=bucket), timeout)

    def put_async(self, key: str, value: bytes, context: Any = None, *, w: int | str | None = None,
                  timeout: float | None = None, bucket: str = "", if_context: Any = None,
                  if_absent: bool = False) -> Future:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        check_key(bucket, key)                      # over a limit: InvalidRequest now, before anything is sent
        check_value(value)
        condition = _condition(if_context, if_absent)
        if context is None and if_context is not None:
            context = if_context                  # it replaces the version it is conditional on
        timeout = timeout or self.timeout
        return self._send(ClientPut, key, bytes(value), tuple(context or ()), w, timeout, bucket, condition,
                          wait=self._reply_wait(timeout))

    def get_async(self, key: str, *, r: int | str | None = None, timeout: float | None = None,
                  bucket: str = "") -> Future:
        check_key(bucket, key)
        timeout = timeout or self.timeout
        return self._send(ClientGet, key, r, timeout, bucket, wait=self._reply_wait(timeout))

    def delete_async(self, key: str, context: Any = None, *, w: int | str | None = None,
                     timeout: float | None = None, bucket: str = "") -> Future:
        check_key(bucket, key)
        timeout = timeout or self.timeout
        return self._send(ClientPut, key, None, tuple(context or ()), w, timeout, bucket,
                          wait=self._reply_wait(timeout))

    # --- buckets and sessions ------------------------------------------------------------

    def create_bucket(self, name: str, type: str = "siblings", *, n: int | None = None,
                      r: int | str | None = None, w: int | str | None = None) -> "Bucket":
        """Create a bucket (on every node this client reaches; gossip tells the rest) and return it.

        Creating an existing bucket with the same properties returns it; other properties
        are an error. Types: siblings, lww, counter, set, map, register, flag.
        """
        props = None
        errors: list[str] = []
        for node in self._all_addresses:
            try:
                props = self._connection(node).request(BucketCreate, name, type, n, r, w).get(10.0)
            except InvalidRequest:
                raise
            except LeaderlessError as exc:
                errors.append(f"{node}: {exc}")
        if props is None:
            raise ClusterUnavailable("no node could create the bucket: " + "; ".join(errors))
        from .buckets import Bucket
        return Bucket(self, props)

    def bucket(self, name: str) -> "Bucket":
        """An existing bucket, its type read from the cluster (``UnknownBucket`` if none)."""
        from .buckets import Bucket
        return Bucket(self, self._retrying(BucketInfo, name, attempts=len(self.addresses)))

    def session(self, timeout: float | None = None, token: Any = None) -> "Session":
        """Read-your-writes and monotonic reads, across coordinators (see ``Session``);
        ``token`` (another session's ``.token``) continues that session here."""
        from .buckets import Session
        return Session(self, timeout, token)

    def update(self, bucket: str, key: str, op: tuple, *, w: int | str | None = None,
               timeout: float | None = None, op_id: str | None = None, attempts: int = 3,
               context: Any = None) -> tuple:
        """Apply a CRDT operation; retried on timeouts and ``QuorumFailed`` with the same operation id,
        so it is applied once. Returns the new context.

        ``context`` (removes): the context of the read the remove is based on; it removes exactly what
        that read observed, even on a replica that is behind. Without one, the key's first reachable
        primary removes what it holds (``NotPresent`` if that is nothing). ``Bucket.remove`` reads first.
        """
        op_id = op_id or uuid.uuid4().hex
        observed = None if context is None else tuple(tuple(pair) for pair in context)
        return self._retrying(ClientUpdate, bucket, key, tuple(op), op_id, w, timeout or self.timeout, observed,
                              attempts=attempts, timeout=timeout)

    def _retrying(self, make: Any, *args: Any, attempts: int = 3, timeout: float | None = None) -> Any:
        delay = RETRY_BACKOFF
        for attempt in range(attempts):
            try:
                return self._wait(self._send(make, *args, wait=self._reply_wait(timeout)), timeout)
            except (RequestTimeout, QuorumFailed, ClusterUnavailable) as exc:
                if attempt == attempts - 1:
                    raise
                log.info("retrying %s after %s (attempt %d of %d)", make.__name__, exc, attempt + 2, attempts)
            except ConnectionError_ as exc:
                if isinstance(exc, AuthenticationFailed) or attempt == attempts - 1:
                    raise
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    # --- per-node calls (used by LocalCluster and the CLI) --------------------------------

    def status(self, node: str, timeout: float = 5.0) -> dict[str, Any]:
        return self._connection(node).request(StatusRequest).get(timeout)

    def status_all(self, timeout: float = 2.0) -> dict[str, dict[str, Any]]:
        """Every node's status, in node order; a node that does not answer shows ``{"up": False}``."""
        out: dict[str, dict[str, Any]] = {}
        for node in self._all_addresses:
            try:
                out[node] = self.status(node, timeout=timeout)
            except LeaderlessError as exc:
                self._forget(node)
                out[node] = {"name": node, "up": False, "error": str(exc)}
        return out

    def ring_change(self, node: str, action: str, name: str, host: str = "", port: int = 0,
                    timeout: float = 10.0, force: bool = False) -> int:
        """Ask ``node`` to add (``join``) or remove (``leave``) ``name``; returns the new ring version.

        A leave that would leave fewer members than the largest n in use is refused unless ``force``."""
        return self._connection(node).request(RingChange, action, name, host, port, force).get(timeout)

    def cluster_config(self, node: str, timeout: float = 5.0) -> dict[str, Any]:
        """The cluster's configuration and member addresses, as ``node`` knows them."""
        return self._connection(node).request(ConfigRequest).get(timeout)

    def inspect(self, node: str, key: str, timeout: float = 5.0) -> LocalObject | None:
        return self._connection(node).request(InspectRequest, key).get(timeout)

    def set_faults(self, node: str, blocked: Iterable[str] = (), delay_ms: float = 0.0, loss: float = 0.0,
                   duplicate: float = 0.0, reorder_ms: float = 0.0, clock_skew: float = 0.0,
                   drop_replies: int = 0, timeout: float = 5.0) -> None:
        """Replace every fault injected into ``node`` (see ``messages.SetFaults``)."""
        self._connection(node).request(SetFaults, tuple(blocked), float(delay_ms), float(loss), float(duplicate),
                                       float(reorder_ms), float(clock_skew), int(drop_replies)).get(timeout)

    def close(self) -> None:
        with self._lock:
            self._closes += 1
            conns, self._connections = list(self._connections.values()), {}
        for conn in conns:
            conn.close()

    def _forget(self, node: str) -> None:
        with self._lock:
            conn = self._connections.pop(node, None)
        if conn is not None:
            conn.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------

    def _wait(self, future: Future, timeout: float | None) -> Any:
        """Wait for a reply, as long as ``_reply_wait`` says."""
        return future.get(timeout=self._reply_wait(timeout))

    def _reply_wait(self, timeout: float | None) -> float:
        """How long a reply is waited for: the request's timeout (which the node enforces), else the
        nodes' own, plus a margin; when neither is known, long enough for any sane default."""
        limit = timeout or self.timeout or self.node_timeout
        return limit + REPLY_MARGIN if limit else DEFAULT_WAIT

    def _send(self, make: Any, *args: Any, wait: float = DEFAULT_WAIT) -> Future:
        names = self._names
        start = next(self._rr)
        conn = self._connections.get(names[start % len(names)])
        if conn is not None:                         # the common case: that node's connection is open
            try:
                return conn.request(make, *args, wait=wait)
            except ConnectionError_:
                pass
        errors: list[str] = []
        on_loop = shared_loop().on_loop_thread()    # a done callback: never wait for a connect here
        for i in range(len(names)):
            name = names[(start + i) % len(names)]
            try:
                if on_loop:
                    conn = self._connections.get(name)
                    if conn is None or conn.closed:
                        self._reopen_later(name)
                        raise ConnectionError_(f"no open connection to {name} (reopening it in the background)")
                else:
                    conn = self._connection(name)
                return conn.request(make, *args, wait=wait)
            except AuthenticationFailed:
                raise
            except ConnectionError_ as exc:
                errors.append(str(exc))
        raise ClusterUnavailable("no node could be reached: " + "; ".join(errors))

    def _reopen_later(self, name: str) -> None:
        """Reopen ``name``'s connection on a thread of its own, at most once per ``REOPEN_PAUSE``."""
        now = time.monotonic()
        with self._reopen_lock:
            if self._reopening.get(name, 0.0) > now:
                return
            self._reopening[name] = now + REOPEN_PAUSE

        closes = self._closes

        def reopen() -> None:
            try:
                self._connection(name)
            except LeaderlessError as exc:
                log.debug("reopening the connection to %s failed: %s", name, exc)
                return
            if self._closes != closes:               # the client was closed meanwhile: leave nothing open
                self._forget(name)

        threading.Thread(target=reopen, name=f"client-reopen-{name}", daemon=True).start()

    def _connection(self, name: str) -> NodeConnection:
        conn = self._connections.get(name)
        if conn is not None and not conn.closed:
            return conn
        with self._lock:
            conn = self._connections.get(name)
            if conn is None or conn.closed:
                address = self._all_addresses.get(name)
                if address is None:
                    raise ClusterUnavailable(f"unknown node {name}")
                conn = self._connections[name] = NodeConnection(name, tuple(address), self._secret)
        return conn


def _condition(if_context: Any, if_absent: bool) -> tuple | None:
    if if_absent and if_context is not None:
        raise InvalidRequest("a write is either if_absent or if_context, not both")
    if if_absent:
        return ("if_absent",)
    if if_context is not None:
        return ("if_context", tuple(if_context))
    return None


def connect(data_dir: str, *, nodes: Iterable[str] | None = None, timeout: float | None = None) -> Client:
    """A client for the cluster whose data directory is ``data_dir`` (addresses and secret read from it)."""
    config = ClusterConfig.load(data_dir)
    return Client(config.nodes, load_secret(data_dir), nodes=nodes, timeout=timeout, node_timeout=config.timeout)
