"""Typed publishing: QueueHandle[T] and romeways.publish through real connectors."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from multiprocessing import Queue

import msgspec
import pytest

import romeways


class Order(msgspec.Struct, frozen=True):
    id: int
    amount: float


class RecordingConnectorConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    pass


class RecordingQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    topic: str


PUBLISHED: list[tuple[str, bytes, bytes | None, Sequence[tuple[str, bytes]] | None]] = []
CLOSED: list[str] = []


class RecordingConnector(romeways.AQueueConnector[RecordingConnectorConfig, RecordingQueueConfig]):
    """A connector with the optional ``publish`` method (as Kafka has)."""

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        await asyncio.sleep(0.01)
        return []

    async def send_messages(self, message: bytes) -> None:
        raise AssertionError("publish() is preferred over send_messages()")

    async def publish(
        self,
        message: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        PUBLISHED.append((self.config.topic, message, key, headers))

    async def close(self) -> None:
        CLOSED.append(self.config.topic)


class BytesOnlyConnector(romeways.AQueueConnector[RecordingConnectorConfig, RecordingQueueConfig]):
    """A connector without ``publish``: it carries bytes only, no key or headers."""

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        await asyncio.sleep(0.01)
        return []

    async def send_messages(self, message: bytes) -> None:
        PUBLISHED.append((self.config.topic, message, None, None))


def _memory_app() -> tuple[romeways.App, Queue[bytes]]:
    app = romeways.App(shutdown_timeout=2.0)
    queue: Queue[bytes] = Queue()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=queue, frequency=0.05)

    @app.queue_consumer(queue_name="orders", config=config)
    async def handle(message: romeways.Message[Order]) -> None:
        return None

    return app, queue


def test_publish_from_app_code_puts_the_encoded_payload_on_the_memory_queue() -> None:
    app, queue = _memory_app()
    handle = app.queue_handle("orders", Order)

    async def scenario() -> None:
        await romeways.publish(handle, Order(id=1, amount=2.5))
        await handle.publish(Order(id=2, amount=0.5))
        await app.close_publishers()

    asyncio.run(scenario())
    got = [queue.get(timeout=2) for _ in range(2)]
    assert [msgspec.json.decode(g, type=Order) for g in got] == [
        Order(id=1, amount=2.5),
        Order(id=2, amount=0.5),
    ]
    assert handle.encode(Order(id=3, amount=1.0)) == b'{"id":3,"amount":1.0}'


def test_text_payloads_go_as_text_and_bytes_as_bytes() -> None:
    app = romeways.App()
    queue: Queue[bytes] = Queue()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=queue)
    text = app.queue_handle("text", str, config=config)
    raw = app.queue_handle("raw", bytes, config=config)

    async def scenario() -> None:
        await text.publish("héllo")
        await raw.publish(b"\x00\x01")

    asyncio.run(scenario())
    assert [queue.get(timeout=2), queue.get(timeout=2)] == ["héllo".encode(), b"\x00\x01"]
    assert romeways.Message.from_message("héllo".encode()).payload == "héllo"


def test_a_handler_publishes_to_another_queue_in_a_worker_process() -> None:
    """Real processes: a spawned worker's handler publishes; the parent reads the queue."""
    app = romeways.App(shutdown_timeout=2.0)
    inbox: Queue[bytes] = Queue()
    outbox: Queue[bytes] = Queue()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
        spawn_process=True,
    )
    in_config = romeways.MemoryQueueConfig(connector_name="mem", queue=inbox, frequency=0.05)
    out_config = romeways.MemoryQueueConfig(connector_name="mem", queue=outbox)
    doubled = app.queue_handle("doubled", Order, config=out_config)

    @app.queue_consumer(queue_name="orders", config=in_config)
    async def double(message: romeways.Message[Order]) -> None:
        ctx = romeways.context()
        order = message.payload
        await doubled.publish(Order(id=order.id, amount=order.amount * 2))
        assert ctx.queue_name == "orders"

    orders = app.publisher(double)

    async def scenario() -> bytes:
        runner = asyncio.create_task(app.start())
        await orders.publish(Order(id=7, amount=1.25))
        try:
            return await asyncio.to_thread(outbox.get, True, 20)
        finally:
            app.stop()
            await asyncio.wait_for(runner, 10)

    assert msgspec.json.decode(asyncio.run(scenario()), type=Order) == Order(id=7, amount=2.5)


def test_a_connector_with_publish_gets_key_and_headers() -> None:
    PUBLISHED.clear()
    CLOSED.clear()
    app = romeways.App()
    app.connector_register(
        connector=RecordingConnector, config=RecordingConnectorConfig(connector_name="rec")
    )
    config = RecordingQueueConfig(connector_name="rec", topic="t1")
    handle = app.queue_handle("events", Order, config=config)

    async def scenario() -> None:
        await handle.publish(Order(id=1, amount=1.0), key=b"k1", headers={"trace": b"abc"})
        await romeways.publish(handle, Order(id=2, amount=2.0))
        await app.close_publishers()

    asyncio.run(scenario())
    assert PUBLISHED == [
        ("t1", b'{"id":1,"amount":1.0}', b"k1", [("trace", b"abc")]),
        ("t1", b'{"id":2,"amount":2.0}', None, None),
    ]
    assert CLOSED == ["t1"]  # one publishing connector per queue and loop, closed once


def test_publish_errors_are_clear() -> None:
    app, _ = _memory_app()
    app.connector_register(
        connector=BytesOnlyConnector, config=RecordingConnectorConfig(connector_name="bytes")
    )
    bytes_only = app.queue_handle(
        "bytes-only", Order, config=RecordingQueueConfig(connector_name="bytes", topic="b")
    )
    elsewhere = app.queue_handle("elsewhere", Order)
    unregistered = app.queue_handle(
        "x", int, config=romeways.MemoryQueueConfig(connector_name="ghost", queue=Queue())
    )

    async def scenario() -> None:
        with pytest.raises(romeways.RomewaysError, match="cannot carry a key or headers"):
            await bytes_only.publish(Order(id=1, amount=1.0), key=b"k")
        with pytest.raises(romeways.RomewaysError, match="has no consumer of it; give its config"):
            await elsewhere.publish(Order(id=1, amount=1.0))
        with pytest.raises(romeways.RomewaysError, match="connector 'ghost' is not registered"):
            await unregistered.publish(1)

    asyncio.run(scenario())
    with pytest.raises(romeways.RegistrationError, match="msgspec cannot encode"):
        app.queue_handle("bad", object)

    async def not_registered(message: romeways.Message[int]) -> None:
        return None

    with pytest.raises(romeways.RegistrationError, match="is not a registered consumer"):
        app.publisher(not_registered)


def test_publish_refuses_a_payload_of_the_wrong_type_at_runtime_too() -> None:
    app, queue = _memory_app()
    orders = app.queue_handle("orders", Order)
    counts = app.queue_handle("orders", list[int])
    wrong: object = "not an order"

    async def scenario() -> None:
        with pytest.raises(TypeError, match=r"cannot publish a str to queue 'orders'.*Order"):
            await orders.publish(wrong)  # type: ignore[arg-type]  # the runtime check under test
        with pytest.raises(TypeError, match="takes list"):
            await counts.publish(["x"])  # type: ignore[list-item]  # the runtime check under test
        await counts.publish([1, 2])

    asyncio.run(scenario())
    assert queue.get(timeout=2) == b"[1,2]"
    assert queue.empty()
