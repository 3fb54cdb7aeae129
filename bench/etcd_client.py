"""The benchmark's etcd client: etcd v3's HTTP/JSON gateway, from one thread, many connections.

    driver = EtcdDriver({"endpoints": [("127.0.0.1", 2379), ...], "threads": 64, "offset": 0})
    handle = driver.submit("write", key, value)        # returns at once
    for handle, done_at, error in driver.wait(0.1):     # the bench.drivers interface
        ...

``threads`` keep-alive connections (the name is the in-flight count of the older
driver, which ran one blocking ``http.client`` connection per thread) are spread over
the members, each with at most one request outstanding, as the gateway answers a
connection's requests one at a time. A request is written when it is submitted; one
``selectors`` loop, run by ``wait``, reads every answer and stamps it as it arrives.
Compared with a thread per connection this spends about a tenth of the client CPU per
request, so etcd, not its Python client, sets the pace (``--compare`` runs the client
processes on the same two cores as the servers).

``/v3/kv/put`` and ``/v3/kv/range`` take base64 keys and values. Reads are etcd's
default, linearizable (a quorum round through the leader); a read's JSON answer is
decoded, as our client decodes its replies.
"""

from __future__ import annotations

import base64
import json
import selectors
import socket
import time
from collections import deque
from typing import Any

CONNECT_TIMEOUT = 10.0
MAX_RESPONSE = 16 << 20


class EtcdError(RuntimeError):
    """etcd answered with an error status, or the connection broke mid-request."""


class _Handle:
    __slots__ = ()


class _Conn:
    """One keep-alive connection and the request it waits on."""

    __slots__ = ("address", "buffer", "handle", "op", "sock")

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.handle: Any = None
        self.op = ""


def parse_response(buffer: bytearray) -> tuple[int, bytes, int] | None:
    """``(status, body, bytes used)`` of the first complete HTTP/1.1 response in ``buffer``, or None
    while it is incomplete. Bodies come with Content-Length or chunked; anything else is an error."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > 65536:
            raise EtcdError("an HTTP response header of more than 64 KiB")
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise EtcdError(f"not an HTTP response: {head[0][:80]!r}")
    status = int(parts[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    start = end + 4
    if "content-length" in headers:
        length = int(headers["content-length"])
        if length > MAX_RESPONSE:
            raise EtcdError(f"an HTTP response body of {length} bytes")
        if len(buffer) - start < length:
            return None
        return status, bytes(buffer[start:start + length]), start + length
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        pos = start
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buffer[pos:line_end]).split(b";")[0], 16)
            chunk_start = line_end + 2
            if len(buffer) < chunk_start + size + 2:
                return None
            if size == 0:
                trailer_end = buffer.find(b"\r\n", chunk_start)     # no trailers expected: "0\r\n\r\n"
                if trailer_end < 0:
                    return None
                return status, bytes(body), trailer_end + 2
            body += buffer[chunk_start:chunk_start + size]
            if len(body) > MAX_RESPONSE:
                raise EtcdError("an HTTP response body of more than 16 MiB")
            pos = chunk_start + size + 2
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", start
    raise EtcdError("an HTTP response with neither Content-Length nor chunked encoding")


class EtcdDriver:
    name = "etcd"
    latency_source = "reply stamp"

    def __init__(self, target: dict[str, Any]) -> None:
        endpoints = [tuple(e) for e in target["endpoints"]]
        offset = int(target.get("offset", 0))
        count = int(target["threads"])
        self._selector = selectors.DefaultSelector()
        self._idle: deque[_Conn] = deque()
        self._waiting: deque[tuple[Any, str, str, bytes]] = deque()
        self._conns: list[_Conn] = []
        self._failed: list[tuple[Any, float, BaseException | None]] = []   # sends that failed, for wait
        try:
            for i in range(count):
                self._idle.append(self._open(endpoints[(i + offset) % len(endpoints)]))
        except BaseException:
            self.close()
            raise

    def _open(self, address: tuple[str, int]) -> _Conn:
        conn = _Conn(address)
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        self._conns.append(conn)
        return conn

    def submit(self, op: str, key: str, value: bytes) -> Any:
        handle = _Handle()
        if self._idle:
            self._start(self._idle.popleft(), handle, op, key, value)
        else:
            self._waiting.append((handle, op, key, value))
        return handle

    def _start(self, conn: _Conn, handle: Any, op: str, key: str, value: bytes) -> None:
        k = base64.b64encode(key.encode()).decode("ascii")
        if op == "read":
            path, body = "/v3/kv/range", f'{{"key":"{k}"}}'
        else:
            path, body = "/v3/kv/put", f'{{"key":"{k}","value":"{base64.b64encode(value).decode("ascii")}"}}'
        data = body.encode()
        conn.handle, conn.op = handle, op
        try:
            conn.sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n%s" % (path.encode(), conn.address[0].encode(),
                                                                 conn.address[1], len(data), data))
        except OSError as exc:
            conn.handle = None
            self._failed.append((handle, time.perf_counter(), exc))
            self._replace(conn)

    def wait(self, timeout: float) -> list[tuple[Any, float, BaseException | None]]:
        done, self._failed = self._failed, []
        for key, _ in self._selector.select(0 if done else timeout):
            conn: _Conn = key.data
            try:
                data = conn.sock.recv(65536)
                stamp = time.perf_counter()
                if not data:
                    raise EtcdError(f"etcd at {conn.address[0]}:{conn.address[1]} closed the connection")
                conn.buffer += data
                parsed = parse_response(conn.buffer)
                if parsed is None:
                    continue
                status, body, used = parsed
                del conn.buffer[:used]
                error: BaseException | None = None
                if status != 200:
                    error = EtcdError(f"etcd answered {status}: {body[:120]!r}")
                elif conn.op == "read":
                    json.loads(body)
                done.append((conn.handle, stamp, error))
                self._finished(conn)
            except (OSError, ValueError, EtcdError) as exc:
                if conn.handle is not None:
                    done.append((conn.handle, time.perf_counter(), exc))
                self._replace(conn)
        return done

    def _finished(self, conn: _Conn) -> None:
        conn.handle = None
        if self._waiting:
            self._start(conn, *self._waiting.popleft())
        else:
            self._idle.append(conn)

    def _replace(self, conn: _Conn) -> None:
        """A broken connection: close it and open another to the same member (the next submit
        fails and says why if that does not work)."""
        self._drop(conn)
        try:
            fresh = self._open(conn.address)
        except OSError:
            return
        self._finished(fresh)

    def _drop(self, conn: _Conn) -> None:
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        if conn in self._conns:
            self._conns.remove(conn)
        if conn in self._idle:
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._conns):
            self._drop(conn)
        self._selector.close()
