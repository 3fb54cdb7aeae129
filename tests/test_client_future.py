"""The client's futures: one reply each, timeouts, errors, and Pykka's helpers still take them."""

from __future__ import annotations

import queue
import sys
import threading

import pykka
import pytest

from actors import Future
from actors.errors import QuorumFailed, RequestTimeout


def test_get_waits_for_the_reply_set_by_another_thread() -> None:
    future = Future()
    threading.Timer(0.05, future.set, args=("ctx",)).start()
    assert future.get(timeout=5) == "ctx"
    assert future.get(timeout=0) == "ctx"                 # a second get answers at once


def test_get_raises_request_timeout_when_no_reply_comes() -> None:
    with pytest.raises(RequestTimeout):
        Future().get(timeout=0.05)


def test_an_error_reply_is_raised_by_get_every_time() -> None:
    future = Future()
    try:
        raise QuorumFailed(needed=2, got=1, replicas=["n1"])
    except QuorumFailed:
        future.set_exception(sys.exc_info())
    for _ in range(2):
        with pytest.raises(QuorumFailed):
            future.get(timeout=1)


def test_a_future_is_set_once() -> None:
    future = Future()
    future.set(1)
    with pytest.raises(queue.Full):
        future.set(2)
    assert future.get() == 1


def test_pykka_helpers_take_client_futures() -> None:
    futures = [Future() for _ in range(3)]
    for i, future in enumerate(futures):
        future.set(i)
    assert pykka.get_all(futures, timeout=1) == [0, 1, 2]
    assert futures[0].map(lambda v: v + 10).get(timeout=1) == 10


def test_a_done_callback_runs_once_on_the_thread_that_sets_the_reply() -> None:
    future = Future()
    calls: list[tuple[object, str]] = []
    future.add_done_callback(lambda f: calls.append((f.get(0), threading.current_thread().name)))
    assert calls == []                                     # no reply yet
    setter = threading.Thread(target=future.set, args=("ctx",), name="reply-thread")
    setter.start()
    setter.join()
    assert calls == [("ctx", "reply-thread")]
    future.add_done_callback(lambda f: calls.append((f.get(0), threading.current_thread().name)))
    assert calls[1] == ("ctx", threading.current_thread().name)   # already done: called at once, here


def test_a_done_callback_sees_the_error_and_a_failing_callback_stops_neither_the_others_nor_get(
        caplog: pytest.LogCaptureFixture) -> None:
    future = Future()
    seen: list[type] = []

    def broken(_f: Future) -> None:
        raise RuntimeError("a script's bug")

    def record(f: Future) -> None:
        with pytest.raises(QuorumFailed):
            f.get(0)
        seen.append(QuorumFailed)

    future.add_done_callback(broken)
    future.add_done_callback(record)
    try:
        raise QuorumFailed(needed=2, got=1, replicas=["n1"])
    except QuorumFailed:
        future.set_exception(sys.exc_info())
    assert seen == [QuorumFailed]
    assert "a done callback failed" in caplog.text
    with pytest.raises(QuorumFailed):
        future.get(timeout=1)

