"""Serial requests (Paxos per key): the acceptor's rules, and proposers racing over a simulated network.

The proposer (``actors.paxos.SerialRequest``) and the acceptor rules are pure: these tests run
them with no actors and no sockets. A simulated network delivers messages in an order Hypothesis
chooses, loses some (the sender hears of some losses, not of others), and lets time pass; every
outcome is then checked against what the acceptors chose. The property that matters: never a
false success (two winners, or a winner whose value is not the chosen one) and never a false
definite failure (``VersionMismatch`` for a write that took effect).
"""

from __future__ import annotations

import queue
import random
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from actors import paxos
from actors.errors import LeaderlessError, VersionMismatch
from actors.messages import (PaxosAccepted, PaxosCommit, PaxosCommitted, PaxosPrepare, PaxosPromise, PaxosPropose)
from actors.linearizable import RegisterOp, check_register
from actors.paxos import NO_BALLOT, AcceptorState, Answer, Arm, Send, SerialRequest, condition_check
from actors.membership import Membership
from actors.replica import ReplicaActor
from actors.ring import Ring
from actors.stats import Stats
from storage import objects, versions
from storage.store import LmdbStore

B1, B2, B3 = (10, "n1"), (10, "n2"), (11, "n1")


# --- the acceptor -------------------------------------------------------------------------------

def test_an_acceptor_promises_only_a_ballot_higher_than_every_one_it_promised() -> None:
    state, ok = paxos.on_prepare(AcceptorState(), B1)
    assert ok and state is not None and state.promised == B1
    assert paxos.on_prepare(state, B1) == (None, False)           # not again
    assert paxos.on_prepare(state, (9, "n9")) == (None, False)
    later, ok = paxos.on_prepare(state, B2)
    assert ok and later is not None and later.promised == B2


def test_an_acceptor_refuses_a_proposal_below_its_promise_and_keeps_the_one_it_accepted() -> None:
    state, _ = paxos.on_prepare(AcceptorState(), B2)
    assert state is not None
    assert paxos.on_propose(state, B1, b"old") == (None, False)
    accepted, ok = paxos.on_propose(state, B2, b"record")
    assert ok and accepted == AcceptorState(B2, B2, b"record", NO_BALLOT)


def test_a_commit_ends_the_accepted_proposal_it_covers_and_remembers_the_newest_commit() -> None:
    state = AcceptorState(B3, B3, b"newer", B1)
    assert paxos.on_commit(state, B2) == AcceptorState(B3, B3, b"newer", B2)     # an older round's commit
    assert paxos.on_commit(state, B3) == AcceptorState(B3, NO_BALLOT, None, B3)
    assert paxos.on_commit(AcceptorState(B3, NO_BALLOT, None, B3), B1).committed == B3


def test_an_acceptor_state_survives_its_encoding() -> None:
    state = AcceptorState(B3, B2, b"\x03obj", B1)
    assert AcceptorState.decode(state.encode()) == state
    assert AcceptorState.decode(None) == AcceptorState()


# --- proposers racing over a simulated network ------------------------------------------------------

NODES = ("n1", "n2", "n3")


class World:
    """Acceptors with their states and objects, and the messages in flight between them and proposers."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data
        self.now = 0.0
        self.states = {node: AcceptorState() for node in NODES}
        self.objects: dict[str, Any] = dict.fromkeys(NODES)
        self.in_flight: list[tuple[str, str, Any]] = []       # (to, from, message)
        self.proposers: dict[str, SerialRequest] = {}
        self.answers: dict[str, Answer] = {}
        self.counter = 0
        self.tick = 0                                         # events so far: the history's clock
        self.invoked: dict[str, int] = {}
        self.completed: dict[str, int] = {}
        self.values: dict[str, bytes | None] = {}

    def ballot(self, above: tuple[int, str], name: str) -> tuple[int, str]:
        self.counter = max(self.counter, above[0]) + 1
        return (self.counter, name)

    def proposer(self, name: str, value: bytes | None, write: bool = True, deadline: float = 50.0) -> SerialRequest:
        request = SerialRequest(
            req_id=len(self.proposers) + 1, coordinator=name, key="user:priya", targets=list(NODES),
            deadline=deadline, write=write,
            build=lambda current, v=value: versions.update(current, objects.context(current), v, paxos.PAXOS_ACTOR),
            check=condition_check(("if_absent",), "user:priya"),
            new_ballot=lambda above, n=name: self.ballot(above, n), clock=lambda: self.now,
            rng=random.Random(0))
        self.proposers[name] = request
        self.invoked[name], self.values[name] = self.tick, value
        self.apply(name, request.start())
        return request

    def apply(self, name: str, effects: list[Any]) -> None:
        for effect in effects:
            if isinstance(effect, Send):
                self.in_flight.append((effect.node, name, effect.message))
            elif isinstance(effect, Answer):
                assert name not in self.answers, f"{name} answered twice"
                self.answers[name] = effect
                self.completed[name] = self.tick

    def acceptor(self, node: str, message: Any) -> Any:
        state = self.states[node]
        if isinstance(message, PaxosPrepare):
            new, ok = paxos.on_prepare(state, message.ballot)
            reply: Any = PaxosPromise(message.req_id, node, message.ballot, ok, state.promised, state.accepted,
                                      state.accepted_obj, state.committed, self.objects[node])
        elif isinstance(message, PaxosPropose):
            new, ok = paxos.on_propose(state, message.ballot, paxos.record(message.obj) or b"")
            reply = PaxosAccepted(message.req_id, node, message.ballot, ok, state.promised)
        else:
            assert isinstance(message, PaxosCommit)
            new = paxos.on_commit(state, message.ballot)
            self.objects[node] = objects.merge(self.objects[node], paxos.as_object(message.obj))
            reply = PaxosCommitted(message.req_id, node, message.ballot)
        if new is not None:
            self.states[node] = new
        return reply

    def deliver(self, request: SerialRequest, name: str, reply: Any) -> None:
        if isinstance(reply, PaxosPromise):
            self.apply(name, request.on_promise(reply))
        elif isinstance(reply, PaxosAccepted):
            self.apply(name, request.on_accepted(reply))
        else:
            self.apply(name, request.on_committed(reply))

    def step(self) -> bool:
        """One event chosen by Hypothesis: deliver, lose, or let time pass. False when nothing is left."""
        pending = [n for n, r in self.proposers.items() if n not in self.answers]
        if not self.in_flight and not pending:
            return False
        self.tick += 1
        choice = self.data.draw(st.integers(0, 19)) if self.in_flight else 19
        if choice < 17:                                       # deliver one message, any one in flight
            to, frm, message = self.in_flight.pop(self.data.draw(st.integers(0, len(self.in_flight) - 1)))
            if to in NODES:
                reply = self.acceptor(to, message)
                self.in_flight.append((frm, to, reply))
            elif to not in self.answers:
                self.deliver(self.proposers[to], to, message)
        elif choice < 19:                                     # lose one; the sender hears of it, or not
            to, frm, message = self.in_flight.pop(self.data.draw(st.integers(0, len(self.in_flight) - 1)))
            if to in NODES and frm not in self.answers and self.data.draw(st.booleans()):
                phase = {PaxosPrepare: "prepare", PaxosPropose: "propose", PaxosCommit: "commit"}[type(message)]
                self.apply(frm, self.proposers[frm].on_unreachable(to, message.ballot, phase))
        else:                                                 # time passes: backoffs end, deadlines come
            self.now += self.data.draw(st.sampled_from([0.001, 0.01, 0.1, 1.0, 60.0]))
            for name in pending:
                self.apply(name, self.proposers[name].on_timer(self.now))
        return True

    def settle(self, readers: int = 0) -> None:
        """Run until every request answered; ``readers`` serial reads start at moments Hypothesis picks."""
        for i in range(4000):
            if readers and self.data.draw(st.integers(0, 9)) == 0:
                readers -= 1
                self.proposer(f"r{readers}", None, write=False, deadline=self.now + 50.0)
            if not self.step() and not readers:
                return
        raise AssertionError("the race never ended")

    def history(self) -> list[RegisterOp]:
        """Every request as an operation on a compare-and-set register (a claim is ``cas(None, value)``)."""
        ops = []
        for name, answer in self.answers.items():
            invoked, completed = self.invoked[name], self.completed[name]
            if not self.proposers[name].write:
                if answer.ok:
                    values = objects.live_values(answer.result)
                    assert len(values) <= 1, values
                    ops.append(RegisterOp(name, "read", invoked, completed, result=values[0] if values else None))
            elif answer.ok or isinstance(answer.result, VersionMismatch):
                ops.append(RegisterOp(name, "cas", invoked, completed, (None, self.values[name]), answer.ok))
            else:                                             # indeterminate
                ops.append(RegisterOp(name, "cas", invoked, None, (None, self.values[name])))
        return ops

    def chosen(self) -> Any:
        """What a serial read finds once every message is delivered: run one with no losses."""
        self.data = _NoLoss()                                 # type: ignore[assignment]
        self.proposer("reader", None, write=False, deadline=self.now + 1e9)
        self.settle()
        answer = self.answers["reader"]
        assert answer.ok
        return objects.live_values(answer.result)


class _NoLoss:
    """A 'data' drawing the first choice always: deliver the oldest message."""

    def draw(self, strategy: Any) -> Any:
        return 0


@settings(deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), racers=st.integers(2, 5), readers=st.integers(0, 4))
def test_racing_unique_claims_and_serial_reads_are_linearizable(data: st.DataObject, racers: int,
                                                                 readers: int) -> None:
    world = World(data)
    for i in range(racers):
        world.proposer(f"c{i}", f"uid-{i}".encode())
    world.settle(readers)
    verdict = check_register(world.history())
    assert verdict["valid"] is True, verdict
    winners = [name for name, answer in world.answers.items() if answer.ok and name.startswith("c")]
    assert len(winners) <= 1
    chosen = world.chosen()
    assert len(chosen) <= 1                                   # one value, whoever won
    if winners:
        assert chosen == [f"uid-{winners[0][1:]}".encode()]  # the winner's value is the one chosen
    for name, answer in world.answers.items():
        if not name.startswith("c") or answer.ok:
            continue
        assert isinstance(answer.result, LeaderlessError)
        if isinstance(answer.result, VersionMismatch):        # a definite failure: its value is not there
            assert chosen != [f"uid-{name[1:]}".encode()], f"{name} was told it failed, but its value won"


def test_a_proposal_found_in_flight_is_finished_before_the_read_and_never_lost() -> None:
    # c0's value was accepted by n1, then c0 went silent: it may have been chosen (c1 cannot tell
    # a minority from a majority it only partly sees), so c1's round, whose promises include n1's,
    # must finish it first, and then finds the name taken.
    world = World(_NoLoss())                                  # type: ignore[arg-type]
    world.states["n1"] = AcceptorState((5, "c0"), (5, "c0"), paxos.record(
        versions.update(None, (), b"uid-0", paxos.PAXOS_ACTOR)), NO_BALLOT)
    world.counter = 10                                        # c1's ballot is higher than c0's
    world.proposer("c1", b"uid-1")
    world.settle()
    assert isinstance(world.answers["c1"].result, VersionMismatch)   # c0's claim was there first
    assert world.chosen() == [b"uid-0"]


def test_a_majority_that_cannot_be_reached_fails_the_request_as_undecided_not_as_a_mismatch() -> None:
    world = World(_NoLoss())                                  # type: ignore[arg-type]
    request = world.proposer("c0", b"uid-0")
    for node in ("n2", "n3"):
        world.apply("c0", request.on_unreachable(node, request.ballot, "prepare"))
    answer = world.answers["c0"]
    assert not answer.ok and type(answer.result).__name__ == "QuorumFailed"
    assert "cannot be reached" in str(answer.result)


def test_a_serial_request_arms_its_deadline_and_times_out_with_one_answer() -> None:
    world = World(_NoLoss())                                  # type: ignore[arg-type]
    request = SerialRequest(1, "c0", "k", list(NODES), 3.0, True, lambda current: current,
                            condition_check(None, "k"), lambda above: world.ballot(above, "c0"), lambda: world.now)
    effects = request.start()
    assert [e.node for e in effects if isinstance(e, Send)] == list(NODES) and Arm(3.0) in effects
    world.now = 3.0                                           # every prepare lost, silently
    answer = request.on_timer(world.now)
    assert len(answer) == 1 and isinstance(answer[0], Answer) and not answer[0].ok
    assert request.on_timer(10.0) == [] and request.state is paxos.State.DONE


def test_a_write_some_acceptor_took_is_not_retried_but_answered_as_undecided() -> None:
    # Retrying would let our own old proposal be finished by our next round, and then report the
    # name as taken (a false definite failure) although it is ours.
    world = World(_NoLoss())                                  # type: ignore[arg-type]
    request = world.proposer("c0", b"uid-0")
    promises = [world.acceptor(node, m) for node, _, m in world.in_flight]
    world.in_flight.clear()
    for promise in promises:
        world.deliver(request, "c0", promise)
    assert request.state is paxos.State.PROPOSING
    proposals = [m for node, _, m in world.in_flight]
    world.in_flight.clear()
    world.deliver(request, "c0", world.acceptor("n1", proposals[0]))          # n1 took it
    higher = (request.ballot[0] + 5, "c9")                                    # then c9 came with a higher ballot
    for node, proposal in zip(("n2", "n3"), proposals[1:]):
        world.states[node] = world.states[node]._replace(promised=higher)
        world.deliver(request, "c0", world.acceptor(node, proposal))          # refused
    answer = world.answers["c0"]
    assert not answer.ok and not isinstance(answer.result, VersionMismatch)
    assert "may or may not take effect" in str(answer.result)


def test_a_write_no_acceptor_took_is_retried_with_a_higher_ballot() -> None:
    world = World(_NoLoss())                                  # type: ignore[arg-type]
    request = world.proposer("c0", b"uid-0")
    for promise in [world.acceptor(node, m) for node, _, m in world.in_flight]:
        world.deliver(request, "c0", promise)
    world.in_flight.clear()
    higher = (request.ballot[0] + 5, "c9")
    for node in NODES:
        world.states[node] = world.states[node]._replace(promised=higher)
        world.deliver(request, "c0", world.acceptor(node, PaxosPropose(1, "c0", "k", request.ballot, None)))
    assert "c0" not in world.answers and request.state is paxos.State.WAITING
    world.now = request.retry_at or 0.0
    world.apply("c0", request.on_timer(world.now))
    assert request.state is paxos.State.PREPARING and request.ballot > higher


# --- the acceptor inside a replica: durable before it answers, across restarts ----------------------

def _replica(path: str, sent: "queue.Queue[tuple[str, Any]]") -> tuple[Any, LmdbStore]:
    store = LmdbStore(path)
    ring = Ring(list(NODES), partitions=8, target_n=3)
    membership = Membership("n1", ring)
    membership.publish(dict.fromkeys(NODES, "up"))
    return ReplicaActor.start("n1", store, lambda dest, message: sent.put((dest, message)), Stats(), membership), store


def _reply(sent: "queue.Queue[tuple[str, Any]]", kind: type) -> Any:
    while True:
        _, message = sent.get(timeout=5.0)
        if isinstance(message, kind):
            return message


def test_a_promise_survives_a_restart_so_an_older_ballot_is_refused_afterwards(tmp_path: Any) -> None:
    sent: queue.Queue[tuple[str, Any]] = queue.Queue()
    ref, store = _replica(str(tmp_path / "store"), sent)
    try:
        ref.tell(PaxosPrepare(1, "co", "user:priya", B3))
        assert _reply(sent, PaxosPromise).ok                  # answered once durable
        ref.tell(PaxosPropose(2, "co", "user:priya", B3, versions.update(None, (), b"uid-0", paxos.PAXOS_ACTOR)))
        assert _reply(sent, PaxosAccepted).ok
    finally:
        ref.stop()
        store.close()
    ref, store = _replica(str(tmp_path / "store"), sent)      # the node crashed and came back
    try:
        ref.tell(PaxosPrepare(3, "co", "user:priya", B2))     # older than what it promised before
        refused = _reply(sent, PaxosPromise)
        assert not refused.ok and refused.promised == B3
        ref.tell(PaxosPrepare(4, "co", "user:priya", (B3[0] + 1, "n9")))
        promise = _reply(sent, PaxosPromise)
        assert promise.ok and promise.accepted == B3          # and it still tells of the proposal it took
        assert versions.values(paxos.as_object(promise.accepted_obj)) == [b"uid-0"]
    finally:
        ref.stop()
        store.close()
