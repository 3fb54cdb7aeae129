"""GossiperActor: heartbeats, failure detection and the membership view.

Foundation version: every ``interval`` the node sends a ``Heartbeat`` (with its view)
to every peer; a peer not heard from for ``down_after`` seconds is marked down, and up
again on its next heartbeat. Peers start as down until first heard, so a restarted
node routes nothing to members it has not yet seen alive. The view is published to
``Membership`` for the coordinator. (Random-peer gossip and an adaptive phi accrual
detector replace this in the healing work; the message and the published view stay.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pykka

from .membership import DOWN, UP, Membership
from .messages import Batch, Heartbeat, Tick

log = logging.getLogger(__name__)


class GossiperActor(pykka.ThreadingActor):
    """Keeps ``membership`` current from heartbeats."""

    def __init__(self, name: str, incarnation: int, membership: Membership, peers: Callable[[], list[str]],
                 send: Callable[[str, Any], None], *, interval: float = 0.5, down_after: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.name = name
        self.incarnation = incarnation
        self.membership = membership
        self.peers = peers
        self.send = send
        self.interval = interval
        self.down_after = down_after
        self.clock = clock
        self.last_heard: dict[str, float] = {}
        self.views: dict[str, dict[str, str]] = {}
        self._next_beat = 0.0

    def on_receive(self, message: Any) -> None:
        items = message.messages if isinstance(message, Batch) else [message]
        changed = False
        for item in items:
            if isinstance(item, Heartbeat):
                changed |= self._heard(item)
            elif isinstance(item, Tick):
                changed |= self._tick(item.now)
        if changed:
            self._publish()

    def _heard(self, beat: Heartbeat) -> bool:
        was_up = beat.src in self.last_heard and self.membership.states.get(beat.src) == UP
        self.last_heard[beat.src] = self.clock()
        self.views[beat.src] = dict(beat.members)
        if not was_up:
            log.info("%s sees %s up", self.name, beat.src)
        return not was_up

    def _tick(self, now: float) -> bool:
        if now >= self._next_beat:
            self._next_beat = now + self.interval
            beat = Heartbeat(self.name, self.incarnation, self.membership.states)
            for peer in self.peers():
                self.send(peer, beat)
        states = self.membership.states
        changed = False
        for peer in self.peers():
            heard = self.last_heard.get(peer)
            alive = heard is not None and now - heard <= self.down_after
            if alive != (states.get(peer) == UP):
                changed = True
                if not alive and heard is not None:
                    log.info("%s marks %s down (silent for %.1fs)", self.name, peer, now - heard)
        return changed

    def _publish(self) -> None:
        now = self.clock()
        states = {peer: (UP if peer in self.last_heard and now - self.last_heard[peer] <= self.down_after else DOWN)
                  for peer in self.peers()}
        self.membership.publish(states)
