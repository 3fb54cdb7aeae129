"""The outbox: what an actor sends while handling a batch goes out per destination, in order."""

from __future__ import annotations

import queue
from typing import Any

from actors.outbox import LIMIT, Outbox


class Channel:
    def __init__(self, batched: bool) -> None:
        self.frames: list[list[Any]] = []
        if batched:
            self.send_many = lambda messages: self.frames.append(list(messages))

    def send(self, message: Any) -> None:
        self.frames.append([message])


def test_messages_to_one_node_leave_as_one_batch_in_the_order_they_were_queued() -> None:
    single: list[tuple[str, Any]] = []
    batches: list[tuple[str, list[Any]]] = []
    out = Outbox(lambda dest, m: single.append((dest, m)), lambda dest, ms: batches.append((dest, list(ms))))
    for i in range(3):
        out.send("n2", i)
    out.send("n3", "only")
    assert not batches and not single                      # nothing leaves before the flush
    out.flush()
    assert batches == [("n2", [0, 1, 2])]
    assert single == [("n3", "only")]
    out.flush()
    assert batches == [("n2", [0, 1, 2])]                  # flushed messages are not sent twice


def test_replies_to_a_connection_leave_as_one_frame_and_plain_channels_get_them_one_by_one() -> None:
    out = Outbox(lambda dest, m: None)
    fast, plain = Channel(batched=True), Channel(batched=False)
    for i in range(3):
        out.reply(fast, i)
        out.reply(plain, i)
    out.flush()
    assert fast.frames == [[0, 1, 2]]
    assert plain.frames == [[0], [1], [2]]


def test_an_outbox_waits_while_more_input_is_queued_but_never_beyond_its_limit() -> None:
    sent: list[Any] = []
    out = Outbox(lambda dest, m: sent.append(m))
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    inbox.put("more work")
    out.send("n2", "a")
    out.flush_unless_busy(inbox)
    assert sent == []                                      # more input waits: hold on
    inbox.get()
    out.flush_unless_busy(inbox)
    assert sent == ["a"]                                   # idle: out it goes
    inbox.put("more work")
    for i in range(LIMIT):
        out.send("n2", i)
    out.flush_unless_busy(inbox)
    assert len(sent) == 1 + LIMIT                          # full: out it goes even when busy
