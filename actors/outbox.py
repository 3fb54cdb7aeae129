"""What an actor sends while it handles one batch, sent when the batch is done.

Under load an actor is handed dozens of messages at once (everything one ``recv``
brought). Sending each answer on its own would cost one encoding, one queue hand-off,
one frame and one delivery per message; an ``Outbox`` gathers them per destination and
sends each destination one frame (``send_batch``), and each client connection one frame
of replies (``send_many``). Order per destination is kept.

An actor flushes when its inbox is empty (or the outbox holds ``LIMIT`` messages): while
more input is already waiting, what it would send now goes out with what that input
produces, so under load frames grow instead of multiplying, and when idle nothing waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Send = Callable[[str, Any], None]
SendBatch = Callable[[str, list[Any]], None]
LIMIT = 512


class Outbox:
    """Per-destination queues, emptied by ``flush`` (an actor calls it after each batch)."""

    __slots__ = ("_nodes", "_replies", "_send", "_send_batch", "count")

    def __init__(self, send: Send, send_batch: SendBatch | None = None) -> None:
        self._send = send
        self._send_batch = send_batch
        self._nodes: dict[str, list[Any]] = {}
        self._replies: dict[Any, list[Any]] = {}
        self.count = 0

    def send(self, dest: str, message: Any) -> None:
        """Queue ``message`` for node ``dest``."""
        self._queue(self._nodes, dest, message)

    def reply(self, channel: Any, message: Any) -> None:
        """Queue ``message`` for a client connection (anything with ``send``; ``send_many`` if it has one)."""
        self._queue(self._replies, channel, message)

    def _queue(self, table: dict[Any, list[Any]], dest: Any, message: Any) -> None:
        self.count += 1
        queued = table.get(dest)
        if queued is None:
            table[dest] = [message]
        else:
            queued.append(message)

    def flush_unless_busy(self, inbox: Any) -> None:
        """Flush, unless more input waits in ``inbox`` and fewer than ``LIMIT`` messages are queued."""
        if self.count >= LIMIT or inbox.empty():
            self.flush()

    def flush(self) -> None:
        """Send everything queued: one batch per node, one frame per client connection."""
        self.count = 0
        if self._nodes:
            nodes, self._nodes = self._nodes, {}
            for dest, messages in nodes.items():
                if self._send_batch is not None and len(messages) > 1:
                    self._send_batch(dest, messages)
                else:
                    for message in messages:
                        self._send(dest, message)
        if self._replies:
            replies, self._replies = self._replies, {}
            for channel, messages in replies.items():
                send_many = getattr(channel, "send_many", None)
                if send_many is not None and len(messages) > 1:
                    send_many(messages)
                else:
                    for message in messages:
                        channel.send(message)


__all__ = ["Outbox"]
