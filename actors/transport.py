"""Messages between nodes and from clients, over authenticated TCP.

One ``Transport`` per node. It listens for connections (peers and clients), keeps one
outgoing ``PeerLink`` per peer, and hands every batch of decoded messages to a single
``deliver(messages, connection)`` callback. Every socket of the node, once authenticated,
belongs to one ``IOLoop`` thread. Sending never blocks the caller: a message is encoded
and queued, and the loop writes everything queued for a socket in one ``send`` (batching
on the wire). The loop decodes everything one ``recv`` brought and delivers it as one
batch. Accepting and the authentication handshake run on short-lived threads of their own.

Hostile input (the constants under "limits" below): the whole handshake, the peer's or client's ``Hello``
included, is done within ``HANDSHAKE_TIMEOUT`` or the connection is closed; at most
``MAX_HANDSHAKING`` connections handshake at once and at most ``max_connections`` are open,
new ones over a cap are closed at once; the listener never stops on an accept error (it
logs, backs off and, out of descriptors, sheds pending connections with a reserve one).

Fault hooks (used by ``LocalCluster`` and the chaos tools): ``block`` drops every message
to and from some peers (a partition), ``delay`` holds every peer message to or from this
node for a while (a slow node). Faults never touch client connections.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import queue
import random
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from .errors import AuthenticationFailed, ProtocolError
from .ioloop import Channel, IOLoop, shared_loop
from .messages import Hello
from .wire import (
    HANDSHAKE_TIMEOUT,
    HEADER,
    MAX_REQUEST_FRAME,
    FrameReader,
    client_handshake,
    encode,
    encode_many,
    server_handshake,
)

log = logging.getLogger(__name__)

Deliver = Callable[[list[Any], "Connection | None"], None]

RECV_SIZE = 1 << 18           # what one recv may read during the handshake
MAX_SEND = 4 << 20
CONNECT_TIMEOUT = 1.0
RECONNECT_BACKOFF = 0.2
CONNECT_ATTEMPTS = 3
CONNECT_RETRY_PAUSE = 0.05
_STOP = object()

# --- dead connections: how soon a socket whose other end is gone (a host cut off, powered off) is closed ---
KEEPALIVE_IDLE = 2
"""Seconds a connection may be idle before TCP probes the other end (``TCP_KEEPIDLE``). Peer links carry
gossip several times a second, so only a quiet link or a client's idle connection ever probes."""
KEEPALIVE_INTERVAL = 1
"""Seconds between unanswered keepalive probes (``TCP_KEEPINTVL``)."""
KEEPALIVE_COUNT = 3
"""Unanswered probes before the connection is dropped (``TCP_KEEPCNT``): idle + 3 x 1 s, about 5 s."""
USER_TIMEOUT_MS = 4000
"""Milliseconds sent data may stay unacknowledged before the kernel drops the connection
(``TCP_USER_TIMEOUT``; it bounds keepalive too). Without it a cut-off peer's socket stays open for
about 15 minutes (``tcp_retries2``), its retransmissions backing off up to minutes apart, so a link
would only notice a healed network at the next retransmission (12 s after a 15 s cut). 4 s is more
than the default request timeout (3 s) and than gossip needs to see the peer down, so a slow but
live peer is convicted by the failure detector, not by this; the store takes a dropped connection
as dropped messages (deadlines, hints and repair cover them) and the next send reconnects."""

# --- limits: what one node gives connections it has not authenticated yet, and all of them -----
MAX_HANDSHAKING = 64
"""Connections handshaking at once. Each holds a thread for up to HANDSHAKE_TIMEOUT; honest ones
finish in a millisecond or two (a client opens one connection per node, a node one link per
peer), so 64 is room for a whole cluster restarting at once, and a slow-handshake flood holds at
most 64 threads and descriptors."""
MAX_CONNECTIONS = 4096
"""Open connections (handshaking or not) at most, and never more than the descriptor limit less
FD_RESERVE: each connection is a descriptor, and past the limit every accept, connect and LMDB
open of the node fails (EMFILE). 4096 is far above what the clients and peers of a node need."""
FD_RESERVE = 256
"""Descriptors kept back from connections: peer links (one per peer), LMDB's files, the
write-ahead log, the log file, the I/O loop's epoll and eventfd, the listener's reserve one."""
MIN_CONNECTIONS = 16
"""The connection cap under even a tiny descriptor limit, so the node stays usable."""
MAX_HELLO = 4096
"""The largest first frame (the ``Hello``) read during the handshake: a ``Hello`` is a few dozen
bytes, so a handshaking connection never buffers more than this."""
ACCEPT_BACKOFF = 0.01
"""First pause after an accept error (seconds); doubles up to ACCEPT_BACKOFF_MAX, resets on success."""
ACCEPT_BACKOFF_MAX = 0.25
"""Longest pause between accept retries: a node serves again within this long after a flood ends."""
LOG_BURST = 10
LOG_PERIOD = 10.0
"""At most LOG_BURST lines of one kind (over-cap closes, accept errors...) per LOG_PERIOD seconds,
then one line counting the rest: a flood of connections must not flood the log too."""
_CLOSED_LISTENER = (errno.EBADF, errno.ENOTSOCK)


class LogLimiter:
    """Logs at most LOG_BURST lines of each kind per LOG_PERIOD, then one line saying how many it left out."""

    def __init__(self, logger: logging.Logger, burst: int = LOG_BURST, period: float = LOG_PERIOD) -> None:
        self._log = logger
        self._burst = burst
        self._period = period
        self._lock = threading.Lock()
        self._windows: dict[str, list[float]] = {}      # kind -> [window start, lines logged, lines left out]

    def __call__(self, level: int, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(kind, [now, 0, 0])
            left_out = 0
            if now - window[0] >= self._period:
                left_out = int(window[2])
                window[:] = [now, 0, 0]
            emit = window[1] < self._burst
            if emit:
                window[1] += 1
            else:
                window[2] += 1
        if left_out:
            self._log.log(level, "%d more %s lines left out in the last %.0fs", left_out, kind, self._period)
        if emit:
            self._log.log(level, message, *args)


def connection_cap(limit: int = MAX_CONNECTIONS) -> int:
    """``limit``, lowered to what the process's descriptor limit (soft RLIMIT_NOFILE) allows less FD_RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limit
    return max(MIN_CONNECTIONS, min(limit, soft - FD_RESERVE))


def _wait_readable(sock: socket.socket, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``sock`` to be readable (a listener: a connection pending).
    ``poll``, not ``select`` or a selector: it takes no descriptor and knows no FD_SETSIZE."""
    poller = select.poll()
    try:
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    except (OSError, ValueError):           # closed meanwhile: the accept loop sees it next
        return False


def _open_reserve() -> int | None:
    """A spare descriptor, closed when the process runs out so one pending connection can be shed."""
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _drain(q: "queue.SimpleQueue[Any]", first: Any, size: Callable[[Any], int] = len) -> tuple[list[Any], bool]:
    """Everything queued behind ``first``, up to MAX_SEND bytes; True if a stop was seen."""
    items = [first]
    total = size(first)
    while total < MAX_SEND:
        try:
            item = q.get_nowait()
        except queue.Empty:
            break
        if item is _STOP:
            return items, True
        items.append(item)
        total += size(item)
    return items, False


def _data_size(item: tuple[bytes, Any]) -> int:
    return len(item[0])


def keep_alive(sock: socket.socket) -> None:
    """Make a dead other end show within seconds (see ``KEEPALIVE_IDLE`` and ``USER_TIMEOUT_MS``):
    TCP keepalive for idle connections, a user timeout for ones with data in flight."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
    except (OSError, AttributeError) as exc:       # not Linux, or not TCP: the defaults stay
        log.debug("cannot set keepalive options: %s", exc)


def retransmitting(sock: socket.socket) -> bool:
    """True if ``sock`` waits on a retransmission or zero-window probe timer (``TCP_INFO``): data it sent
    went unanswered, and the kernel will not try again before that timer, which backs off to seconds
    or minutes. A socket in that state to a peer known to be back is better closed and reopened."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    except (OSError, AttributeError):
        return False
    # struct tcp_info: state, ca_state, retransmits, probes, backoff (one byte each), ...
    return len(info) >= 5 and bool(info[2] or info[3] or info[4])


class Connection:
    """One authenticated connection (a client's to a node, or one a node accepted), on an ``IOLoop``."""

    def __init__(self, sock: socket.socket, kind: str, name: str, on_frames: Callable[["Connection", list[Any]], None],
                 on_close: Callable[["Connection"], None], loop: IOLoop | None = None) -> None:
        self.sock = sock
        self.kind = kind
        self.name = name
        self._on_frames = on_frames
        self._on_close = on_close
        self._loop = loop or shared_loop()
        self._reader: FrameReader | None = None
        self._channel: Channel | None = None
        self._early: list[bytes] = []
        self._closed = False

    def start(self, reader: FrameReader, pending: list[Any]) -> None:
        """Deliver what came with the hello, then hand the socket to the loop (returns at once)."""
        if self._closed:                        # closed before it started: the socket is gone
            return
        self._reader = reader
        if pending:
            self._on_frames(self, pending)
            if self._closed:                    # something in them closed the connection
                return
        channel = self._channel = self._loop.channel(self.sock, self._on_data, self._on_channel_close,
                                                     f"{self.kind} {self.name}")
        for data in self._early:
            channel.send(data)
        self._early = []

    def send(self, message: Any) -> None:
        self.send_data(encode(message))

    def send_many(self, messages: list[Any]) -> None:
        """Several messages in one frame."""
        if messages:
            self.send_data(encode_many(messages))

    def send_data(self, data: bytes) -> None:
        """Send a frame already encoded (``wire.encode``); before ``start``, it waits for it."""
        channel = self._channel
        if channel is not None:
            channel.send(data)
        elif not self._closed:
            self._early.append(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._channel is not None:
            self._channel.close()
        else:
            self.sock.close()
            self._on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed or (self._channel is not None and self._channel.closed)

    def _on_data(self, _channel: Channel, data: bytes) -> None:
        assert self._reader is not None
        messages = self._reader.feed(data)
        if messages:
            self._on_frames(self, messages)

    def _on_channel_close(self, _channel: Channel, _unsent: list[Any]) -> None:
        self._closed = True
        self._on_close(self)


class PeerLink:
    """The outgoing side to one peer: connects lazily, reconnects after failures, drops on error.

    Dropping is the right call for a Dynamo-style store: a lost message is a replica that
    did not answer, and the coordinator's deadline, hints and repair handle that. When a
    message could not even be handed to the peer's socket (connection refused, reset),
    ``on_drop(peer, messages)`` says so at once, so a coordinator need not wait for its
    deadline to learn that a dead node will not answer.

    While connected, ``send`` hands the frame straight to the loop's channel. Without a
    connection, frames queue for the link's own thread, which connects (blocking, with a
    few quick retries), hands the queue to the new channel in order, then publishes it.
    The peer never writes on this link: the end of its read side means the peer is gone
    (a restarted peer resets the old connection), and the next send reconnects.
    """

    def __init__(self, me: str, peer: str, address: tuple[str, int], secret: bytes, loop: IOLoop,
                 on_drop: Callable[[str, list[Any]], None] | None = None) -> None:
        self.me = me
        self._on_drop = on_drop
        self.peer = peer
        self.address = address
        self._secret = secret
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._channel: Channel | None = None
        self._retry_at = 0.0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop_thread, name=f"link-{me}-{peer}", daemon=True)
        self._thread.start()

    def send(self, data: bytes, messages: list[Any]) -> None:
        """Queue one encoded frame; ``messages`` are what it holds (for ``on_drop``)."""
        channel = self._channel
        if channel is not None and channel.send(data, messages):
            return
        with self._lock:
            channel = self._channel
            if channel is not None and channel.send(data, messages):
                return
            self._queue.put((data, messages))

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=2)
        channel = self._channel
        if channel is not None:
            channel.close()

    def peer_alive(self) -> None:
        """The peer just talked to us: a failed connect is worth retrying at once."""
        self._retry_at = 0.0

    def peer_back(self) -> None:
        """Gossip says the peer is up again (restarted, or reachable after a cut): connect at once, and drop
        a connection still waiting on TCP's retransmission backoff (what it held is lost either way), so
        the next send goes out on a fresh one instead of after the next retransmission."""
        self._retry_at = 0.0
        channel = self._channel
        if channel is not None and not channel.closed and retransmitting(channel.sock):
            log.info("link %s -> %s was stalled in TCP retransmission; reconnecting", self.me, self.peer)
            channel.close()

    def move(self, address: tuple[str, int]) -> None:
        """The peer now listens at ``address`` (it restarted elsewhere): close the connection to the old
        one; the next send connects to the new one at once."""
        if address == self.address:
            return
        log.info("link %s -> %s moves from %s:%s to %s:%s", self.me, self.peer, *self.address, *address)
        self.address = address
        self._retry_at = 0.0
        channel = self._channel
        if channel is not None:
            channel.close()

    def _drop(self, messages: list[Any]) -> None:
        self.dropped += len(messages)
        if self._on_drop is not None and messages:
            self._on_drop(self.peer, messages)

    def _loop_thread(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            items, stop = _drain(self._queue, item, _data_size)
            channel = self._channel
            if channel is None or channel.closed:
                channel = self._open()
            if channel is None:
                self._drop([message for _, messages in items for message in messages])
            else:
                unsent: list[Any] = []
                with self._lock:
                    while True:
                        for data, messages in items:
                            if not channel.send(data, messages):
                                unsent.extend(messages)
                        items, more_stop = _drain_all(self._queue)
                        stop = stop or more_stop
                        if not items:
                            break
                    self._channel = channel
                self._drop(unsent)
            if stop:
                return

    def _open(self) -> Channel | None:
        sock = self._connect_retrying()
        if sock is None:
            return None
        return self._loop.channel(sock, _ignore, self._on_channel_close, f"link {self.me}->{self.peer}")

    def _on_channel_close(self, channel: Channel, unsent: list[Any]) -> None:
        with self._lock:
            if self._channel is channel:
                self._channel = None
        self._drop([message for messages in unsent for message in messages])

    def _connect_retrying(self) -> socket.socket | None:
        """Connect, trying a few times a few tens of ms apart: a peer that is just starting (or
        restarting) listens a moment later, and messages dropped then would fail whole requests.
        After that, ``RECONNECT_BACKOFF`` applies: messages to a dead peer are dropped at once."""
        if time.monotonic() < self._retry_at:
            return None
        for attempt in range(CONNECT_ATTEMPTS):
            if attempt:
                time.sleep(CONNECT_RETRY_PAUSE)
                self._retry_at = 0.0
            sock = self._connect()
            if sock is not None:
                return sock
        return None

    def _connect(self) -> socket.socket | None:
        now = time.monotonic()
        if now < self._retry_at:
            return None
        address = self.address
        try:
            sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
        except OSError:
            self._retry_at = now + RECONNECT_BACKOFF
            return None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keep_alive(sock)
            client_handshake(sock, self._secret)
            sock.sendall(encode(Hello("peer", self.me)))
        except (OSError, AuthenticationFailed, ProtocolError) as exc:
            log.warning("cannot link %s -> %s at %s:%s: %s", self.me, self.peer, *address, exc)
            sock.close()
            self._retry_at = now + RECONNECT_BACKOFF
            return None
        if address != self.address:          # moved while connecting: the next attempt goes to the new one
            sock.close()
            return None
        return sock


def _ignore(_channel: Channel, _data: bytes) -> None:
    """What a peer link does with bytes from the peer (it never sends any)."""


def _drain_all(q: "queue.SimpleQueue[Any]") -> tuple[list[Any], bool]:
    items: list[Any] = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return items, False
        if item is _STOP:
            return items, True
        items.append(item)


class DelayLine:
    """Runs callbacks at a later time, in order (used to slow a node down)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="delay-line", daemon=True)
        self._thread.start()

    def call_at(self, due: float, fn: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), fn))
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._running and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if not self._running:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:  # a failing callback must not stop the line
                log.exception("delayed callback failed")


class Transport:
    """A node's network endpoint: listener, peer links, client connections and fault hooks.

    ``max_handshaking`` and ``max_connections`` are the caps (defaults: MAX_HANDSHAKING, and
    MAX_CONNECTIONS lowered to the descriptor limit at ``listen``).
    """

    def __init__(self, name: str, secret: bytes, peers: dict[str, tuple[str, int]], deliver: Deliver,
                 on_drop: Callable[[str, list[Any]], None] | None = None, *,
                 max_handshaking: int = MAX_HANDSHAKING, max_connections: int | None = None) -> None:
        self.name = name
        self._on_drop = on_drop
        self._secret = secret
        self._deliver = deliver
        self._links: dict[str, PeerLink] = {}
        self._peers = dict(peers)
        self._peers.pop(name, None)
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._loop = IOLoop(name)
        self._listener: socket.socket | None = None
        self._blocked: frozenset[str] = frozenset()
        self._delay = 0.0
        self._loss = self._duplicate = self._reorder = 0.0
        self._rng = random.Random()
        self._delay_line: DelayLine | None = None
        self.address: tuple[str, int] | None = None
        self.refused = 0
        self._heard: dict[str, float] = {}
        self.max_handshaking = max_handshaking
        self.max_connections = max_connections
        self._handshaking: set[socket.socket] = set()
        self._reserve: int | None = None
        self._stopping = threading.Event()
        self._limited = LogLimiter(log)
        self.shed = 0                   # connections closed at once: over a cap, or out of descriptors
        self.timed_out = 0              # handshakes not done within HANDSHAKE_TIMEOUT

    def heard_from(self, peer: str) -> float | None:
        """When a message from ``peer`` last arrived (time.monotonic), if ever."""
        return self._heard.get(peer)

    def peer_back(self, peer: str) -> None:
        """Gossip says ``peer`` (re)started, or is up again after being down: the link to it connects at the
        next send, with no backoff, on a fresh connection if its own is stalled (``PeerLink.peer_back``)."""
        link = self._links.get(peer)
        if link is not None:
            link.peer_back()

    # --- lifecycle ---------------------------------------------------------------------

    def listen(self, host: str, port: int) -> tuple[str, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        self._listener = sock
        self.address = sock.getsockname()[:2]
        if self.max_connections is None:
            self.max_connections = connection_cap()
        self._reserve = _open_reserve()
        log.info("%s accepts at most %d connections, %d of them handshaking", self.name, self.max_connections,
                 self.max_handshaking)
        threading.Thread(target=self._accept_loop, args=(sock,), name=f"accept-{self.name}", daemon=True).start()
        return self.address

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            links = list(self._links.values())
            conns = list(self._connections)
            handshaking = list(self._handshaking)
            self._links.clear()
            reserve, self._reserve = self._reserve, None
        if reserve is not None:
            os.close(reserve)
        for sock in handshaking:                  # wakes its handshake thread, which closes it
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for link in links:
            link.stop()
        for conn in conns:
            conn.close()
        if self._delay_line is not None:
            self._delay_line.stop()
        self._loop.stop()

    # --- faults ------------------------------------------------------------------------

    def block(self, peers: Collection[str]) -> None:
        self._blocked = frozenset(peers)

    def delay(self, seconds: float) -> None:
        if seconds > 0 and self._delay_line is None:
            self._delay_line = DelayLine()
        self._delay = max(0.0, seconds)

    def degrade(self, loss: float = 0.0, duplicate: float = 0.0, reorder_s: float = 0.0,
                seed: int | None = None) -> None:
        """Lose, duplicate and reorder messages this node sends to peers, at the given rates."""
        if reorder_s > 0 and self._delay_line is None:
            self._delay_line = DelayLine()
        self._loss, self._duplicate, self._reorder = loss, duplicate, max(0.0, reorder_s)
        if seed is not None:
            self._rng.seed(seed)

    @property
    def blocked(self) -> frozenset[str]:
        return self._blocked

    # --- sending -----------------------------------------------------------------------

    def peers(self) -> list[str]:
        return sorted(self._peers)

    def addresses(self) -> dict[str, tuple[str, int]]:
        """Every peer this node knows an address for (from its config and from gossip)."""
        with self._lock:
            return dict(self._peers)

    def add_peer(self, name: str, address: tuple[str, int]) -> None:
        """``name`` listens at ``address`` (learnt from gossip or a join): messages go there from now on,
        over a new connection if the link to it was open to another address."""
        if name == self.name:
            return
        address = (address[0], int(address[1]))
        with self._lock:
            self._peers[name] = address
            link = self._links.get(name)
        if link is not None:
            link.move(address)

    def send(self, dest: str, message: Any, data: bytes | None = None) -> None:
        """Send to a peer (or to this node itself, delivered locally). Never blocks.

        ``data`` is the message already encoded.
        """
        if dest == self.name:
            self._deliver([message], None)
            return
        if dest in self._blocked:
            return
        if data is None:
            data = encode(message)
        copies = 1
        if self._loss or self._duplicate:
            if self._rng.random() < self._loss:
                return
            if self._rng.random() < self._duplicate:
                copies = 2
        for _ in range(copies):
            hold = self._delay + (self._rng.uniform(0, self._reorder) if self._reorder else 0.0)
            if hold:
                assert self._delay_line is not None
                self._delay_line.call_at(time.monotonic() + hold, lambda: self._send_now(dest, data, [message]))
            else:
                self._send_now(dest, data, [message])

    def _send_now(self, dest: str, data: bytes, messages: list[Any]) -> None:
        link = self._link(dest)
        if link is not None:
            link.send(data, messages)

    @property
    def loop(self) -> IOLoop:
        """The I/O loop serving this node's sockets (its hosted actors run on it too)."""
        return self._loop

    def send_batch(self, dest: str, messages: list[Any]) -> None:
        """Send several messages to one node in one frame (to this node itself: one delivery).

        With a message-level fault armed (loss, duplication, reordering, delay) each message
        goes on its own, so the fault hits messages, not whole batches.
        """
        if dest == self.name:
            self._deliver(messages, None)
            return
        if dest in self._blocked:
            return
        if len(messages) == 1 or self._loss or self._duplicate or self._reorder or self._delay:
            for message in messages:
                self.send(dest, message)
            return
        self._send_now(dest, encode_many(messages), messages)

    def _link(self, dest: str) -> PeerLink | None:
        link = self._links.get(dest)
        if link is None:
            address = self._peers.get(dest)
            if address is None:
                log.debug("no address for %s; message dropped", dest)
                return None
            with self._lock:
                link = self._links.get(dest)
                if link is None:
                    address = self._peers.get(dest, address)     # add_peer may have moved it meanwhile
                    link = self._links[dest] = PeerLink(self.name, dest, address, self._secret, self._loop,
                                                        self._on_drop)
        return link

    # --- receiving ---------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        """Accept until the listener is closed (the node stopping); no accept error ends it.

        Errors (ENOBUFS, ENOMEM, ECONNABORTED, EPROTO, EPERM...) are logged and retried after a
        pause that doubles up to ACCEPT_BACKOFF_MAX. Out of descriptors (EMFILE, ENFILE; Linux
        fails accept so at once, a connection pending or not), the loop waits until one is
        pending and tries again; still out, it gives up the reserve descriptor to accept that
        connection and close it at once, so a flood is shed rather than left spinning the loop
        or queued (the libev/nginx trick). Once descriptors are back, the next accept serves.
        """
        backoff = ACCEPT_BACKOFF
        pending = False                 # out of descriptors, a connection was seen pending: shed it if still out
        while not self._stopping.is_set():
            try:
                sock, _ = listener.accept()
            except OSError as exc:
                if self._stopping.is_set() or listener.fileno() < 0 or exc.errno in _CLOSED_LISTENER:
                    return
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    if pending and self._shed_one(listener):
                        self._limited(logging.ERROR, "out-of-descriptors", "%s is out of descriptors (%s): a new "
                                      "connection was closed at once", self.name, exc)
                    elif pending:                 # no reserve to shed with: wait, as for any other error
                        self._limited(logging.ERROR, "accept-error", "%s: accept failed (%s); retrying in %.0f ms",
                                      self.name, exc, backoff * 1000)
                        self._stopping.wait(backoff)
                        backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                    pending = _wait_readable(listener, ACCEPT_BACKOFF_MAX)
                    continue
                self._limited(logging.ERROR, "accept-error", "%s: accept failed (%s); retrying in %.0f ms",
                              self.name, exc, backoff * 1000)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF_MAX)
                continue
            backoff = ACCEPT_BACKOFF
            pending = False
            self._admit(sock)

    def _shed_one(self, listener: socket.socket) -> bool:
        """Give up the reserve descriptor, accept one pending connection and close it, take the reserve
        back. False if there was no reserve or nothing was accepted."""
        with self._lock:
            reserve, self._reserve = self._reserve, None
        if reserve is None:
            self._reopen_reserve()
            return False
        os.close(reserve)
        try:
            listener.settimeout(0.0)              # the connection may be gone already: never wait here
            sock, _ = listener.accept()
        except OSError:
            return False
        else:
            sock.close()
            self.shed += 1
            return True
        finally:
            try:
                listener.settimeout(None)
            except OSError:                       # closed meanwhile: the loop sees it next
                pass
            self._reopen_reserve()

    def _reopen_reserve(self) -> None:
        """Take the reserve descriptor back, if it is free and the node is not stopping."""
        if self._reserve is not None or self._stopping.is_set():
            return
        reserve = _open_reserve()
        if reserve is None:
            self._limited(logging.WARNING, "no-reserve", "%s cannot reopen its reserve descriptor yet", self.name)
            return
        with self._lock:
            if self._reserve is None and not self._stopping.is_set():
                self._reserve = reserve
                return
        os.close(reserve)

    def _admit(self, sock: socket.socket) -> None:
        """Start the handshake of an accepted connection on a thread of its own, or close it at once
        when the node already holds ``max_connections`` or ``max_handshaking`` are handshaking."""
        assert self.max_connections is not None
        with self._lock:
            handshaking, total = len(self._handshaking), len(self._handshaking) + len(self._connections)
            over = ("connections", self.max_connections) if total >= self.max_connections else \
                ("handshaking connections", self.max_handshaking) if handshaking >= self.max_handshaking else None
            if over is None:
                self._handshaking.add(sock)
        if over is not None:
            self.shed += 1
            self._limited(logging.WARNING, "over-cap", "%s closed a new connection from %s at once: %d %s open, "
                          "the most it accepts", self.name, _peer_name(sock), over[1], over[0])
            sock.close()
            return
        try:
            threading.Thread(target=self._serve, args=(sock,), name=f"handshake-{self.name}", daemon=True).start()
        except RuntimeError as exc:           # no thread to spare: the same as over a cap
            with self._lock:
                self._handshaking.discard(sock)
            self.shed += 1
            self._limited(logging.WARNING, "over-cap", "%s closed a new connection at once: %s", self.name, exc)
            sock.close()

    def _serve(self, sock: socket.socket) -> None:
        """Handshake (authentication, then the ``Hello``) within HANDSHAKE_TIMEOUT, then hand the connection
        to the loop."""
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        peer = _peer_name(sock)
        reader = FrameReader()
        conn: Connection | None = None
        pending: list[Any] = []
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keep_alive(sock)             # a client or peer whose host vanished is closed within seconds
            server_handshake(sock, self._secret, deadline)
            hello, pending = self._read_hello(sock, reader, deadline)
            if hello.kind == "client":
                reader.max_frame = MAX_REQUEST_FRAME     # one request: a value of at most 16 MiB
            conn = Connection(sock, hello.kind, hello.name or peer, self._on_frames, self._on_close, self._loop)
        except (AuthenticationFailed, ProtocolError) as exc:
            self.refused += 1
            log.warning("refused connection from %s: %s", peer, exc)
        except TimeoutError:
            self.timed_out += 1
            self._limited(logging.WARNING, "handshake-timeout", "%s closed the connection from %s: handshake not "
                          "done within %.0fs", self.name, peer, HANDSHAKE_TIMEOUT)
        except OSError as exc:
            log.info("connection from %s dropped during handshake: %s", peer, exc)
        except Exception:  # a bug here must close this connection, not leak its slot
            log.exception("handshake with %s failed", peer)
        finally:
            with self._lock:
                self._handshaking.discard(sock)
                if conn is not None and not self._stopping.is_set():
                    self._connections.add(conn)
                else:
                    conn = None
        if conn is None:
            sock.close()
            return
        conn.start(reader, pending)

    def _read_hello(self, sock: socket.socket, reader: FrameReader, deadline: float) -> tuple[Hello, list[Any]]:
        """The first frame (a ``Hello``), and whatever came with it, by ``deadline``; a first frame longer
        than MAX_HELLO is refused before it is read."""
        messages: list[Any] = []
        head = b""
        while not messages:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("handshake deadline passed before the hello")
            sock.settimeout(left)
            data = sock.recv(RECV_SIZE)
            if not data:
                raise ConnectionResetError("closed before hello")
            if len(head) < HEADER.size:
                head += data[:HEADER.size - len(head)]
                if len(head) == HEADER.size and HEADER.unpack(head)[0] > MAX_HELLO:
                    raise ProtocolError(f"a first frame of {HEADER.unpack(head)[0]} bytes: a hello is at most "
                                        f"{MAX_HELLO}")
            messages = reader.feed(data)
        sock.settimeout(None)
        hello = messages[0]
        if not isinstance(hello, Hello) or hello.kind not in ("peer", "client"):
            raise ProtocolError(f"expected a hello, got {type(hello).__name__}")
        return hello, messages[1:]

    def _on_frames(self, conn: Connection, messages: list[Any]) -> None:
        if conn.kind == "peer":
            if conn.name in self._blocked:
                return
            self._heard[conn.name] = time.monotonic()
            link = self._links.get(conn.name)
            if link is not None:
                link.peer_alive()
            if self._delay:
                assert self._delay_line is not None
                self._delay_line.call_at(time.monotonic() + self._delay, lambda: self._deliver(messages, None))
                return
            self._deliver(messages, None)
        else:
            self._deliver(messages, conn)

    def _on_close(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "a peer that is gone"
    return f"{host}:{port}"
