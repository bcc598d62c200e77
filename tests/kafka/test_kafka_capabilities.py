"""The Kafka connector's capabilities (romeways._connector): each unfinished delivery's key,
headers, timestamp and position (``message_metadata``), and the lag per partition keyed
``"topic:partition"`` (``consumer_lag``), on a real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from broker import create_topic, produce

import romeways
from romeways.connectors.kafka import KafkaQueueConnector

from .conftest import kafka_connector, run_async


async def fetch(connector: KafkaQueueConnector, count: int) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {got} of {count} came"
        got.extend(await connector.get_messages(count - len(got)))
    return got


def test_metadata_of_each_unfinished_delivery_and_the_lag_per_partition(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    topic, group = names("meta"), names("meta-group")

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        before = time.time()
        await produce(
            kafka_bootstrap,
            topic,
            [b"a", b"b", b"c"],
            keys=[b"k0", None, b"k2"],
            headers=[("trace", b"t-1"), ("tenant", b"acme")],
        )
        connector = kafka_connector(kafka_bootstrap, topic, group, frequency=0.2)
        assert isinstance(connector, romeways.ProvidesMetadata)
        assert isinstance(connector, romeways.ReportsLag)
        assert connector.message_metadata(0) is None  # nothing fetched yet
        assert await connector.consumer_lag() == {}  # not started
        await connector.on_start()
        try:
            assert await fetch(connector, 2) == [b"a", b"b"]
            first = connector.message_metadata(0)
            assert first is not None
            assert first.key == b"k0"
            assert first.headers == (("trace", b"t-1"), ("tenant", b"acme"))
            assert first.header("tenant") == b"acme"
            assert first.timestamp is not None
            assert before - 5 < first.timestamp < time.time() + 5
            assert first.position == (("topic", topic), ("partition", 0), ("offset", 0))
            assert first.where() == f"topic={topic} partition=0 offset=0"
            assert first.delivery_count is None
            second = connector.message_metadata(1)
            assert second is not None and second.key is None
            assert second.position[2] == ("offset", 1)
            assert connector.message_metadata(2) is None  # not handed out yet

            lag = await connector.consumer_lag()
            assert lag == {f"{topic}:0": 1}, lag  # one record behind the position

            await connector.ack([0])
            assert connector.message_metadata(0) is not None  # its batch is not finished
            await connector.ack([1])
            assert connector.message_metadata(0) is None  # finished: forgotten
            assert connector.message_metadata(1) is None
            assert await fetch(connector, 1) == [b"c"]
            third = connector.message_metadata(2)
            assert third is not None and third.key == b"k2"
            assert await connector.consumer_lag() == {f"{topic}:0": 0}
        finally:
            await connector.close()
        assert connector.message_metadata(2) is None
        assert await connector.consumer_lag() == {}

    run_async(asyncio.wait_for(scenario(), 60))
