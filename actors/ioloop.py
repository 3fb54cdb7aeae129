"""One thread that reads and writes every socket of a process.

A node talks to its peers and clients over many sockets. One reader and one writer
thread per socket (what this replaced) meant a thread wake-up for every socket that had
something to do; here one thread waits on all of them (``selectors``, epoll on Linux),
reads whatever is ready and writes whatever is queued, so one wake-up serves every
socket that is ready at that moment.

``IOLoop.channel(sock, on_data, on_close)`` hands a connected socket to the loop and
returns a ``Channel``. ``Channel.send(data)`` may be called from any thread and never
blocks: it queues the bytes and, if the loop is asleep, wakes it (an ``eventfd``). The
loop writes everything a channel has queued in one ``send``; what the kernel does not
take waits for the socket to become writable. ``on_data(channel, data)`` runs on the loop
thread for every ``recv`` and must be quick (decode and hand to an actor).
``on_close(channel, unsent)`` runs once when the channel closes (either side, or an
error); ``unsent`` holds the tags of the sends that never reached the kernel.

``call_later(delay, fn)`` runs ``fn`` on the loop thread once ``delay`` seconds have passed
(the client's request deadlines); the loop sleeps no longer than its next timer.

The loop also runs hosted actors (``actors.mailbox``): ``ready(inbox)`` queues an actor
with mail, and each round runs the ready actors after the reads, so what a ``recv``
brought is handled, and answered, on this thread. Output waits while input keeps coming
(at most ``HOLD_ROUNDS`` rounds): a round that read something looks again before it
writes, so under load each socket gets fewer, larger frames.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import os
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import ProtocolError

log = logging.getLogger(__name__)

RECV_SIZE = 1 << 18
HOLD_ROUNDS = 4         # rounds with input before queued output is written anyway
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

OnData = Callable[["Channel", bytes], None]
OnClose = Callable[["Channel", list[Any]], None]


class Channel:
    """A socket owned by an ``IOLoop``: thread-safe ``send``, callbacks on the loop thread."""

    __slots__ = ("sock", "name", "closed", "_loop", "_on_data", "_on_close", "_out", "_flagged", "_backlog",
                 "_backlog_tags", "_events", "_finished")

    def __init__(self, loop: "IOLoop", sock: socket.socket, on_data: OnData, on_close: OnClose,
                 name: str = "") -> None:
        sock.setblocking(False)
        self.sock = sock
        self.name = name
        self.closed = False
        self._loop = loop
        self._on_data = on_data
        self._on_close = on_close
        self._out: collections.deque[tuple[bytes, Any]] = collections.deque()
        self._flagged = False
        self._backlog = b""
        self._backlog_tags: list[Any] = []
        self._events = 0
        self._finished = False

    def send(self, data: bytes, tag: Any = None) -> bool:
        """Queue ``data`` (``tag`` comes back in ``on_close`` if it is never written). False if closed."""
        if self.closed:
            return False
        self._out.append((data, tag))
        if not self._flagged:
            self._flagged = True
            loop = self._loop
            loop._dirty.append(self)
            if loop._sleeping:
                loop._wake()
        return True

    def close(self) -> None:
        """Close from any thread; ``on_close`` follows on the loop thread."""
        if not self.closed:
            self.closed = True
            self._loop.call(self._finish)

    # --- on the loop thread ------------------------------------------------------------

    def _readable(self) -> None:
        loop = self._loop
        try:
            size = self.sock.recv_into(loop._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish()
            return
        if not size:
            self._finish()
            return
        data = loop._view[:size].tobytes()
        try:
            self._on_data(self, data)
        except ProtocolError as exc:
            log.warning("closing connection %s: %s", self.name, exc)
            self._finish()
        except Exception:               # a failing callback closes its channel, not the loop
            log.exception("connection %s: handling received data failed", self.name)
            self._finish()

    def _flush(self) -> None:
        if self._finished:
            return
        buf = self._backlog
        out = self._out
        if out:
            parts = [buf] if buf else []
            tags = self._backlog_tags
            popleft = out.popleft
            while out:
                data, tag = popleft()
                parts.append(data)
                if tag is not None:
                    tags.append(tag)
            buf = parts[0] if len(parts) == 1 else b"".join(parts)
        if not buf:
            return
        try:
            sent = self.sock.send(buf)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._backlog = buf
            self._finish()
            return
        if sent == len(buf):
            self._backlog = b""
            if self._backlog_tags:
                self._backlog_tags = []
            if self._events & WRITE:
                self._loop._watch(self, READ)
        else:
            self._backlog = buf[sent:]
            if not self._events & WRITE:
                self._loop._watch(self, READ | WRITE)

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = self.closed = True
        self._loop._forget(self)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        unsent = list(self._backlog_tags)
        unsent.extend(tag for _, tag in self._out if tag is not None)
        self._out.clear()
        self._backlog = b""
        try:
            self._on_close(self, unsent)
        except Exception:
            log.exception("connection %s: close callback failed", self.name)


class IOLoop:
    """The loop: a selector, a wake-up ``eventfd``, channels with output waiting, commands."""

    def __init__(self, name: str = "io") -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._selector.register(self._wake_fd, READ, None)
        self._dirty: collections.deque[Channel] = collections.deque()
        self._ready: collections.deque[Any] = collections.deque()       # hosted actors' inboxes with mail
        # One receive buffer for every channel (only the loop thread reads): ``recv`` would allocate a
        # fresh RECV_SIZE object per call, which glibc maps, shrinks and unmaps (three system calls).
        self._buffer = bytearray(RECV_SIZE)
        self._view = memoryview(self._buffer)
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._channels: set[Channel] = set()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []   # (when, sequence, fn); loop thread only
        self._timer_seq = itertools.count()
        self._sleeping = False
        self._running = True
        self._thread = threading.Thread(target=self._run, name=f"io-{name}", daemon=True)
        self._thread.start()

    def channel(self, sock: socket.socket, on_data: OnData, on_close: OnClose, name: str = "") -> Channel:
        """Hand ``sock`` (connected, handshake done) to the loop; reading starts at once."""
        channel = Channel(self, sock, on_data, on_close, name)
        if not self._running:
            channel.closed = True
            sock.close()
            return channel
        self.call(lambda: self._add(channel))
        return channel

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread soon (before any output queued after this call is written)."""
        self._commands.put(fn)
        self._wake()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread ``delay`` seconds from now (or later, never sooner). Any thread."""
        entry = (time.monotonic() + delay, next(self._timer_seq), fn)
        self.call(lambda: heapq.heappush(self._timers, entry))

    def ready(self, inbox: Any) -> None:
        """A hosted actor has mail (``actors.mailbox``): run it on the loop thread soon. Any thread."""
        self._ready.append(inbox)
        if self._sleeping:
            self._wake()

    def stop(self, timeout: float = 2.0) -> None:
        """Close every channel and end the thread."""
        if not self._running:
            return
        self._running = False
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def on_loop_thread(self) -> bool:
        """True when called on the loop's own thread (from a callback it runs)."""
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- on the loop thread ------------------------------------------------------------

    def _wake(self) -> None:
        self._sleeping = False
        fd = self._wake_fd
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except OSError:             # closed at stop
                pass

    def _add(self, channel: Channel) -> None:
        if channel.closed:
            channel._finish()
            return
        channel._events = READ
        try:
            self._selector.register(channel.sock, READ, channel)
        except (OSError, ValueError):
            channel._finish()
            return
        self._channels.add(channel)

    def _watch(self, channel: Channel, events: int) -> None:
        channel._events = events
        self._selector.modify(channel.sock, events, channel)

    def _forget(self, channel: Channel) -> None:
        if channel in self._channels:
            self._channels.discard(channel)
            try:
                self._selector.unregister(channel.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _run(self) -> None:
        selector, dirty, commands, ready, timers = self._selector, self._dirty, self._commands, self._ready, self._timers
        held = 0
        try:
            while self._running:
                # Say "asleep" before the last look at the queues: a sender that queues after the
                # look sees the flag and writes the eventfd, so no output waits for a later wake-up.
                self._sleeping = True
                busy = dirty or ready or not commands.empty()
                if busy:
                    self._sleeping = False
                    timeout: float | None = 0
                else:
                    timeout = max(0.0, timers[0][0] - time.monotonic()) if timers else None
                events = selector.select(timeout)
                self._sleeping = False
                for key, mask in events:
                    channel = key.data
                    if channel is None:
                        try:
                            os.eventfd_read(self._wake_fd)
                        except BlockingIOError:
                            pass
                        continue
                    if mask & READ:
                        channel._readable()
                    if mask & WRITE:
                        channel._flush()
                while not commands.empty():
                    self._command(commands.get_nowait())
                if timers and timers[0][0] <= time.monotonic():
                    self._run_timers()
                for _ in range(len(ready)):
                    self._run_actor(ready.popleft())
                if events and held < HOLD_ROUNDS:
                    held += 1               # input came: look for more before writing (bigger frames)
                    continue
                held = 0
                while dirty:
                    channel = dirty.popleft()
                    channel._flagged = False
                    channel._flush()
        except Exception:
            log.exception("I/O loop %s failed", self.name)
        finally:
            self._shutdown()

    def _run_actor(self, inbox: Any) -> None:
        try:
            inbox.run()
        except Exception:
            log.exception("I/O loop %s: a hosted actor failed", self.name)

    def _run_timers(self) -> None:
        timers, now = self._timers, time.monotonic()
        while timers and timers[0][0] <= now:
            self._command(heapq.heappop(timers)[2])

    def _command(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            log.exception("I/O loop %s: a command failed", self.name)

    def _shutdown(self) -> None:
        self._running = False
        while not self._commands.empty():
            self._command(self._commands.get_nowait())
        while self._dirty:
            channel = self._dirty.popleft()
            channel._flagged = False
            channel._flush()
        for channel in list(self._channels):
            channel._finish()
        self._selector.close()
        fd, self._wake_fd = self._wake_fd, -1
        os.close(fd)


_shared: IOLoop | None = None
_shared_lock = threading.Lock()


def shared_loop() -> IOLoop:
    """The process's loop for client connections, started on first use."""
    global _shared
    loop = _shared
    if loop is not None and loop.alive:
        return loop
    with _shared_lock:
        if _shared is None or not _shared.alive:
            _shared = IOLoop("client")
        return _shared


__all__ = ["Channel", "IOLoop", "shared_loop"]
