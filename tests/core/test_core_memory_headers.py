"""The memory connector carries a key and headers (``romeways.publish(..., key=, headers=)``):
the handler reads them from ``romeways.context()``, in the process or in a spawned worker, and a
resend (also one held for a full queue) keeps them. Plain messages stay plain bytes."""

from __future__ import annotations

import asyncio
import os
from multiprocessing import Queue
from typing import Any

import msgspec
from _core_helpers import get_from, run_until

import romeways
from romeways.connectors.memory import MemoryEnvelope

HEADERS = (("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),)


class Order(msgspec.Struct, frozen=True):
    id: int


def _app(
    queue: Queue[Any], *, spawn: bool = False, retries: int = 3
) -> tuple[romeways.App, romeways.MemoryQueueConfig]:
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
        spawn_process=spawn,
    )
    config = romeways.MemoryQueueConfig(
        connector_name="mem", queue=queue, frequency=0.05, retries=retries
    )
    return app, config


def test_key_and_headers_reach_the_handler_and_survive_a_resend() -> None:
    queue: Queue[Any] = Queue()
    app, config = _app(queue)
    seen: list[tuple[int, int, bytes | None, tuple[tuple[str, bytes], ...]]] = []

    @app.queue_consumer(queue_name="orders", config=config)
    async def handle(message: romeways.Message[Order]) -> None:
        ctx = romeways.context()
        seen.append((message.payload.id, message.attempt, ctx.key, ctx.headers))
        if message.payload.id == 1 and message.attempt == 1:
            raise romeways.ResendException()

    orders = app.publisher(handle)

    async def scenario() -> None:
        await romeways.publish(orders, Order(id=1), key=b"k-1", headers=dict(HEADERS))
        await orders.publish(Order(id=2), headers=[("tenant", b"acme")])
        await orders.publish(Order(id=3))
        await run_until(app, lambda: len(seen) == 4)
        await app.close_publishers()

    asyncio.run(scenario())
    assert sorted(seen) == [
        (1, 1, b"k-1", HEADERS),
        (1, 2, b"k-1", HEADERS),  # the resend kept them
        (2, 1, None, (("tenant", b"acme"),)),
        (3, 1, None, ()),
    ]


def test_plain_messages_stay_bytes_and_a_user_tuple_is_not_headers() -> None:
    queue: Queue[Any] = Queue()
    app, config = _app(queue)
    handle = app.queue_handle("q", dict[str, int], config=config)
    seen: list[tuple[object, bytes | None, tuple[tuple[str, bytes], ...]]] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        ctx = romeways.context()
        seen.append((message.payload, ctx.key, ctx.headers))

    async def publish_plain() -> None:
        await handle.publish({"a": 1})
        await app.close_publishers()

    asyncio.run(publish_plain())
    assert queue.get(timeout=2) == b'{"a":1}'  # no envelope without a key or headers
    queue.put(("traceparent", b"x"))  # any object a user puts is a payload, never headers
    asyncio.run(run_until(app, lambda: len(seen) == 1))
    assert seen == [('["traceparent","eA=="]', None, ())]  # its JSON, as ever


def test_headers_reach_a_handler_in_a_worker_process() -> None:
    queue: Queue[Any] = Queue()
    results: Queue[Any] = Queue()
    app, config = _app(queue, spawn=True)

    @app.queue_consumer(queue_name="orders", config=config)
    async def handle(message: romeways.Message[Order]) -> None:
        ctx = romeways.context()
        results.put((message.attempt, ctx.key, ctx.headers, os.getpid()))
        if message.attempt == 1:
            raise romeways.ResendException()

    orders = app.publisher(handle)

    async def scenario() -> list[Any]:
        runner = asyncio.create_task(app.start())
        await orders.publish(Order(id=5), key=b"k-5", headers=HEADERS)
        try:
            return [await get_from(results, 20), await get_from(results, 10)]
        finally:
            app.stop()
            await asyncio.wait_for(runner, 10)
            await app.close_publishers()

    got = asyncio.run(scenario())
    assert [item[:3] for item in got] == [(1, b"k-5", HEADERS), (2, b"k-5", HEADERS)]
    assert got[0][3] != os.getpid()


def test_a_resend_held_for_a_full_queue_keeps_its_headers() -> None:
    queue: Queue[Any] = Queue(maxsize=1)
    app, config = _app(queue)
    seen: list[tuple[int, int, bytes | None]] = []

    @app.queue_consumer(queue_name="orders", config=config)
    async def handle(message: romeways.Message[Order]) -> None:
        seen.append((message.payload.id, message.attempt, romeways.context().key))
        if message.payload.id == 1 and message.attempt == 1:
            await orders.publish(Order(id=2))  # fills the queue: the resend is held
            raise romeways.ResendException()

    orders = app.publisher(handle)

    async def scenario() -> None:
        await orders.publish(Order(id=1), key=b"k-1")
        await run_until(app, lambda: len(seen) == 3)
        await app.close_publishers()

    asyncio.run(scenario())
    assert seen == [(1, 1, b"k-1"), (1, 2, b"k-1"), (2, 1, None)]  # held: handed out first


def test_metadata_is_forgotten_on_ack_and_held_envelopes_go_back_whole() -> None:
    queue: Queue[Any] = Queue(maxsize=1)
    connector = romeways.MemoryQueueConnector(
        romeways.MemoryConnectorConfig(connector_name="mem"),
        romeways.MemoryQueueConfig(connector_name="mem", queue=queue, frequency=0.5),
        queue_name="q",
    )

    async def scenario() -> None:
        await connector.on_start()
        await connector.publish(b"one", key=b"k", headers=[("h", b"v")])
        assert await connector.get_messages(10) == [b"one"]
        assert connector.message_metadata(0) == romeways.MessageMetadata(
            key=b"k", headers=(("h", b"v"),)
        )
        await connector.send_messages(b"filler")
        await connector.resend(0, b"one-again")  # the queue is full: held
        await connector.ack([0])
        assert connector.message_metadata(0) == romeways.MessageMetadata()
        assert await connector.return_held(0.05) == [b"one-again"]  # still full: unsent
        await connector.resend(0, b"lost-metadata")  # after the ack: plain again (held)
        assert await connector.get_messages(10) == [b"lost-metadata", b"filler"]
        assert connector.message_metadata(1) == romeways.MessageMetadata()
        await connector.close()

    asyncio.run(scenario())
    await_back: Queue[Any] = Queue(maxsize=1)
    back = romeways.MemoryQueueConnector(
        romeways.MemoryConnectorConfig(connector_name="mem"),
        romeways.MemoryQueueConfig(connector_name="mem", queue=await_back, frequency=0.5),
        queue_name="q2",
    )

    async def held_back() -> None:
        await back.publish(b"a", key=b"k")
        assert await back.get_messages(1) == [b"a"]
        await back.send_messages(b"filler")
        await back.resend(0, b"a-again")  # held
        assert await back.get_messages(1) == [b"a-again"]  # held first, as delivery 1
        assert back.message_metadata(1) == romeways.MessageMetadata(key=b"k")
        await back.resend(1, b"a-third")  # the filler is still there: held again
        await back.ack([1])
        assert await_back.get(timeout=2) == b"filler"  # read by someone else: room
        assert await back.return_held(1.0) == []  # room now: put back, as an envelope
        await back.close()

    asyncio.run(held_back())
    assert await_back.get(timeout=2) == MemoryEnvelope(data=b"a-third", key=b"k")
