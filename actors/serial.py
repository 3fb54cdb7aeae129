"""The serial (Paxos) requests one node coordinates: their table, their timers, and what they do.

The coordinator hands this every ``ClientPut``/``ClientGet`` with ``serial=True`` and every
Paxos reply; each request is an ``actors.paxos.SerialRequest`` state machine, and this
carries out the effects it returns (messages to the key's primaries, the client's answer,
a timer). Nothing here waits: replies and ticks drive it.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage import crdts, objects, versions
from storage.crdts import Crdt
from storage.hlc import HybridClock, Timestamp, pack
from storage.objects import Obj
from storage.versions import DVVSet

from .errors import InvalidRequest, LeaderlessError, QuorumFailed
from .membership import Membership
from .messages import ClientGet, ClientPut, PaxosAccepted, PaxosCommitted, PaxosPromise, Reply, Unreachable
from .options import storage_key, validate_condition, validate_key, validate_timeout, validate_value
from .paxos import PAXOS_ACTOR, Answer, Arm, Ballot, Send, SerialRequest, condition_check, serial_result
from .stats import Stats

log = logging.getLogger(__name__)

REPLIES = (PaxosPromise, PaxosAccepted, PaxosCommitted)


@dataclass(slots=True)
class _Entry:
    request: SerialRequest
    client_req_id: int
    reply_to: Any
    op: str
    timer_at: float = 0.0


class SerialCoordinator:
    """Runs serial requests for the coordinator whose ``send`` and ``reply`` it is given."""

    def __init__(self, name: str, membership: Membership, send: Callable[[str, Any], None],
                 reply: Callable[[Any, Reply], None], stats: Stats, default_timeout: float,
                 clock: Callable[[], float] = time.monotonic, hlc: HybridClock | None = None,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.membership = membership
        self.send = send
        self.reply = reply
        self.stats = stats
        self.default_timeout = default_timeout
        self.clock = clock
        self.hlc = hlc or HybridClock(name)
        self.rng = rng or random.Random()
        self.requests: dict[int, _Entry] = {}
        self._ids = itertools.count(1 << 40)        # apart from the coordinator's own request ids
        self._timers: list[tuple[float, int, int]] = []
        self._seq = itertools.count()

    # --- requests ----------------------------------------------------------------------------------

    def start(self, message: ClientPut | ClientGet, bucket: Any) -> None:
        """Start a serial put (``ClientPut``) or read (``ClientGet``) of a bucket ``bucket`` (BucketProps)."""
        write = isinstance(message, ClientPut)
        op = "serial_put" if write else "serial_get"
        try:
            if bucket.type not in ("siblings", "lww"):
                raise InvalidRequest(f"serial requests are for siblings and lww buckets; {bucket.name!r} holds "
                                     f"{bucket.type}s")
            key = storage_key(bucket.name, validate_key(message.key))
            timeout = validate_timeout(message.timeout, self.default_timeout)
            value = validate_value(message.value) if write else None
            condition = validate_condition(message.condition) if write else None
        except InvalidRequest as exc:
            self._answer(message.reply_to, message.req_id, False, exc, f"{op}.invalid")
            return
        targets = self.membership.primaries(key, bucket.n)
        down = sorted(self.membership.down & set(targets))
        if len(targets) - len(down) < len(targets) // 2 + 1:     # as the plain paths do: no round at all
            self._answer(message.reply_to, message.req_id, False, QuorumFailed(
                needed=len(targets) // 2 + 1, got=0, op=op.replace("_", " "), down=down,
                reasons=["a majority of the key's primaries is down as this node sees it: nothing was proposed"]),
                f"{op}.quorum_failed")
            return
        req_id = next(self._ids)
        request = SerialRequest(req_id, self.name, key, targets, self.clock() + timeout, write,
                                self._builder(bucket.type, value), condition_check(condition, message.key),
                                self._new_ballot, self.clock, self.rng)
        entry = self.requests[req_id] = _Entry(request, message.req_id, message.reply_to, op)
        self._carry_out(req_id, entry, request.start())

    def handle(self, message: Any) -> None:
        """A Paxos reply, or an ``Unreachable`` naming a ballot."""
        entry = self.requests.get(message.req_id)
        if entry is None:
            return                                       # late reply of a finished request
        request = entry.request
        if isinstance(message, PaxosPromise):
            effects = request.on_promise(message)
        elif isinstance(message, PaxosAccepted):
            effects = request.on_accepted(message)
        elif isinstance(message, PaxosCommitted):
            effects = request.on_committed(message)
        elif isinstance(message, Unreachable) and message.ballot is not None:
            effects = request.on_unreachable(message.node, tuple(message.ballot), message.phase)  # type: ignore[arg-type]
        else:
            return
        self._carry_out(message.req_id, entry, effects)

    def expire(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, _, req_id = heapq.heappop(timers)
            entry = self.requests.get(req_id)
            if entry is None or entry.timer_at != when:
                continue
            entry.timer_at = 0.0
            self._carry_out(req_id, entry, entry.request.on_timer(now))

    # --- effects -----------------------------------------------------------------------------------

    def _carry_out(self, req_id: int, entry: _Entry, effects: list[Any]) -> None:
        for effect in effects:
            if type(effect) is Send:
                self.send(effect.node, effect.message)
            elif type(effect) is Arm:
                if effect.at != entry.timer_at:
                    entry.timer_at = effect.at
                    heapq.heappush(self._timers, (effect.at, next(self._seq), req_id))
            elif type(effect) is Answer:
                del self.requests[req_id]
                result = effect.result
                if effect.ok and not entry.request.write:
                    result = serial_result(result)
                outcome = "ok" if effect.ok else type(result).__name__
                self._answer(entry.reply_to, entry.client_req_id, effect.ok, result, f"{entry.op}.{outcome}")

    def _answer(self, reply_to: Any, client_req_id: int, ok: bool, result: Any, outcome: str) -> None:
        self.stats.incr(outcome)
        if reply_to is not None:
            self.reply(reply_to, Reply(client_req_id, ok, result))

    # --- what a round needs ---------------------------------------------------------------------------

    def _new_ballot(self, above: Ballot) -> Ballot:
        """A ballot of this node higher than ``above`` (and than any it gave before)."""
        if above[0]:
            self.hlc.observe(Timestamp(above[0] >> 16, above[0] & 0xFFFF, above[1]))
        return (pack(self.hlc.now()), self.name)

    def _builder(self, bucket_type: str, value: bytes | None) -> Callable[[Obj | None], Obj]:
        """How a serial write makes its object from the current one: it replaces every sibling it read,
        under a dot of `PAXOS_ACTOR` (siblings) or a timestamp later than the stored one (lww)."""
        def siblings(current: Obj | None) -> Obj:
            if current is not None and not isinstance(current, DVVSet):
                raise InvalidRequest("the key holds a CRDT, not a siblings value")
            return versions.update(current, objects.context(current), value, PAXOS_ACTOR)

        def lww(current: Obj | None) -> Obj:
            if current is not None and (not isinstance(current, Crdt) or current.type != "register"):
                raise InvalidRequest("the key does not hold an lww value")
            last = current.state[0] if current is not None and current.state else None
            stamp = self.hlc.after(Timestamp(*last) if last is not None else None)
            try:
                return crdts.apply(current, "register", ("assign", value), PAXOS_ACTOR, None, stamp)
            except crdts.CrdtError as exc:
                raise LeaderlessError(str(exc)) from exc

        return siblings if bucket_type == "siblings" else lww


__all__ = ["REPLIES", "SerialCoordinator"]
