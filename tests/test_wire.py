"""The wire format: handshake, framing and safe decoding, over socket pairs (no nodes)."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading

import pytest

from actors.errors import AuthenticationFailed, ProtocolError, StorageFull
from actors.messages import Ack, ClientPut, Hello, ReplicaPut
from actors.wire import MAX_FRAME, FrameReader, client_handshake, encode, encode_many, server_handshake
from storage import versions


def handshake(client_secret: bytes, server_secret: bytes) -> tuple[BaseException | None, BaseException | None]:
    a, b = socket.socketpair()
    outcome: dict[str, BaseException | None] = {"server": None}

    def serve() -> None:
        try:
            server_handshake(b, server_secret)
        except BaseException as exc:   # recorded for the assertion
            outcome["server"] = exc
        finally:
            b.close()

    thread = threading.Thread(target=serve)
    thread.start()
    client_error = None
    try:
        client_handshake(a, client_secret)
    except BaseException as exc:
        client_error = exc
    thread.join(5)
    a.close()
    return client_error, outcome["server"]


def test_both_sides_accept_the_same_secret() -> None:
    assert handshake(b"s3cret", b"s3cret") == (None, None)


def test_a_wrong_secret_fails_on_both_sides() -> None:
    client_error, server_error = handshake(b"wrong", b"s3cret")
    assert isinstance(client_error, AuthenticationFailed)
    assert isinstance(server_error, AuthenticationFailed)


def test_messages_round_trip_through_frames_split_anywhere() -> None:
    obj = versions.update(None, (), b"value", "n1.ab")
    messages = [Hello("client"), ClientPut(1, "k", b"v", (("n1", 3),), 2, 1.5), ReplicaPut(7, "n2", "k", obj, "n3"),
                Ack(7, "n1", True)]
    stream = b"".join(encode(m) for m in messages)
    for cut in (1, 3, 5, len(stream) // 2, len(stream) - 1):
        reader = FrameReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert got == messages


def test_a_frame_over_the_limit_is_refused_from_its_header() -> None:
    with pytest.raises(ProtocolError, match="limit"):
        FrameReader().feed(struct.pack(">I", MAX_FRAME + 1))


def test_a_pickle_naming_a_global_outside_the_allow_list_is_refused() -> None:
    payload = pickle.dumps(os.getcwd)
    with pytest.raises(ProtocolError):
        FrameReader().feed(struct.pack(">I", len(payload)) + payload)


def test_random_bytes_are_a_protocol_error_not_a_crash() -> None:
    payload = bytes(range(256)) * 4
    with pytest.raises(ProtocolError):
        FrameReader().feed(struct.pack(">I", len(payload)) + payload)


def test_every_fast_path_message_round_trips_exactly() -> None:
    from actors.messages import Built, ClientGet, ClientUpdate, CoordinatePut, GetResult, Reply, ReplicaGet, \
        ReplicaGetReply
    from actors.errors import StorageFull
    from storage import crdts
    from storage.hlc import Timestamp
    dvv = versions.update(None, (("n2.x", 3),), b"v", "n1.ab")
    crdt = crdts.apply(None, "set", ("add", "milk"), "n1.ab", "op1", Timestamp(1, 0, "n1"))
    messages = [
        ReplicaPut(1, "n1", "k", dvv, None, False), ReplicaPut(2, "n1", "b\x00k", crdt, "n3"),
        Built(3, "n2", dvv), ReplicaGetReply(4, "n3", None), ReplicaGetReply(5, "n3", crdt), Ack(6, "n1", True),
        CoordinatePut(7, "n1", "k", None, (("a", 1),), None, "crdt:set", ("add", "x"), "op", ("if_absent",)),
        ReplicaGet(8, "n1", "k"), ClientPut(9, "k", b"v", (), "all", 1.5, "carts", ("if_context", (("a", 2),))),
        ClientGet(10, "k", 2, None, "", (("a", 1),)), ClientUpdate(11, "views", "home", ("increment", 5), "id"),
        Reply(12, True, (("n1.ab", 1),)), Reply(13, True, GetResult([b"a", b"b"], (("x", 1),))),
        Reply(14, True, ("a", "tuple", "that", "looks", "tagged")), Reply(15, True, None), Reply(16, True, ()),
        Reply(17, True, {"status": [1, 2]}), Ack(18, "n2", False, StorageFull("disk full")),
    ]
    stream = b"".join(encode(m) for m in messages)
    got = FrameReader().feed(stream)
    assert got[:-1] == messages[:-1]
    assert isinstance(got[-1].error, StorageFull) and str(got[-1].error) == "disk full"


def test_several_messages_sent_as_one_frame_arrive_in_order_and_intact() -> None:
    obj = versions.update(None, (), b"v1", "n1.a")
    sent = [ReplicaPut(1, "n1", "k1", obj, None), Ack(1, "n2", True), ClientPut(7, "k2", b"x"),
            Ack(2, "n3", False, StorageFull("boom")), Hello("peer", "n2")]
    frame = encode_many(sent)
    (size,) = struct.unpack(">I", frame[:4])
    assert size == len(frame) - 4                          # one frame, not five
    got = FrameReader().feed(frame)
    assert [type(m) for m in got] == [type(m) for m in sent]
    assert got[0] == sent[0] and got[1] == sent[1] and got[4] == sent[4]
    assert got[2].key == "k2" and got[2].value == b"x"
    assert isinstance(got[3].error, StorageFull) and str(got[3].error) == "boom"


def test_a_frame_with_an_unknown_message_code_is_refused_as_a_protocol_error() -> None:
    for code in (99, -1):
        payload = pickle.dumps([(code, 1, "n1")], protocol=5)
        with pytest.raises(ProtocolError):
            FrameReader().feed(struct.pack(">I", len(payload)) + payload)


def test_client_requests_end_with_reply_to_which_is_never_sent() -> None:
    from actors.messages import ClientGet, ClientUpdate

    for cls in (ClientPut, ClientGet, ClientUpdate):
        assert cls._fields[-1] == "reply_to"                # the node fills it in on arrival
    message = FrameReader().feed(encode(ClientPut(1, "k", b"v", reply_to=object())))[0]
    assert message.reply_to is None
