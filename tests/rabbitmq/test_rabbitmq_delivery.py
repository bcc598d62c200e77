"""Delivery on the real RabbitMQ, driving the connector directly or through an App in this
process: acks that never cover an unfinished delivery, resends with publisher confirms and
``mandatory``, publishing with a key and headers and reading them back as message metadata, the
delivery count, a bounded prefetch, a lost channel's tags forgotten, the lag."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from faults.rabbithelp import declare, publish, ready_count, run, take_all

import romeways
from romeways.connectors.rabbitmq import RabbitMQQueueConnector

from .conftest import fetch, rabbit_configs, rabbit_connector, run_app_until


def bodies(prefix: str, count: int) -> list[bytes]:
    return [f"{prefix}-{i}".encode() for i in range(count)]


async def crash(connector: RabbitMQQueueConnector) -> None:
    """Drop the connector's connection as a killed worker does: no nack, no cancel first."""
    link = connector._link
    assert link is not None
    connector._closing = True  # its own close() is not what happens to a killed worker
    await link.connection.close()


def test_acks_never_cover_an_unfinished_delivery(rabbit_url: str, queue: str) -> None:
    """Delivery 3 of a chunk of 10 is not finished (a delayed resend), the rest are, and so is
    the next chunk. After a crash, exactly delivery 3 comes back: the multiple ack stopped
    before it and the others were acked one by one (a multiple ack of the last tag, which is
    what acking "the chunk" with multiple=True would be, loses it)."""
    sent = bodies("a", 12)
    run(publish(rabbit_url, queue, sent))

    async def scenario() -> None:
        connector = rabbit_connector(rabbit_url, queue)
        await connector.on_start()
        got = await fetch(connector, 10, chunk=10)
        assert [body for _, body in got] == sent[:10]
        await connector.ack([d for d, _ in got if d != 3])
        rest = await fetch(connector, 2, chunk=10)
        await connector.ack([d for d, _ in rest])
        await asyncio.sleep(0.2)  # the acks reach the broker before the "crash"
        await crash(connector)

    run(scenario())
    left = run(take_all(rabbit_url, queue))
    assert [m.body for m in left] == [sent[3]]


def test_resend_is_confirmed_before_the_original_is_acked_and_keeps_key_and_headers(
    rabbit_url: str, queue: str
) -> None:
    """With an exchange: publish with a key and headers; the metadata gives them back, with the
    timestamp, the position and the delivery count. The resend goes straight back to the queue
    (default exchange, confirmed), its metadata still has the original key and headers."""
    exchange = f"{queue}-x"
    options = {"exchange": exchange, "exchange_type": "topic", "binding_keys": ["orders.*"]}

    async def scenario() -> None:
        connector = rabbit_connector(rabbit_url, queue, **options)
        await connector.on_start()
        before = time.time()
        await connector.publish(b"order-1", key=b"orders.eu", headers=[("trace", b"t-1")])
        ((first, data),) = await fetch(connector, 1)
        assert data == b"order-1"
        meta = connector.message_metadata(first)
        assert meta is not None
        assert meta.key == b"orders.eu" and meta.header("trace") == b"t-1"
        assert meta.delivery_count == 1
        assert meta.timestamp is not None and before - 1 <= meta.timestamp <= time.time() + 1
        position = dict(meta.position)
        assert position["queue"] == queue and isinstance(position["delivery_tag"], int)
        envelope = romeways.Message.from_message(data).raise_resend_counter().to_json()
        await connector.resend(first, envelope)
        await connector.ack([first])
        ((second, again),) = await fetch(connector, 1)
        assert again == envelope
        meta = connector.message_metadata(second)
        assert meta is not None and meta.key == b"orders.eu" and meta.header("trace") == b"t-1"
        assert [name for name, _ in meta.headers] == ["trace"]  # romeways' own header hidden
        await connector.ack([second])
        # A key no binding matches: mandatory makes the publish fail, not vanish.
        with pytest.raises(romeways.ConnectorError, match=r"unroutable .*'billing\.eu'"):
            await connector.publish(b"lost?", key=b"billing.eu")
        await connector.close()
        await with_channel_delete(rabbit_url, exchange)

    run(scenario())
    assert run(take_all(rabbit_url, queue, idle=0.2)) == []


async def with_channel_delete(url: str, exchange: str) -> None:
    from faults.rabbithelp import channel

    async with channel(url) as ch:
        await ch.exchange_delete(exchange)


def test_a_key_on_the_default_exchange_is_refused_not_dropped(rabbit_url: str, queue: str) -> None:
    async def scenario() -> None:
        connector = rabbit_connector(rabbit_url, queue)  # never started: publishing only
        with pytest.raises(romeways.RomewaysError, match="default exchange"):
            await connector.publish(b"x", key=b"customer-42")
        await connector.publish(b"x", key=queue.encode(), headers=[("h", b"v")])  # the queue name
        await connector.close()

    run(scenario())
    (message,) = run(take_all(rabbit_url, queue))
    headers = message.header.properties.headers or {}
    assert message.body == b"x" and headers["h"] == bytearray(b"v")
    assert message.header.properties.delivery_mode == 2  # persistent


class Order(msgspec.Struct):
    id: int


def test_romeways_publish_key_and_headers_come_back_to_the_handler(
    rabbit_url: str, queue: str
) -> None:
    """End to end: ``QueueHandle.publish(payload, key=..., headers=...)`` through the
    connector's ``publish``; the handler reads key, headers and delivery count from the
    connector's metadata of its delivery (``romeways.context()``'s connector and delivery)."""
    exchange = f"{queue}-x"
    connector_config, queue_config = rabbit_configs(
        rabbit_url, queue, exchange=exchange, binding_keys=["customer-42"]
    )
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(connector=RabbitMQQueueConnector, config=connector_config)
    seen: list[tuple[int, bytes | None, bytes | None, int | None]] = []

    @app.queue_consumer(queue_name="orders", config=queue_config)
    async def handle(message: romeways.Message[Order]) -> None:
        ctx = romeways.context()
        connector = ctx.connector
        assert isinstance(connector, romeways.ProvidesMetadata)
        meta = connector.message_metadata(ctx.delivery)
        assert meta is not None
        seen.append((message.payload.id, meta.key, meta.header("trace"), meta.delivery_count))

    handle_orders = app.publisher(handle)

    async def scenario() -> None:
        await handle_orders.publish(Order(id=7), key=b"customer-42", headers={"trace": b"abc"})
        await app.close_publishers()
        await run_app_until(app, lambda: bool(seen))
        await with_channel_delete(rabbit_url, exchange)

    run(scenario())
    assert seen == [(7, b"customer-42", b"abc", 1)]


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_delivery_count_of_a_redelivered_message(
    rabbit_url: str, queues: Callable[[str], str], queue_type: str
) -> None:
    """1 on a first delivery; after a crash the quorum queue's count says 2, a classic queue
    has none (None: redelivered, count unknown)."""
    name = queues(f"rc-{queue_type}")
    run(declare(rabbit_url, name, queue_type=queue_type))
    run(publish(rabbit_url, name, [b"m"], queue_type=queue_type))
    options = {"queue_type": queue_type}

    async def scenario() -> tuple[int | None, int | None]:
        first = rabbit_connector(rabbit_url, name, **options)
        await first.on_start()
        ((d1, _),) = await fetch(first, 1)
        meta1 = first.message_metadata(d1)
        await crash(first)
        second = rabbit_connector(rabbit_url, name, **options)
        await second.on_start()
        ((d2, _),) = await fetch(second, 1)
        meta2 = second.message_metadata(d2)
        await second.ack([d2])
        await second.close()
        assert meta1 is not None and meta2 is not None
        return meta1.delivery_count, meta2.delivery_count

    counts = run(scenario())
    assert counts == ((1, 2) if queue_type == "quorum" else (1, None))


def test_prefetch_is_bounded_and_the_lag_counts_what_waits(rabbit_url: str, queue: str) -> None:
    """max_chunk_size=5: prefetch 20. With 100 messages waiting and one chunk in hand, the
    broker has pushed at most 20 (+ the one basic.get at start); consumer_lag reports the
    messages still ready in the queue."""
    run(publish(rabbit_url, queue, bodies("p", 100)))

    async def scenario() -> tuple[dict[str, int], int, dict[str, int]]:
        connector = rabbit_connector(rabbit_url, queue, max_chunk_size=5)
        await connector.on_start()
        lag_before = dict(await connector.consumer_lag())
        await fetch(connector, 6, chunk=5)  # the probe's one, then the first consumed chunk
        await asyncio.sleep(0.5)  # let the broker push all it may
        ready = await ready_count(rabbit_url, queue)
        connector._lag_at = None  # ask the broker now, not the cached answer
        lag_after = dict(await connector.consumer_lag())
        await connector.close()
        return lag_before, ready, lag_after

    lag_before, ready, lag_after = run(scenario())
    assert lag_before == {queue: 100}
    assert ready >= 100 - 21, f"{100 - ready} messages pushed with prefetch 20"
    assert lag_after == {queue: ready}


def test_a_lost_channel_forgets_its_tags_and_the_consumer_comes_back(
    rabbit_url: str, queue: str
) -> None:
    """The broker closes the consumer's channel (here: provoked with an ack of a tag it never
    gave). The deliveries of that channel are forgotten: acking them sends nothing on the new
    channel (which would close it: "unknown delivery tag"); the next fetch reconnects and the
    broker delivers them again, counted twice; the new channel then acks them fine."""
    sent = bodies("l", 5)
    run(publish(rabbit_url, queue, sent))

    async def scenario() -> None:
        connector = rabbit_connector(rabbit_url, queue)
        await connector.on_start()
        got = await fetch(connector, 5)
        old = connector._link
        assert old is not None
        await old.raw.basic_ack(10_000)  # not a tag of this channel: the broker closes it
        deadline = time.monotonic() + 5
        while old.lost is None:
            assert time.monotonic() < deadline, "the channel was not closed"
            await asyncio.sleep(0.02)
        await connector.ack([d for d, _ in got])  # tags of the lost channel: nothing is sent
        again = await fetch(connector, 5)
        assert [body for _, body in again] == sent
        counts = [connector.message_metadata(d) for d, _ in again]
        assert all(m is not None and m.delivery_count == 2 for m in counts)
        new = connector._link
        assert new is not None and new is not old
        await connector.ack([d for d, _ in again])
        await asyncio.sleep(0.3)
        assert new.lost is None, f"the new channel was closed: {new.lost!r}"
        await connector.close()

    run(scenario())
    assert run(take_all(rabbit_url, queue, idle=0.2)) == []


def test_a_message_over_the_delivery_limit_is_dead_lettered_unhandled(
    rabbit_url: str, queue: str
) -> None:
    """A message whose deliveries all ended in a crash (two here, delivery_limit 2) reaches the
    worker a third time: the worker dead-letters it without calling the handler (the hook gets
    it, with the reason), acknowledges it, and handles the next message."""
    run(publish(rabbit_url, queue, [b'{"id": 1}', b'{"id": 2}']))
    options: dict[str, Any] = {"delivery_limit": 2, "max_chunk_size": 1}

    async def crash_twice() -> None:
        for _ in range(2):
            connector = rabbit_connector(rabbit_url, queue, **options)
            await connector.on_start()
            await fetch(connector, 1, chunk=1)
            await crash(connector)

    run(crash_twice())
    connector_config, queue_config = rabbit_configs(rabbit_url, queue, **options)
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(connector=RabbitMQQueueConnector, config=connector_config)
    handled: list[int] = []
    dead: list[romeways.DeadLetter] = []

    async def park(letter: romeways.DeadLetter) -> None:
        dead.append(letter)

    @app.queue_consumer(queue_name="orders", config=queue_config, dead_letter=park)
    async def handle(message: romeways.Message[Order]) -> None:
        handled.append(message.payload.id)

    run(run_app_until(app, lambda: handled == [2] and len(dead) == 1))
    (letter,) = dead
    assert letter.data == b'{"id": 1}' and letter.resend_times == 0
    assert "delivered it 3 times" in letter.reason and "delivery_limit=2" in letter.reason
    assert run(take_all(rabbit_url, queue, idle=0.2)) == []


def test_publish_timestamp_is_utc_seconds(rabbit_url: str, queue: str) -> None:
    async def scenario() -> datetime.datetime | None:
        connector = rabbit_connector(rabbit_url, queue)
        await connector.publish(b"t")
        await connector.close()
        (message,) = await take_all(rabbit_url, queue)
        return message.header.properties.timestamp

    stamp = run(scenario())
    assert stamp is not None and abs(stamp.timestamp() - time.time()) < 5
