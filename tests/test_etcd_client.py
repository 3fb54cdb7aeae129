"""The benchmark's etcd client (``bench.etcd_client``): HTTP/1.1 keep-alive connections driven by one
selector loop, against a small stand-in for etcd's JSON gateway and, where installed, real etcd."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bench.etcd_client import EtcdDriver, EtcdError, parse_response


class _Gateway(BaseHTTPRequestHandler):
    """/v3/kv/put and /v3/kv/range over a dict; a put of the key "boom" answers 500, of "hangup"
    closes the connection without an answer."""

    protocol_version = "HTTP/1.1"
    store: ClassVar[dict[str, str]] = {}

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = base64.b64decode(body["key"]).decode()
        if key == "hangup":
            self.close_connection = True
        elif self.path == "/v3/kv/put" and key == "boom":
            self._answer(500, {"error": "boom"})
        elif self.path == "/v3/kv/put":
            self.store[key] = body["value"]
            self._answer(200, {"header": {}})
        elif self.path == "/v3/kv/range":
            kvs = [{"key": body["key"], "value": self.store[key]}] if key in self.store else []
            self._answer(200, {"header": {}, "kvs": kvs, "count": str(len(kvs))})
        else:
            self._answer(404, {"error": "no such path"})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, int]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[:2]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _collect(driver: EtcdDriver, count: int, limit: float = 10.0) -> list[Any]:
    done: list[Any] = []
    deadline = time.monotonic() + limit
    while len(done) < count and time.monotonic() < deadline:
        done.extend(driver.wait(0.2))
    return done


def test_puts_and_reads_complete_with_more_requests_than_connections(gateway: tuple[str, int]) -> None:
    driver = EtcdDriver({"endpoints": [gateway], "threads": 3})
    try:
        handles = [driver.submit("write", f"k{i}", b"v" * 100) for i in range(10)]
        done = _collect(driver, 10)
        assert {id(h) for h, _, _ in done} == {id(h) for h in handles}
        assert all(error is None for _, _, error in done)
        assert base64.b64decode(_Gateway.store["k7"]) == b"v" * 100
        read = driver.submit("read", "k7", b"")
        [(handle, stamp, error)] = _collect(driver, 1)
        assert handle is read and error is None and stamp <= time.perf_counter()
    finally:
        driver.close()


def test_an_error_status_fails_that_request_only(gateway: tuple[str, int]) -> None:
    driver = EtcdDriver({"endpoints": [gateway], "threads": 2})
    try:
        bad = driver.submit("write", "boom", b"x")
        good = driver.submit("write", "fine", b"x")
        done = {id(h): error for h, _, error in _collect(driver, 2)}
        assert isinstance(done[id(bad)], EtcdError) and "500" in str(done[id(bad)])
        assert done[id(good)] is None
        again = driver.submit("write", "fine", b"y")              # the connection is still usable
        assert [(h, e) for h, _, e in _collect(driver, 1)] == [(again, None)]
    finally:
        driver.close()


def test_a_connection_closed_mid_request_fails_that_request_and_is_replaced(gateway: tuple[str, int]) -> None:
    driver = EtcdDriver({"endpoints": [gateway], "threads": 1})
    try:
        lost = driver.submit("write", "hangup", b"v")              # the server closes without answering
        [(handle, _, error)] = _collect(driver, 1)
        assert handle is lost and isinstance(error, EtcdError) and "closed the connection" in str(error)
        after = driver.submit("write", "k", b"v")
        assert [(h, e) for h, _, e in _collect(driver, 1)] == [(after, None)]

        [conn] = driver._conns
        conn.sock.shutdown(2)                                       # the send itself fails
        failed = driver.submit("write", "k", b"v")
        [(handle, _, error)] = _collect(driver, 1)
        assert handle is failed and isinstance(error, OSError)
        last = driver.submit("write", "k", b"v")
        assert [(h, e) for h, _, e in _collect(driver, 1)] == [(last, None)]
    finally:
        driver.close()


def test_responses_are_parsed_with_content_length_or_chunked_and_wait_until_complete() -> None:
    whole = bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n")
    assert parse_response(whole) == (200, b"hello", len(whole) - len(b"HTTP/1.1 200 OK\r\n"))
    assert parse_response(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")) is None
    chunked = bytearray(b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert parse_response(chunked) == (404, b"abcde", len(chunked))
    assert parse_response(chunked[:-2]) is None
    with pytest.raises(EtcdError, match="not an HTTP response"):
        parse_response(bytearray(b"SSH-2.0-OpenSSH\r\n\r\n"))


@pytest.mark.cluster
@pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd is not installed")
def test_real_etcd_takes_puts_and_answers_reads(tmp_path: Path) -> None:
    from bench.etcd import EtcdCluster

    with EtcdCluster(tmp_path) as etcd:
        driver = EtcdDriver({"endpoints": etcd.endpoints, "threads": 6})
        try:
            for i in range(12):
                driver.submit("write", f"key{i}", b"value")
            assert [e for _, _, e in _collect(driver, 12)] == [None] * 12
            driver.submit("read", "key3", b"")
            assert [e for _, _, e in _collect(driver, 1)] == [None]
        finally:
            driver.close()
