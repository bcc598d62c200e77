"""Kafka message metadata in ``romeways.context()`` (issue 15): a consumer reads the key and
headers its message was published with (trace context, an idempotency key), and its position
(topic, partition, offset) as before."""

from __future__ import annotations

from collections.abc import Callable

from broker import create_topic

import romeways

from .conftest import kafka_configs, run_app_until, run_async


def test_context_shows_position_of_a_published_message(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    topic, group = names("meta-pos"), names("meta-pos-group")
    seen: list[tuple[object, ...]] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(kafka_bootstrap, topic, group)

        @app.queue_consumer(queue_name="events", config=queue_config)
        async def handler(message: romeways.Message[str]) -> None:
            ctx = romeways.context()
            seen.append((message.payload, ctx.position, ctx.topic, ctx.partition, ctx.offset))

        app.connector_register(connector=romeways.KafkaQueueConnector, config=connector_config)
        await app.publisher(handler).publish("first")
        await app.close_publishers()
        await run_app_until(app, lambda: bool(seen))

    run_async(scenario(), 90)
    position = (("topic", topic), ("partition", 0), ("offset", 0))
    assert seen == [("first", position, topic, 0, 0)]


def test_context_shows_the_key_and_headers_a_message_was_published_with(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    topic, group = names("meta"), names("meta-group")
    seen: list[tuple[object, ...]] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(kafka_bootstrap, topic, group)

        @app.queue_consumer(queue_name="events", config=queue_config)
        async def handler(message: romeways.Message[str]) -> None:
            ctx = romeways.context()
            stamped = ctx.timestamp is not None and ctx.timestamp > 1_600_000_000
            seen.append((message.payload, ctx.key, ctx.headers, ctx.header("traceparent"), stamped))

        app.connector_register(connector=romeways.KafkaQueueConnector, config=connector_config)
        events = app.publisher(handler)
        await events.publish(
            "keyed", key=b"order-7", headers=[("traceparent", b"00-4bf9-01"), ("idem", b"i-7")]
        )
        await events.publish("plain")
        await app.close_publishers()
        await run_app_until(app, lambda: len(seen) == 2)

    run_async(scenario(), 90)
    assert seen == [
        (
            "keyed",
            b"order-7",
            (("traceparent", b"00-4bf9-01"), ("idem", b"i-7")),
            b"00-4bf9-01",
            True,
        ),
        ("plain", None, (), None, True),
    ]
