"""The adaptive fetch wait: fetches wait ``fetch_max_wait_ms`` while messages come and
``idle_fetch_max_wait_ms`` once a ``get_messages`` found nothing; equal values leave aiokafka's
fetcher alone; an aiokafka whose fetcher cannot be adapted gets a warning and the fixed wait.
Functional only (which wait is set, that messages flow and are committed), no timings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from broker import committed_offsets, create_topic, produce

from romeways.connectors.kafka import KafkaQueueConnector

from .conftest import kafka_connector, run_async


async def fetch_until(connector: KafkaQueueConnector, count: int) -> list[bytes]:
    """get_messages until ``count`` messages came; fails after 30 s."""
    got: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + 30
    while len(got) < count:
        assert asyncio.get_running_loop().time() < deadline, f"only {got} of {count} came"
        got.extend(await connector.get_messages(10))
    return got


async def fetch_until_empty(connector: KafkaQueueConnector) -> None:
    """get_messages until one finds nothing (the group join ends, the topic is drained)."""
    for _ in range(200):
        if not await connector.get_messages(10):
            return
    raise AssertionError("get_messages never came back empty")


async def committed_soon(bootstrap: str, group: str, topic: str, want: int) -> None:
    """Wait (up to 10 s) for the background commit of ``want`` on partition 0."""
    for _ in range(100):
        if (await committed_offsets(bootstrap, group, topic)) == {0: want}:
            return
        await asyncio.sleep(0.1)
    assert await committed_offsets(bootstrap, group, topic) == {0: want}


def fetcher_wait(connector: KafkaQueueConnector) -> Any:
    """The wait aiokafka's fetcher puts in its next FetchRequest."""
    fetcher = getattr(connector._consumer, "_fetcher", None)
    return getattr(fetcher, "_fetch_max_wait_ms", None)


def test_fetch_wait_is_short_while_messages_come_and_long_once_idle(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    topic, group = names("wait"), names("wait-group")

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        connector = kafka_connector(
            kafka_bootstrap,
            topic,
            group,
            frequency=0.2,
            fetch_max_wait_ms=5,
            idle_fetch_max_wait_ms=40,
        )
        assert connector.fetch_wait_ms == 5
        await connector.on_start()
        try:
            await fetch_until_empty(connector)
            assert connector.fetch_wait_ms == 40
            assert fetcher_wait(connector) == 40
            for round_ in range(2):
                await produce(kafka_bootstrap, topic, [b"a", b"", b"c"])
                got = await fetch_until(connector, 3)
                assert got == [b"a", b"", b"c"]
                assert connector.fetch_wait_ms == 5
                assert fetcher_wait(connector) == 5
                # The whole chunk as a range, as the worker acks it.
                await connector.ack(range(3 * round_, 3 * round_ + 3))
                await fetch_until_empty(connector)
                assert connector.fetch_wait_ms == 40
                assert fetcher_wait(connector) == 40
                await committed_soon(kafka_bootstrap, group, topic, 3 * round_ + 3)
        finally:
            await connector.close()
        assert connector.fetch_wait_ms == 5

    run_async(scenario())


def test_equal_waits_leave_the_fetcher_alone(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    topic, group = names("fixed"), names("fixed-group")

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        connector = kafka_connector(
            kafka_bootstrap,
            topic,
            group,
            frequency=0.2,
            fetch_max_wait_ms=30,
            idle_fetch_max_wait_ms=30,
        )
        await connector.on_start()
        try:
            assert connector._fetch_wait.fetcher is None
            await fetch_until_empty(connector)
            await produce(kafka_bootstrap, topic, [b"x", b"y"])
            assert await fetch_until(connector, 2) == [b"x", b"y"]
            await connector.ack([0, 1])
            await fetch_until_empty(connector)
            assert connector.fetch_wait_ms == 30
            assert fetcher_wait(connector) == 30
            await committed_soon(kafka_bootstrap, group, topic, 2)
        finally:
            await connector.close()

    run_async(scenario())


def test_a_fetcher_that_cannot_be_adapted_is_warned_about_and_left_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As with an aiokafka whose consumer has no such fetcher attribute: one warning naming the
    connector, and the fixed wait. (A consumer that was never started has no fetcher.)"""
    caplog.set_level(logging.WARNING, logger="romeways")
    connector = kafka_connector(
        "127.0.0.1:9",
        "orders",
        "billing",
        queue_name="orders-q",
        fetch_max_wait_ms=10,
        idle_fetch_max_wait_ms=60,
    )

    async def scenario() -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        connector._fetch_wait.adapt(consumer, connector._where())
        connector._fetch_wait.use(60)

    run_async(scenario())
    assert connector._fetch_wait.fetcher is None
    assert connector.fetch_wait_ms == 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "Kafka connector 'kafka-test' (queue 'orders-q'" in warnings[0]
    assert "fetch_max_wait_ms=10" in warnings[0]
