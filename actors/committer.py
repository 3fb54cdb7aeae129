"""CommitterActor: the one thread that writes a replica's store, so the replica never waits on a disk.

A durable commit waits for the disk (an fdatasync of the write-ahead log, or of LMDB's pages)
for a millisecond or more. The replica runs on its node's I/O loop (``actors.mailbox``), which
must never wait, so it hands each group commit to this actor and goes on serving reads and
staging the next group; the answer (``Committed``, ``Dropped``) comes back as a message, and
only then are the group's writes acknowledged. One job at a time, in the order sent: the
replica keeps at most one commit in flight, and the writes that arrive meanwhile form the next
group (a pipelined group commit).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import pykka

from storage import objects
from storage.objects import Obj
from storage.store import Store

from .mailbox import Actor

log = logging.getLogger(__name__)


class Commit(NamedTuple):
    """Write ``objects`` (key -> object), ``hints`` and ``paxos`` states (key -> state) in one durable
    transaction; ``acks`` ride along."""
    objects: dict[str, Obj]
    hints: list[tuple[str, str, Obj]]
    acks: list[tuple[str, Any]]
    paxos: dict[str, bytes] = {}


class Committed(NamedTuple):
    """A ``Commit`` is done: durable if ``error`` is None, else nothing of it was written."""
    objects: dict[str, Obj]
    hints: int
    acks: list[tuple[str, Any]]
    error: Exception | None


class DropKeys(NamedTuple):
    """Delete each key whose stored object still equals the one given."""
    items: list[tuple[str, Obj]]
    reason: str


class Dropped(NamedTuple):
    """A ``DropKeys`` is done: the keys deleted (none if ``error``)."""
    keys: list[str]
    reason: str
    error: Exception | None


class DeleteHintsJob(NamedTuple):
    """Delete delivered hints."""
    hint_ids: list[bytes]


def commit(store: Store, job: Commit) -> Committed:
    """Run one group commit; its outcome, never an exception."""
    try:
        if job.paxos:
            store.apply(objects=job.objects.items(), hints=job.hints, paxos=job.paxos.items())
        else:
            store.apply(objects=job.objects.items(), hints=job.hints)
    except Exception as exc:  # noqa: BLE001 - the replica answers every ack with it
        return Committed(job.objects, len(job.hints), job.acks, exc)
    return Committed(job.objects, len(job.hints), job.acks, None)


def drop(store: Store, job: DropKeys) -> Dropped:
    """Delete the keys whose stored object still equals the given one; the keys deleted, or the error."""
    try:
        doomed = [key for key, obj in job.items
                  if (current := store.get(key)) is not None and objects.equal(current, obj)]
        if doomed:
            store.apply(deletes=doomed)
    except Exception as exc:  # noqa: BLE001
        return Dropped([], job.reason, exc)
    return Dropped(doomed, job.reason, None)


class CommitterActor(Actor):
    """Runs a replica's store writes on its own thread and reports each back to ``replica``."""

    def __init__(self, store: Store, replica: pykka.ActorRef[Any]) -> None:
        super().__init__()
        self.store = store
        self.replica = replica

    def on_receive(self, message: Any) -> None:
        if isinstance(message, Commit):
            self._report(commit(self.store, message))
        elif isinstance(message, DropKeys):
            self._report(drop(self.store, message))
        elif isinstance(message, DeleteHintsJob):
            try:
                self.store.delete_hints(message.hint_ids)
            except Exception:
                log.exception("deleting %d delivered hints failed", len(message.hint_ids))
        else:
            log.warning("committer ignored unexpected %s", type(message).__name__)

    def _report(self, message: Any) -> None:
        try:
            self.replica.tell(message)
        except pykka.ActorDeadError:
            log.debug("replica stopped before %s reached it", type(message).__name__)


__all__ = ["Commit", "Committed", "CommitterActor", "DeleteHintsJob", "DropKeys", "Dropped", "commit", "drop"]
