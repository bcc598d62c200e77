"""Delivery on a real broker, consumed in this process: resend and dead-letter, typed payloads,
bad bytes and tombstones, and commits that never pass an unfinished message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from broker import committed_offsets, create_topic, produce

import romeways
from romeways.connectors.kafka import KafkaQueueConnector

from .conftest import kafka_configs, kafka_connector, run_app_until, run_async


async def read_topic(bootstrap: str, topic: str, count: int) -> list[tuple[bytes | None, ...]]:
    """The first ``count`` records of partition 0 as (key, value, *header values)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        records: list[tuple[bytes | None, ...]] = []
        while len(records) < count:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, []):
                records.append((record.key, record.value, *(v for _, v in record.headers)))
        return records[:count]
    finally:
        await consumer.stop()


def test_resend_keeps_key_and_headers_then_dead_letters(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    topic, group = names("resend"), names("resend-group")
    attempts: list[int] = []
    letters: list[romeways.DeadLetter] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        await produce(
            kafka_bootstrap, topic, [b"order-7"], keys=[b"key-7"], headers=[("trace", b"t-7")]
        )
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(kafka_bootstrap, topic, group, retries=2)

        async def dead_letter(letter: romeways.DeadLetter) -> None:
            letters.append(letter)

        @app.queue_consumer(queue_name="orders", config=queue_config, dead_letter=dead_letter)
        async def handler(message: romeways.Message) -> None:
            assert message.payload == "order-7"
            attempts.append(message.rw_resend_times)
            raise romeways.ResendException("not yet")

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)
        await run_app_until(app, lambda: bool(letters))
        # The original and its two resends are all finished: committed past the last one.
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 3}
        records = await read_topic(kafka_bootstrap, topic, 3)
        assert [r[0] for r in records] == [b"key-7"] * 3
        assert [r[2:] for r in records] == [(b"t-7",)] * 3
        assert [msgspec.json.decode(r[1] or b"")["rw_resend_times"] for r in records[1:]] == [1, 2]

    run_async(scenario())
    assert attempts == [0, 1, 2]
    assert len(letters) == 1
    assert letters[0].resend_times == 2
    assert letters[0].queue_name == "orders"


class Order(msgspec.Struct, frozen=True):
    id: int
    amount: float


def test_typed_payloads(kafka_bootstrap: str, names: Callable[[str], str]) -> None:
    topic, group = names("typed"), names("typed-group")
    orders: list[Order] = []
    letters: list[romeways.DeadLetter] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        good = [msgspec.json.encode(Order(id=i, amount=i * 1.5)) for i in range(3)]
        bad = [b'{"id": "not a number", "amount": 1}', b"", b"not json"]
        await produce(kafka_bootstrap, topic, [good[0], bad[0], good[1], bad[1], bad[2], good[2]])
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(kafka_bootstrap, topic, group)

        async def dead_letter(letter: romeways.DeadLetter) -> None:
            letters.append(letter)

        @app.queue_consumer(queue_name="orders", config=queue_config, dead_letter=dead_letter)
        async def handler(message: romeways.Message[Order]) -> None:
            orders.append(message.payload)

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)
        await run_app_until(app, lambda: len(orders) == 3 and len(letters) == 3)
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 6}

    run_async(scenario())
    assert sorted(orders, key=lambda o: o.id) == [Order(id=i, amount=i * 1.5) for i in range(3)]
    assert all(type(order) is Order for order in orders)
    assert sorted(letter.data for letter in letters) == sorted(
        [b'{"id": "not a number", "amount": 1}', b"", b"not json"]
    )


def test_bad_bytes_and_tombstones_do_not_stop_the_worker(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    topic, group = names("bad"), names("bad-group")
    handled: list[str] = []
    letters: list[romeways.DeadLetter] = []
    values: list[bytes | None] = [b"good-1", b"\xff\xfe\xfd", None, b"", None, b"good-2"]

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        await produce(kafka_bootstrap, topic, values)
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(kafka_bootstrap, topic, group)

        async def dead_letter(letter: romeways.DeadLetter) -> None:
            letters.append(letter)

        @app.queue_consumer(queue_name="text", config=queue_config, dead_letter=dead_letter)
        async def handler(message: romeways.Message) -> None:
            handled.append(message.payload)

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)
        await run_app_until(app, lambda: "good-2" in handled)
        # Tombstones are skipped and committed like finished messages.
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: len(values)}

    run_async(scenario())
    assert handled == ["good-1", "", "good-2"]
    assert [letter.data for letter in letters] == [b"\xff\xfe\xfd"]


def test_commit_never_passes_an_unfinished_message(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    """The connector's own bookkeeping: acks out of order commit only the finished prefix."""
    topic, group = names("prefix"), names("prefix-group")

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        await produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(6)])
        connector = kafka_connector(kafka_bootstrap, topic, group)
        await connector.on_start()
        try:
            chunk: list[bytes] = []
            while len(chunk) < 6:
                chunk.extend(await connector.get_messages(10))
            assert chunk == [f"m{i}".encode() for i in range(6)]
            await connector.ack([1, 2, 4])
            assert await committed_offsets(kafka_bootstrap, group, topic) == {0: None}
            await connector.ack([0])
            assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 3}
            await connector.ack([5])
            assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 3}
            await connector.ack([3])
            assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 6}
        finally:
            await connector.close()

    run_async(scenario())


def test_slow_early_message_in_a_concurrent_chunk_holds_the_commit(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    """The first message of a concurrent chunk is slow (a delayed resend): the rest of the
    chunk and later chunks finish, yet no commit passes it until its resend is confirmed."""
    topic, group = names("slow"), names("slow-group")
    handled: list[tuple[str, int]] = []
    committed_while_slow: list[int | None] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        await produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(5)])
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(
            kafka_bootstrap, topic, group, max_chunk_size=5, sequential=False
        )

        @app.queue_consumer(queue_name="slow", config=queue_config)
        async def handler(message: romeways.Message) -> None:
            handled.append((message.payload, message.rw_resend_times))
            if message.payload == "m0" and message.rw_resend_times == 0:
                raise romeways.ResendException("slow down", delay=3.0)

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)

        async def watch() -> None:
            while ("m0", 1) not in handled:
                if len(handled) >= 5:
                    offsets = await committed_offsets(kafka_bootstrap, group, topic)
                    committed_while_slow.append(offsets[0])
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        await run_app_until(app, lambda: ("m0", 1) in handled)
        await watcher
        # After the resend was confirmed and handled: everything is finished.
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 6}

    run_async(scenario())
    assert sorted(handled) == [("m0", 0), ("m0", 1), ("m1", 0), ("m2", 0), ("m3", 0), ("m4", 0)]
    assert committed_while_slow, "the watcher never looked while m0 was delayed"
    assert set(committed_while_slow) <= {None, 0}


def test_cancelled_handler_is_not_committed(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    """A handler still running at shutdown is cancelled and its message stays uncommitted, so
    the next consumer of the group gets it again."""
    topic, group = names("cancel"), names("cancel-group")
    started: list[str] = []
    redelivered: list[str] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        await produce(kafka_bootstrap, topic, [b"stuck"])
        app = romeways.App(shutdown_timeout=0.5)
        connector_config, queue_config = kafka_configs(kafka_bootstrap, topic, group)

        @app.queue_consumer(queue_name="stuck", config=queue_config)
        async def handler(message: romeways.Message) -> None:
            started.append(message.payload)
            await asyncio.Event().wait()

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)
        await run_app_until(app, lambda: bool(started))
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: None}

        again = romeways.App(shutdown_timeout=5)

        @again.queue_consumer(queue_name="stuck", config=queue_config)
        async def second(message: romeways.Message) -> None:
            redelivered.append(message.payload)

        again.connector_register(connector=KafkaQueueConnector, config=connector_config)
        await run_app_until(again, lambda: bool(redelivered))
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 1}

    run_async(scenario())
    assert started == ["stuck"]
    assert redelivered == ["stuck"]


def test_failed_resend_rewinds_instead_of_stalling_commits(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    """A resend the producer refuses (larger than max_request_size) is never acked: the
    connector fetches the partition again from that message instead of holding commits."""
    topic, group = names("refused"), names("refused-group")
    big = "x" * 1_100_000
    seen: list[tuple[str, int]] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=4_000_000)
        await producer.start()
        try:
            await producer.send_and_wait(topic, big.encode())
            await producer.send_and_wait(topic, b"after")
        finally:
            await producer.stop()
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(
            kafka_bootstrap, topic, group, max_partition_fetch_bytes=4_000_000
        )

        @app.queue_consumer(queue_name="refused", config=queue_config)
        async def handler(message: romeways.Message) -> None:
            name = "big" if message.payload == big else message.payload
            seen.append((name, message.rw_resend_times))
            if name == "big" and seen.count(("big", 0)) == 1:
                raise romeways.ResendException("once more")

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)
        await run_app_until(app, lambda: seen.count(("big", 0)) == 2 and ("after", 0) in seen)
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 2}

    run_async(scenario())
    assert seen[0] == ("big", 0)
    assert ("big", 1) not in seen


def test_revoked_partitions_get_no_stale_commit(
    kafka_bootstrap: str, names: Callable[[str], str], caplog: pytest.LogCaptureFixture
) -> None:
    """Consumer A holds fetched, unfinished messages when B joins the group and the partitions
    are reassigned: A's late acks and resends must not commit or produce anything, and B gets
    those messages again."""
    caplog.set_level(logging.INFO, logger="romeways")
    topic, group = names("revoked"), names("revoked-group")

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic, partitions=2)
        for partition in range(2):
            await produce(
                kafka_bootstrap,
                topic,
                [f"p{partition}-{i}".encode() for i in range(3)],
                partition=partition,
            )
        first = kafka_connector(kafka_bootstrap, topic, group, queue_name="a")
        second = kafka_connector(kafka_bootstrap, topic, group, queue_name="b")
        await first.on_start()
        try:
            held: list[bytes] = []
            while len(held) < 6:
                held.extend(await first.get_messages(10))
            # B joins: the group rebalances, A's partitions are revoked (its listener runs in
            # A's background coordination task) and split between A and B.
            await second.on_start()
            await first.resend(0, b"late resend")
            await first.ack(list(range(6)))
            assert await committed_offsets(kafka_bootstrap, group, topic, 2) == {0: None, 1: None}
            again: list[bytes] = []
            deadline = asyncio.get_running_loop().time() + 20
            while len(again) < 3 and asyncio.get_running_loop().time() < deadline:
                again.extend(await second.get_messages(10))
                await first.get_messages(10)  # keeps A in the group
            assert len(again) == 3
            assert set(again) < set(held)
            assert b"late resend" not in again
        finally:
            await first.close()
            await second.close()

    run_async(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert any("had partitions" in m and "revoked" in m for m in messages), messages
    assert any("did not resend delivery 0" in m for m in messages), messages


def test_slow_handler_early_in_a_concurrent_chunk_is_not_committed_past(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    """m0's handler is slow while m1..m4 of the same concurrent chunk finish at once: nothing
    is committed until m0 finishes, then everything is."""
    topic, group = names("slowhandler"), names("slowhandler-group")
    finished: list[str] = []
    committed_while_slow: list[int | None] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        await produce(kafka_bootstrap, topic, [f"m{i}".encode() for i in range(5)])
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(
            kafka_bootstrap, topic, group, max_chunk_size=5, sequential=False
        )
        release = asyncio.Event()

        @app.queue_consumer(queue_name="slow", config=queue_config)
        async def handler(message: romeways.Message) -> None:
            if message.payload == "m0":
                await release.wait()
            finished.append(message.payload)

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)

        async def watch_then_release() -> None:
            while len(finished) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            for _ in range(3):
                offsets = await committed_offsets(kafka_bootstrap, group, topic)
                committed_while_slow.append(offsets[0])
                await asyncio.sleep(0.3)
            release.set()

        watcher = asyncio.create_task(watch_then_release())
        await run_app_until(app, lambda: "m0" in finished)
        await watcher
        assert await committed_offsets(kafka_bootstrap, group, topic) == {0: 5}

    run_async(scenario())
    assert finished[-1] == "m0"
    assert committed_while_slow == [None, None, None]


class Payment(msgspec.Struct, frozen=True):
    id: str
    cents: int


def test_typed_publish_with_key_and_headers(
    kafka_bootstrap: str, names: Callable[[str], str]
) -> None:
    """romeways.publish through the Kafka connector (never started for consuming): the payload
    is encoded for the consumer's type, and the key and headers reach the topic."""
    topic, group = names("publish"), names("publish-group")
    payments: list[Payment] = []

    async def scenario() -> None:
        await create_topic(kafka_bootstrap, topic)
        app = romeways.App(shutdown_timeout=5)
        connector_config, queue_config = kafka_configs(kafka_bootstrap, topic, group)

        @app.queue_consumer(queue_name="payments", config=queue_config)
        async def handler(message: romeways.Message[Payment]) -> None:
            payments.append(message.payload)

        app.connector_register(connector=KafkaQueueConnector, config=connector_config)
        handle = app.publisher(handler)
        await romeways.publish(
            handle, Payment(id="p-1", cents=250), key=b"acct-9", headers={"trace": b"t-1"}
        )
        await app.close_publishers()
        records = await read_topic(kafka_bootstrap, topic, 1)
        assert records[0][0] == b"acct-9"
        assert records[0][2:] == (b"t-1",)
        await run_app_until(app, lambda: bool(payments))

    run_async(scenario())
    assert payments == [Payment(id="p-1", cents=250)]
