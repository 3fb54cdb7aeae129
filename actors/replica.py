"""ReplicaActor: owns the node's store, applies writes, serves reads.

Group commit: writes are applied to an in-memory overlay of pending objects and
acknowledged only after the one transaction holding them commits (with sync). The
first write of a batch tells the actor a ``Flush``; every write that arrives before
that ``Flush`` is dequeued (typically the ones that came in during the previous
commit) joins the same transaction. Reads see the overlay, so consecutive writes to
one key build on each other and concurrent puts get distinct dots.

The coordinating replica of a put sends the built object (``Built``) as soon as it
exists, so the other replicas' commits run alongside its own; its ``Ack`` follows
the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pykka

from storage import versions
from storage.store import Store, StoreFull
from storage.versions import DVVSet

from .errors import LeaderlessError, StorageFull
from .messages import (Ack, Batch, Built, CoordinatePut, Flush, InspectRequest, LocalObject, Reply,
                       ReplicaGet, ReplicaGetReply, ReplicaPut)
from .stats import Stats

log = logging.getLogger(__name__)

Send = Callable[[str, Any], None]


def local_object(obj: DVVSet | None) -> LocalObject | None:
    """The user-facing view of one stored object."""
    if obj is None:
        return None
    every = versions.values(obj)
    live = [v for v in every if v is not None]
    return LocalObject(values=live, tombstone=not live, version=dict(versions.join(obj)), siblings=len(every))


class ReplicaActor(pykka.ThreadingActor):
    """Applies ``CoordinatePut``/``ReplicaPut`` durably and answers ``ReplicaGet``/``InspectRequest``."""

    def __init__(self, name: str, actor_id: str, store: Store, send: Send, stats: Stats) -> None:
        super().__init__()
        self.name = name
        self.actor_id = actor_id          # the id in our dots: changes when the store is wiped (kv679)
        self.store = store
        self.send = send
        self.stats = stats
        self._pending: dict[str, DVVSet] = {}
        self._pending_hints: list[tuple[str, str, DVVSet]] = []
        self._acks: list[tuple[str, Ack]] = []
        self._flush_told = False

    # --- dispatch ----------------------------------------------------------------------

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Batch):
            for item in message.messages:
                self._handle(item)
        else:
            self._handle(message)

    def _handle(self, message: Any) -> None:
        if isinstance(message, ReplicaPut):
            self._replica_put(message)
        elif isinstance(message, CoordinatePut):
            self._coordinate_put(message)
        elif isinstance(message, ReplicaGet):
            self.send(message.coordinator, ReplicaGetReply(message.req_id, self.name, self._current(message.key)))
        elif isinstance(message, Flush):
            self._flush()
        elif isinstance(message, InspectRequest):
            message.reply_to.send(Reply(message.req_id, True, local_object(self._current(message.key))))
        else:
            log.warning("replica %s ignored unexpected %s", self.name, type(message).__name__)

    # --- writes ------------------------------------------------------------------------

    def _current(self, key: str) -> DVVSet | None:
        obj = self._pending.get(key)
        return obj if obj is not None else self.store.get(key)

    def _coordinate_put(self, message: CoordinatePut) -> None:
        obj = versions.update(self._current(message.key), message.context, message.value, self.actor_id)
        self.send(message.coordinator, Built(message.req_id, self.name, obj))
        self._stage(message.key, obj, message.hint_for, message.coordinator, message.req_id)

    def _replica_put(self, message: ReplicaPut) -> None:
        current = self._current(message.key)
        merged = versions.sync(current, message.obj)
        if current is not None and message.key not in self._pending and versions.equal(merged, current):
            # Nothing new, and what we hold is already durable: acknowledge at once.
            if message.want_ack:
                self.send(message.coordinator, Ack(message.req_id, self.name, True))
            if message.hint_for is not None:
                self._stage_hint(message.hint_for, message.key, merged)
            return
        reply = message.coordinator if message.want_ack else None
        self._stage(message.key, merged, message.hint_for, reply, message.req_id)

    def _stage(self, key: str, obj: DVVSet, hint_for: str | None, reply: str | None, req_id: int) -> None:
        self._pending[key] = obj
        if hint_for is not None:
            self._pending_hints.append((hint_for, key, obj))
        if reply is not None:
            self._acks.append((reply, Ack(req_id, self.name, True)))
        self._tell_flush()

    def _stage_hint(self, hint_for: str, key: str, obj: DVVSet) -> None:
        self._pending_hints.append((hint_for, key, obj))
        self._tell_flush()

    def _tell_flush(self) -> None:
        if not self._flush_told:
            self._flush_told = True
            self.actor_ref.tell(Flush())

    def _flush(self) -> None:
        self._flush_told = False
        if not self._pending and not self._pending_hints:
            return
        objects, hints, acks = self._pending, self._pending_hints, self._acks
        self._pending, self._pending_hints, self._acks = {}, [], []
        try:
            self.store.apply(objects=objects.items(), hints=hints)
        except StoreFull as exc:
            log.error("replica %s: store full, %d writes refused: %s", self.name, len(objects), exc)
            self.stats.incr("writes.refused_full", len(objects))
            error = StorageFull(f"{self.name}: {exc}")
            for dest, ack in acks:
                self.send(dest, ack._replace(ok=False, error=error))
            return
        except Exception as exc:  # never ack what may not be durable
            log.exception("replica %s: commit failed", self.name)
            for dest, ack in acks:
                self.send(dest, ack._replace(ok=False, error=LeaderlessError(f"{self.name}: commit failed: {exc}")))
            return
        self.stats.incr("replica.commits")
        self.stats.incr("replica.writes", len(objects))
        if hints:
            self.stats.incr("hints.stored", len(hints))
        for dest, ack in acks:
            self.send(dest, ack)
