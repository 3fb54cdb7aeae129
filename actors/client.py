"""Client: the API workload scripts use.

    client = connect("./leaderless-data")          # or cluster.client()
    client = connect(seeds=["10.0.0.1:7001"], secret="/etc/leaderless/secret")   # a cluster across hosts
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

A client follows the membership: every ``REFRESH_S`` seconds, and soon after a connection
to a node fails, it asks one node it is connected to for every member's address and state
(``MembersRequest``, on its I/O thread, never waiting), and from then on sends to nodes that
joined, not to nodes that left, and to a node that moved at its new address. A node that
could not be reached, or that the cluster sees down, is tried after the others.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import socket
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pykka

from .config import ClusterConfig, load_secret, parse_seeds, read_secret_file
from .errors import (AuthenticationFailed, ClusterUnavailable, ConnectionError_, InvalidRequest, LeaderlessError,
                     ProtocolError, QuorumFailed, RequestTimeout)
from .ioloop import shared_loop
from .limits import check_key, check_value
from .messages import (BucketCreate, BucketInfo, ClientGet, ClientPut, ClientUpdate, ConfigRequest, GetResult, Hello,
                       InspectRequest, LocalObject, MembersRequest, Reply, RingChange, SetFaults, StatusRequest)
from .transport import Connection, keep_alive
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
REFRESH_S = 5.0         # how often a client asks a node it is connected to for the members (joins, leaves, moves)
REFRESH_SOON_S = 1.0    # after a connection fails, the members are asked for again, at most this often
AVOID_S = 3.0           # a node that could not be connected to is tried after the others for this long


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

    def __init__(self, name: str, address: tuple[str, int], secret: bytes,
                 on_close: Callable[[], None] | None = None) -> None:
        self.name = name
        self.address = address
        self._closed_hook = on_close
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
            keep_alive(sock)            # a node whose host is cut off fails its requests within seconds
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
        if self._closed_hook is not None:
            self._closed_hook()


class Client:
    """Talks to a cluster through some of its nodes (all of them by default).

    ``timeout``: sent with every request that names none (None: the nodes' own default).
    ``node_timeout``: that default, the cluster configuration's ``timeout`` (``connect`` and
    ``LocalCluster.client`` pass it); a request sent without a timeout is waited for that
    long plus ``REPLY_MARGIN``, or ``DEFAULT_WAIT`` when it is not known.
    ``follow``: keep the members current (see the module docstring); a client given ``nodes``
    keeps to those (their addresses still follow), others use every member.
    ``seeds``: addresses to learn the members from again when no known member can be reached.
    """

    def __init__(self, addresses: Mapping[str, tuple[str, int]], secret: bytes, *, timeout: float | None = None,
                 nodes: Iterable[str] | None = None, node_timeout: float | None = None, follow: bool = True,
                 seeds: Iterable[tuple[str, int]] = ()) -> None:
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
        self._chosen = nodes is not None            # the caller picked the nodes: members that join are not added
        self._seeds = list(seeds)
        self._states: dict[str, str] = {}           # member -> state, as the last node asked saw it
        self._ring: tuple[int, Any] = (-1, None)    # (version, data) of the newest ring a node told of
        self._incarnations: dict[str, int] = {}     # member -> the newest incarnation a node told of
        self._avoid: dict[str, float] = {}          # node -> until when it is tried after the others
        self._members_lock = threading.Lock()
        self._asking = False                        # a MembersRequest is out
        self._asked_at = -math.inf                  # when the members were last asked for
        self._learnt_at = -math.inf                 # when an answer last came in
        self._soon_at = -math.inf                   # no failure-triggered ask before this
        self._rediscover_at = -math.inf             # no new look at the seeds before this
        if follow:
            _follow(weakref.ref(self))

    # --- key-value API (contract) --------------------------------------------------------

    def put(self, key: str, value: bytes, context: Any = None, *, w: int | str | None = None,
            timeout: float | None = None, bucket: str = "", if_context: Any = None,
            if_absent: bool = False, serial: bool = False) -> tuple:
        """Write ``value`` after ``context``; returns the new causal context.

        ``if_context=ctx`` / ``if_absent=True`` make it conditional: ``VersionMismatch`` when the
        key's replica that checks it holds something else (not linearizable: see README).
        ``serial=True``: linearizable, by Paxos among the key's primaries (a majority must answer;
        ``w`` is not used); ``QuorumFailed`` and ``RequestTimeout`` then mean the write may or may not
        take effect, ``VersionMismatch`` that it certainly did not (it carries the current values).
        """
        return self._wait(self.put_async(key, value, context, w=w, timeout=timeout, bucket=bucket,
                                         if_context=if_context, if_absent=if_absent, serial=serial), timeout)

    def get(self, key: str, *, r: int | str | None = None, timeout: float | None = None,
            bucket: str = "", serial: bool = False) -> GetResult:
        """Read every sibling of ``key``: ``.values`` ([] when absent or deleted) and ``.context``.

        ``serial=True``: a linearizable read (a Paxos round among the key's primaries; ``r`` is not used)."""
        return self._wait(self.get_async(key, r=r, timeout=timeout, bucket=bucket, serial=serial), timeout)

    def delete(self, key: str, context: Any = None, *, w: int | str | None = None,
               timeout: float | None = None, bucket: str = "") -> tuple:
        """Write a tombstone after ``context``; returns the tombstone's context."""
        return self._wait(self.delete_async(key, context, w=w, timeout=timeout, bucket=bucket), timeout)

    def put_async(self, key: str, value: bytes, context: Any = None, *, w: int | str | None = None,
                  timeout: float | None = None, bucket: str = "", if_context: Any = None,
                  if_absent: bool = False, serial: bool = False) -> Future:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"value must be bytes, got {type(value).__name__}")
        check_key(bucket, key)                      # over a limit: InvalidRequest now, before anything is sent
        check_value(value)
        condition = _condition(if_context, if_absent)
        if context is None and if_context is not None:
            context = if_context                  # it replaces the version it is conditional on
        timeout = timeout or self.timeout
        return self._send(ClientPut, key, bytes(value), tuple(context or ()), w, timeout, bucket, condition,
                          bool(serial), wait=self._reply_wait(timeout))

    def get_async(self, key: str, *, r: int | str | None = None, timeout: float | None = None,
                  bucket: str = "", serial: bool = False) -> Future:
        check_key(bucket, key)
        timeout = timeout or self.timeout
        return self._send(ClientGet, key, r, timeout, bucket, None, bool(serial), wait=self._reply_wait(timeout))

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
        """Every node's status, in node order; a node that does not answer shows ``{"up": False}`` with the
        address it was tried at and its state as the cluster sees it (down, left...), when known. The
        members are asked for first when they were not lately, so a member that joined since is there."""
        now = time.monotonic()
        if now - max(self._learnt_at, self._asked_at) > REFRESH_S:
            self._asked_at = now
            self.refresh_members(min(timeout, 1.0), tries=1)
        out: dict[str, dict[str, Any]] = {}
        for node, address in list(self._all_addresses.items()):
            try:
                out[node] = self.status(node, timeout=timeout)
            except LeaderlessError as exc:
                self._forget(node)
                seen = self._states.get(node)          # the cluster's view: left, down, or up but not reached from here
                out[node] = {"name": node, "up": False, "address": list(address),
                             "state": seen if seen in ("left", "down") else "unreachable", "error": str(exc)}
        return out

    # --- membership: following joins, leaves and moves -------------------------------------

    def members(self) -> dict[str, tuple[str, int, str]]:
        """Every member this client knows: ``name -> (host, port, state)`` (state as the last node asked saw
        it; "unknown" before any answer)."""
        return {name: (*address, self._states.get(name, "unknown")) for name, address in self._all_addresses.items()}

    def ring(self) -> Any:
        """The newest ring the nodes told this client of (an ``actors.ring.Ring``; None before any answer):
        ``client.ring().primaries(key, n)`` are the nodes that should hold ``key``."""
        data = self._ring[1]
        if data is None:
            return None
        from .ring import Ring
        return Ring.from_data(data)

    def refresh_members(self, timeout: float = 5.0, tries: int | None = None) -> bool:
        """Ask for the members now, waiting: the nodes one after the other (at most ``tries`` of them, each for
        at most ``timeout``) until one answers, then the seeds; True if one did."""
        for name in self._order(list(self._names))[:tries]:
            try:
                answer = self._connection(name).request(MembersRequest).get(timeout)
            except AuthenticationFailed:
                raise
            except LeaderlessError:
                continue
            self._learn(answer)
            return True
        return self._rediscover() if tries is None else False

    def _ask_members(self) -> None:
        """Ask a node this client is connected to for the members, without waiting (any thread)."""
        if self._asking:
            return
        conns = [conn for conn in list(self._connections.values()) if not conn.closed]
        if not conns:
            return                                  # idle: the next request opens a connection
        conn = conns[int(time.monotonic() * 1000) % len(conns)]
        self._asking = True
        self._asked_at = time.monotonic()
        try:
            future = conn.request(MembersRequest, wait=REFRESH_S)
        except ConnectionError_:
            self._asking = False
            return
        future.add_done_callback(self._members_in)

    def _members_in(self, future: Future) -> None:
        self._asking = False
        try:
            self._learn(future.get(0))
        except LeaderlessError as exc:
            log.debug("asking for the members failed: %s", exc)

    def _ask_soon(self) -> None:
        """A connection failed: ask for the members (a node may have moved or left), at most once a second."""
        now = time.monotonic()
        if now < self._soon_at:
            return
        self._soon_at = now + REFRESH_SOON_S
        self._ask_members()

    def _learn(self, answer: Mapping[str, Any]) -> None:
        """Take a node's ``MembersRequest`` answer: new members, moved ones, states."""
        members = answer.get("members") if isinstance(answer, Mapping) else None
        if not isinstance(members, Mapping):
            return
        moved: list[str] = []
        with self._members_lock:
            all_addresses = dict(self._all_addresses)
            addresses = dict(self.addresses)
            states: dict[str, str] = {}
            for name, member in sorted(members.items()):
                host, port, state = member[:3]
                incarnation = int(member[3]) if len(member) > 3 else 0
                address = (str(host), int(port))
                states[name] = state
                if incarnation < self._incarnations.get(name, 0):
                    continue                        # that node has not heard of the member's restart yet
                self._incarnations[name] = incarnation
                old = all_addresses.get(name)
                if old is not None and old != address:
                    moved.append(name)
                all_addresses[name] = address
                if state == "left":
                    addresses.pop(name, None)
                elif name in addresses or not self._chosen:
                    addresses[name] = address
            self._states = states
            version = answer.get("ring_version")
            if isinstance(version, int) and version >= self._ring[0] and answer.get("ring") is not None:
                self._ring = (version, answer["ring"])
            if all_addresses != self._all_addresses:
                self._all_addresses = all_addresses
            if addresses and addresses != self.addresses:
                joined = [n for n in addresses if n not in self.addresses]
                left = [n for n in self.addresses if n not in addresses]
                if joined or left:
                    log.info("client: members joined %s, left %s", joined or "-", left or "-")
                self.addresses = addresses
                self._names = tuple(addresses)
            self._learnt_at = time.monotonic()
        for name in moved:
            log.info("client: %s moved to %s:%s", name, *all_addresses[name])
            conn = self._connections.pop(name, None)      # no lock: a connect may hold it (never on the loop)
            if conn is not None:
                conn.close()
            self._avoid.pop(name, None)

    def _rediscover(self) -> bool:
        """Learn the members from the seeds again (no known member answered); at most once per ``AVOID_S``."""
        now = time.monotonic()
        if not self._seeds or now < self._rediscover_at:
            return False
        self._rediscover_at = now + AVOID_S
        try:
            self._learn(discover(self._seeds, self._secret))
        except AuthenticationFailed:
            raise
        except LeaderlessError as exc:
            log.debug("no seed answered: %s", exc)
            return False
        return True

    def _order(self, names: list[str]) -> list[str]:
        """``names`` with the nodes to avoid (could not be connected to lately, or down) moved to the end."""
        if not self._avoid and "down" not in self._states.values():
            return names
        now = time.monotonic()
        later = [n for n in names if self._avoid.get(n, 0.0) > now or self._states.get(n) == "down"]
        return [n for n in names if n not in later] + later if later else names

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
        for name in self._order([names[(start + i) % len(names)] for i in range(len(names))]):
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
        if self._seeds and not on_loop and self._rediscover():     # every member moved: the seeds know where
            return self._send(make, *args, wait=wait)
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
                try:
                    conn = NodeConnection(name, tuple(address), self._secret, _weak_call(self, "_ask_soon"))
                except ConnectionError_ as exc:
                    if not isinstance(exc, AuthenticationFailed):
                        self._avoid[name] = time.monotonic() + AVOID_S
                        self._ask_soon()
                    raise
                self._connections[name] = conn
                self._avoid.pop(name, None)
        return conn


def _condition(if_context: Any, if_absent: bool) -> tuple | None:
    if if_absent and if_context is not None:
        raise InvalidRequest("a write is either if_absent or if_context, not both")
    if if_absent:
        return ("if_absent",)
    if if_context is not None:
        return ("if_context", tuple(if_context))
    return None


def connect(data_dir: str | None = None, *, seeds: str | Iterable[Any] | None = None,
            secret: str | bytes | os.PathLike[str] | None = None, nodes: Iterable[str] | None = None,
            timeout: float | None = None) -> Client:
    """A client for a cluster: through its data directory (addresses and secret read from it), or through
    ``seeds`` (``["10.0.0.1:7001", ...]`` or ``"h1:p1,h2:p2"``; any one that answers will do) and
    ``secret`` (the path of a copy of the cluster's secret file; default: ``data_dir``'s). Either way the
    client learns every member from the nodes and follows joins, leaves and moves."""
    if seeds is None:
        if data_dir is None:
            raise InvalidRequest("connect() needs a data dir, or seeds= and secret=")
        config = ClusterConfig.load(data_dir)
        key = load_secret(data_dir) if secret is None else _secret_of(secret)
        return Client(config.nodes, key, nodes=nodes, timeout=timeout, node_timeout=config.timeout)
    if secret is None:
        if data_dir is None:
            raise InvalidRequest("connect(seeds=...) needs secret= (the path of a copy of the cluster's secret)")
        key = load_secret(data_dir)
    else:
        key = _secret_of(secret)
    addresses = parse_seeds(seeds)
    answer = discover(addresses, key)
    members = {name: (str(m[0]), int(m[1])) for name, m in sorted(answer["members"].items()) if m[2] != "left"}
    client = Client(members, key, nodes=nodes, timeout=timeout, node_timeout=answer.get("timeout"),
                    seeds=addresses)
    client._learn(answer)
    return client


def discover(seeds: Iterable[tuple[str, int]], secret: bytes, timeout: float = 5.0) -> dict[str, Any]:
    """The first answer of a seed to ``MembersRequest`` (every member's address and state, the cluster's
    timeout, n and id). ``AuthenticationFailed`` at once if a seed refuses the secret; ``ClusterUnavailable``
    naming every seed if none answers."""
    errors = []
    for host, port in seeds:
        try:
            conn = NodeConnection(f"{host}:{port}", (host, port), secret)
        except AuthenticationFailed as exc:
            raise AuthenticationFailed(f"the seed {host}:{port} refused the secret: {exc}") from exc
        except ConnectionError_ as exc:
            errors.append(f"{host}:{port}: {exc}")
            continue
        try:
            answer = conn.request(MembersRequest).get(timeout)
        except LeaderlessError as exc:
            errors.append(f"{host}:{port}: {exc}")
            continue
        finally:
            conn.close()
        if isinstance(answer, dict) and isinstance(answer.get("members"), dict) and answer["members"]:
            return answer
        errors.append(f"{host}:{port}: not a member list: {answer!r}"[:200])
    raise ClusterUnavailable("no seed could be reached: " + "; ".join(errors))


def _secret_of(secret: str | bytes | os.PathLike[str]) -> bytes:
    """``connect``'s ``secret=``: the path of a secret file (bytes are taken as the secret itself)."""
    if isinstance(secret, bytes):
        if not secret.strip():
            raise ClusterUnavailable("an empty cluster secret")
        return secret.strip()
    return read_secret_file(secret)


def _weak_call(obj: Any, method: str) -> Callable[[], None]:
    """``obj.method()``, without keeping ``obj`` alive (a connection's close hook must not hold its client)."""
    ref = weakref.ref(obj)

    def call() -> None:
        target = ref()
        if target is not None:
            getattr(target, method)()
    return call


def _follow(ref: weakref.ref[Client]) -> None:
    """Every ``REFRESH_S``, on the shared I/O loop: ask a node the client is connected to for the members.
    Stops when the client is gone; costs nothing while it has no connection open."""
    client = ref()
    if client is None:
        return
    if time.monotonic() - client._asked_at >= REFRESH_S * 0.9:
        client._ask_members()
    del client
    shared_loop().call_later(REFRESH_S, lambda: _follow(ref))
