"""The I/O loop: one thread reading and writing many sockets, thread-safe sends, clean closes."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any


from actors.errors import ProtocolError
from actors.ioloop import IOLoop

WAIT = 10.0


class Sink:
    """Collects what a channel received and how it closed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = threading.Event()
        self.unsent: list[Any] = []
        self.close_calls = 0

    def on_data(self, _channel: Any, data: bytes) -> None:
        self.data += data

    def on_close(self, _channel: Any, unsent: list[Any]) -> None:
        self.close_calls += 1
        self.unsent = unsent
        self.closed.set()



def wait_until(check: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(WAIT)
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(1 << 16)
        assert chunk, "closed early"
        buf += chunk
    return bytes(buf)


def test_call_later_runs_each_function_on_the_loop_thread_in_time_order_never_early(loop: IOLoop) -> None:
    ran: list[tuple[str, float, threading.Thread]] = []
    done = threading.Event()
    start = time.monotonic()

    def note(name: str) -> None:
        ran.append((name, time.monotonic() - start, threading.current_thread()))
        if len(ran) == 3:
            done.set()

    loop.call_later(0.5, lambda: note("late"))          # the loop sleeps until its next timer, with no socket
    loop.call_later(0.1, lambda: note("early"))
    threading.Thread(target=lambda: loop.call_later(0.25, lambda: note("middle"))).start()
    assert done.wait(WAIT), ran
    assert [name for name, _, _ in ran] == ["early", "middle", "late"]
    assert all(at >= delay for (_, at, _), delay in zip(ran, (0.1, 0.25, 0.5)))
    assert {thread.name for _, _, thread in ran} == {"io-test"}


def test_sends_from_many_threads_all_arrive_each_threads_in_order(loop: IOLoop) -> None:
    ours, theirs = socket.socketpair()
    sink = Sink()
    channel = loop.channel(ours, sink.on_data, sink.on_close)
    per_thread = 2000

    def sender(tag: int) -> None:
        for i in range(per_thread):
            channel.send(b"%d:%d;" % (tag, i))

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = sum(len(b"%d:%d;" % (t, i)) for t in range(4) for i in range(per_thread))
    records = read_exactly(theirs, expected).decode().rstrip(";").split(";")
    seen: dict[str, list[int]] = {}
    for record in records:
        tag, i = record.split(":")
        seen.setdefault(tag, []).append(int(i))
    assert {tag: values == list(range(per_thread)) for tag, values in seen.items()} == \
        {str(t): True for t in range(4)}
    theirs.close()


def test_a_send_larger_than_the_socket_buffer_arrives_whole_while_the_reader_is_slow(loop: IOLoop) -> None:
    ours, theirs = socket.socketpair()
    sink = Sink()
    channel = loop.channel(ours, sink.on_data, sink.on_close)
    payload = bytes(range(256)) * (8 << 12)          # 8 MiB: the kernel takes it in many pieces
    assert channel.send(payload)
    assert channel.send(b"tail")
    time.sleep(0.2)                                   # the loop now waits for the socket to drain
    assert read_exactly(theirs, len(payload) + 4) == payload + b"tail"
    theirs.close()


def test_reads_reach_on_data_and_the_peer_closing_closes_the_channel_once(loop: IOLoop) -> None:
    ours, theirs = socket.socketpair()
    sink = Sink()
    channel = loop.channel(ours, sink.on_data, sink.on_close)
    theirs.sendall(b"hello ")
    theirs.sendall(b"world")
    wait_until(lambda: bytes(sink.data) == b"hello world")
    theirs.close()
    assert sink.closed.wait(WAIT)
    assert channel.closed and not channel.send(b"too late")
    time.sleep(0.05)
    assert sink.close_calls == 1


def test_closing_with_output_the_peer_never_read_reports_those_sends_unsent(loop: IOLoop) -> None:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sink = Sink()
    channel = loop.channel(ours, sink.on_data, sink.on_close)
    for i in range(200):
        channel.send(b"x" * 65536, tag=i)            # 13 MB: far more than the buffers hold
    time.sleep(0.2)
    channel.close()
    assert sink.closed.wait(WAIT)
    assert sink.unsent, "sends still queued at close are reported"
    assert sink.unsent == sorted(sink.unsent) and sink.unsent[-1] == 199
    theirs.close()


def test_a_protocol_error_in_one_channel_closes_it_and_the_loop_serves_the_others(loop: IOLoop) -> None:
    bad_ours, bad_theirs = socket.socketpair()
    good_ours, good_theirs = socket.socketpair()
    bad, good = Sink(), Sink()

    def refuse(_channel: Any, _data: bytes) -> None:
        raise ProtocolError("garbage")

    loop.channel(bad_ours, refuse, bad.on_close)
    loop.channel(good_ours, good.on_data, good.on_close)
    bad_theirs.sendall(b"garbage")
    assert bad.closed.wait(WAIT)
    bad_theirs.settimeout(WAIT)
    assert bad_theirs.recv(10) == b""                # the loop closed its end
    good_theirs.sendall(b"still here")
    wait_until(lambda: bytes(good.data) == b"still here")
    assert not good.closed.is_set()
    bad_theirs.close()
    good_theirs.close()


def test_stopping_the_loop_closes_every_channel_and_ends_its_thread() -> None:
    io = IOLoop("stopping")
    pairs = [socket.socketpair() for _ in range(3)]
    sinks = [Sink() for _ in pairs]
    channels = [io.channel(ours, sink.on_data, sink.on_close) for (ours, _), sink in zip(pairs, sinks)]
    channels[0].send(b"before stop")
    io.stop()
    assert not io.alive
    assert all(sink.closed.is_set() for sink in sinks)
    assert all(channel.closed for channel in channels)
    for _, theirs in pairs:
        theirs.settimeout(WAIT)
        assert theirs.recv(100) in (b"before stop", b"")
        theirs.close()
    late_ours, late_theirs = socket.socketpair()
    late = io.channel(late_ours, Sink().on_data, Sink().on_close)
    assert late.closed and not late.send(b"x")
    late_theirs.close()
