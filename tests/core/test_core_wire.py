"""Wire compatibility with romeways 0.2 (golden bytes) and the typed payload codec."""

from __future__ import annotations

import asyncio

import msgspec
from _core_helpers import Feed, run_until, scripted_app

import romeways
from romeways._message import Codec


class Order(msgspec.Struct, frozen=True):
    id: int
    item: str


def test_to_json_golden_bytes() -> None:
    message = romeways.Message(payload="x", rw_resend_times=2)
    assert message.to_json() == b'{"payload":"x","rw_resend_times":2}'
    assert romeways.Message(payload="x").to_json() == b'{"payload":"x","rw_resend_times":0}'


def test_raise_resend_counter() -> None:
    message = romeways.Message(payload="x", rw_resend_times=1)
    raised = message.raise_resend_counter()
    assert raised == romeways.Message(payload="x", rw_resend_times=2)
    assert message.rw_resend_times == 1


def test_from_message_plain_text() -> None:
    assert romeways.Message.from_message(b"a message") == romeways.Message(
        payload="a message", rw_resend_times=0
    )
    # 0.2 kept any non-envelope bytes as their text, even when they are JSON.
    assert romeways.Message.from_message(b"10").payload == "10"
    assert romeways.Message.from_message(b'{"attr": 10}').payload == '{"attr": 10}'
    assert romeways.Message.from_message("é".encode()).payload == "é"


def test_from_message_envelope() -> None:
    message = romeways.Message.from_message(b'{"payload":"hi","rw_resend_times":3}')
    assert message == romeways.Message(payload="hi", rw_resend_times=3)
    # The spaced form romeways 0.2 wrote (json.dumps) reads the same.
    message = romeways.Message.from_message(b'{"payload": "10", "rw_resend_times": 0}')
    assert message == romeways.Message(payload="10", rw_resend_times=0)


def test_from_message_02_envelope_with_object_payload_gives_json_text() -> None:
    # romeways 0.2 read {"payload": {...}} envelopes as the object's JSON text.
    message = romeways.Message.from_message(b'{"payload": {"attr": 10}, "rw_resend_times":1}')
    assert message.rw_resend_times == 1
    assert message.payload == '{"attr": 10}'
    compact = romeways.Message.from_message(b'{"payload":{"attr":10},"rw_resend_times":2}')
    assert isinstance(compact.payload, str)
    assert msgspec.json.decode(compact.payload) == {"attr": 10}
    assert compact.rw_resend_times == 2


def test_to_json_from_message_round_trip() -> None:
    for payload in ["10", "plain text", '{"attr": 10}', 'quote " and \\ backslash', "ünï"]:
        message = romeways.Message(payload=payload, rw_resend_times=4)
        assert romeways.Message.from_message(message.to_json()) == message


def test_typed_resend_envelope_golden_bytes_and_round_trip() -> None:
    codec: Codec[Order] = Codec(Order)
    fresh = codec.decode(b'{"id": 7, "item": "book"}')
    assert fresh == romeways.Message(payload=Order(id=7, item="book"), rw_resend_times=0)
    wire = codec.encode_resend(fresh)
    assert wire == b'{"payload":{"id":7,"item":"book"},"rw_resend_times":1}'
    assert codec.decode(wire) == romeways.Message(
        payload=Order(id=7, item="book"), rw_resend_times=1
    )
    # A 0.2 consumer of the same queue would still read it, as JSON text.
    assert msgspec.json.decode(romeways.Message.from_message(wire).payload) == {
        "id": 7,
        "item": "book",
    }


def test_typed_handler_gets_the_same_order_back_after_a_resend() -> None:
    feed = Feed([b'{"id": 1, "item": "pen"}'])
    app, config = scripted_app(feed, retries=3)
    seen: list[romeways.Message[Order]] = []

    @app.queue_consumer(queue_name="orders", config=config)
    async def handler(message: romeways.Message[Order]) -> None:
        seen.append(message)
        if message.rw_resend_times == 0:
            raise romeways.ResendException()

    asyncio.run(run_until(app, lambda: len(seen) == 2))
    assert seen == [
        romeways.Message(payload=Order(id=1, item="pen"), rw_resend_times=0),
        romeways.Message(payload=Order(id=1, item="pen"), rw_resend_times=1),
    ]
    assert feed.resent == [(0, b'{"payload":{"id":1,"item":"pen"},"rw_resend_times":1}')]


def test_bare_message_annotation_gives_str_payloads() -> None:
    feed = Feed([b'{"a": 1}', b"123", b"text", b'{"payload": {"a": 2}, "rw_resend_times": 1}'])
    app, config = scripted_app(feed)
    seen: list[tuple[object, int]] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        seen.append((message.payload, message.rw_resend_times))

    asyncio.run(run_until(app, lambda: len(seen) == 4))
    assert sorted(seen, key=repr) == sorted(
        [('{"a": 1}', 0), ("123", 0), ("text", 0), ('{"a": 2}', 1)], key=repr
    )
    assert all(isinstance(payload, str) for payload, _ in seen)


def test_unannotated_handler_gets_str_payloads() -> None:
    feed = Feed([b"42"])
    app, config = scripted_app(feed)
    seen: list[object] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message) -> None:  # type: ignore[no-untyped-def]
        seen.append(message.payload)

    asyncio.run(run_until(app, lambda: len(seen) == 1))
    assert seen == ["42"]


def test_fresh_decoder_only_for_chunks_without_an_envelope() -> None:
    """The per-chunk shortcut: a chunk holding no resend envelope decodes each message with the
    payload decoder alone; a chunk with one (romeways' or 0.2's) gets None (decode each)."""
    typed: Codec[Order] = Codec(Order)
    fresh = typed.fresh_decoder([b'{"id": 1, "item": "a"}', b'{"id": 2, "item": "b"}'])
    assert fresh is not None and fresh(b'{"id": 2, "item": "b"}') == Order(id=2, item="b")
    envelope = typed.encode_resend(typed.decode(b'{"id": 1, "item": "a"}'))
    assert typed.fresh_decoder([b'{"id": 2, "item": "b"}', envelope]) is None
    text: Codec[str] = Codec(str)
    text_fresh = text.fresh_decoder([b"plain", "ünï".encode()])
    assert text_fresh is not None and text_fresh("ünï".encode()) == "ünï"
    assert text.fresh_decoder([b"plain", b'{"payload": "x", "rw_resend_times": 2}']) is None
    raw: Codec[bytes] = Codec(bytes)
    raw_fresh = raw.fresh_decoder([b"\xff\x00"])
    assert raw_fresh is not None and raw_fresh(b"\xff\x00") == b"\xff\x00"


def test_a_chunk_mixing_fresh_and_resent_messages_decodes_each_as_alone() -> None:
    """Whatever path a chunk takes, each handler gets what ``Codec.decode`` gives for its bytes,
    resend counters included, in order."""
    codec: Codec[Order] = Codec(Order)
    orders = [Order(id=i, item=f"item-{i}") for i in range(6)]
    wire = [msgspec.json.encode(o) for o in orders]
    wire[2] = msgspec.json.encode(romeways.Message(payload=orders[2], rw_resend_times=2))
    wire[4] = b'{"payload": {"id": 4, "item": "item-4"}, "rw_resend_times": 1}'  # 0.2 spacing
    feed = Feed([*wire[:3], *wire[3:]])
    app, config = scripted_app(feed, max_chunk_size=3, sequential=True, retries=5)
    seen: list[romeways.Message[Order]] = []

    @app.queue_consumer(queue_name="orders", config=config)
    async def handler(message: romeways.Message[Order]) -> None:
        seen.append(message)

    asyncio.run(run_until(app, lambda: len(seen) == 6))
    assert seen == [codec.decode(data) for data in wire]
    assert [m.rw_resend_times for m in seen] == [0, 0, 2, 0, 1, 0]
