"""``max_concurrency`` on Kafka: messages finish out of order and across fetches, and the commit
still never passes one not finished (only the finished prefix of a partition is committed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from broker import committed_offsets, create_topic, produce

import romeways
from romeways.connectors.kafka import KafkaQueueConnector

from .conftest import kafka_configs, run_app_until, run_async


def test_a_message_in_flight_holds_the_commit_while_later_fetches_finish(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    """m0 never finishes while m1-m7 (fetched after it, in several fetches) all do: nothing is
    committed past m0; stopped, m0 is cancelled, and the next consumer gets everything again
    (at-least-once), then commits it all."""
    topic, group = names("conc"), names("conc-group")
    payloads = [f"m{i}" for i in range(8)]
    finished: list[str] = []
    committed_meanwhile: list[int | None] = []
    again: list[str] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        await produce(kafka_bootstrap, topic, [p.encode() for p in payloads])
        connector_config, queue_config = kafka_configs(
            kafka_bootstrap, topic, group, max_chunk_size=2, max_concurrency=3
        )
        app = romeways.App(shutdown_timeout=0.5)

        @app.queue_consumer(queue_name="conc", config=queue_config)
        async def handler(message: romeways.Message) -> None:
            if message.payload == "m0":
                await asyncio.Event().wait()  # in flight until the stop cancels it
            finished.append(message.payload)

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)

        async def watch() -> None:
            while len(finished) < 7:  # noqa: ASYNC110  # a condition over a list
                await asyncio.sleep(0.05)
            for _ in range(5):  # the background commits have had their chance
                await asyncio.sleep(0.2)
                committed_meanwhile.append(
                    (await committed_offsets(kafka_bootstrap, group, topic))[0]
                )

        watcher = asyncio.create_task(watch())
        await run_app_until(app, watcher.done)
        await watcher
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: None}

        second = romeways.App(shutdown_timeout=5)
        _, plain = kafka_configs(kafka_bootstrap, topic, group, max_chunk_size=8)

        @second.queue_consumer(queue_name="conc", config=plain)
        async def handler2(message: romeways.Message) -> None:
            again.append(message.payload)

        second.connector_register(connector=KafkaQueueConnector, config=connector_config)
        await run_app_until(second, lambda: len(again) == 8)
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 8}

    run_async(scenario())
    assert sorted(finished) == payloads[1:]
    assert committed_meanwhile == [None] * 5
    assert again == payloads
