"""Delivery semantics of the Redis connector on a real Redis: where the group starts, what a
restarted consumer reads first, claims of a gone consumer's entries, keep-alive of held ones,
the poison budget, resend, acknowledgement, NOGROUP, trimming, metadata and lag."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from faults.redishelp import add_entries, client, consumers, pending, run

import romeways
from romeways.connectors.redis import RedisQueueConnector
from romeways.connectors.support import worker_identity

from ._redis_helpers import Consumer, configs

Streams = Callable[[str], str]


def test_the_group_starts_at_zero_so_nothing_sent_before_it_is_skipped(
    redis_url: str, streams: Streams
) -> None:
    """Entries added before any consumer group existed are delivered (a group made at ``$``
    would skip them), in order."""
    stream = streams("zero")

    async def main() -> list[bytes]:
        await add_entries(redis_url, stream, [b"early-1", b"early-2", b"early-3"])
        async with Consumer(redis_url, stream) as consumer:
            got = await consumer.fetch_until(3)
            await consumer.connector.ack([d for d, _ in got])
            return [data for _, data in got]

    assert run(main()) == [b"early-1", b"early-2", b"early-3"]


def test_a_restarted_consumer_reads_its_own_pending_entries_first_then_new_ones(
    redis_url: str, streams: Streams
) -> None:
    """A consumer that stopped holding 3 unacknowledged entries (a crash: nothing acked) is
    started again under the same name: it gets those 3 first, one per fetch, counted as second
    deliveries, then the new ones; the group still has one consumer."""
    stream = streams("restart")

    async def main() -> tuple[list[bytes], list[int | None], dict[str, int]]:
        await add_entries(redis_url, stream, [b"a", b"b", b"c"])
        async with Consumer(redis_url, stream) as first:
            held = await first.fetch_until(3)
            assert [data for _, data in held] == [b"a", b"b", b"c"]
        await add_entries(redis_url, stream, [b"d", b"e"])
        async with Consumer(redis_url, stream) as again:
            got: list[bytes] = []
            counts: list[int | None] = []
            while len(got) < 5:
                chunk = await again.fetch(10)
                for delivery, data in chunk:
                    got.append(data)
                    metadata = again.connector.message_metadata(delivery)
                    counts.append(None if metadata is None else metadata.delivery_count)
                if got[:3] == [b"a", b"b", b"c"] and len(got) <= 3:
                    assert len(chunk) <= 1, "own pending entries come one per fetch"
                await again.connector.ack([d for d, _ in chunk])
            names = await consumers(redis_url, stream, f"{stream}-g")
        return got, counts, names

    got, counts, names = run(main())
    assert got == [b"a", b"b", b"c", b"d", b"e"]
    assert counts == [2, 2, 2, 1, 1]
    assert list(names) == [own_consumer_name()], names
    assert run(pending(redis_url, stream, f"{stream}-g")) == []


def own_consumer_name() -> str:
    """The name an in-process consumer of the helpers' connector gets."""
    return worker_identity("redis-test")


def test_entries_of_a_gone_consumer_are_claimed_then_the_consumer_is_removed(
    redis_url: str, streams: Streams
) -> None:
    """Consumer 'dead' takes 2 entries and stops without acknowledging them (its host is gone);
    consumer 'alive' claims them once they were idle for claim_idle (0.5 s), not before, counted
    as second deliveries; once nothing is pending at 'dead', it is removed from the group."""
    stream = streams("claim")
    group = f"{stream}-g"

    async def main() -> tuple[float, list[bytes], list[int | None], dict[str, int]]:
        await add_entries(redis_url, stream, [b"x", b"y"])
        async with Consumer(redis_url, stream, consumer="dead", claim_idle=0.5) as dead:
            await dead.fetch_until(2)
            left = time.monotonic()  # just after the entries were delivered to it
        async with Consumer(redis_url, stream, consumer="alive", claim_idle=0.5) as alive:
            got: list[tuple[int, bytes]] = []
            claimed_at = 0.0
            while len(got) < 2:
                chunk = await alive.fetch()
                got += chunk
                if chunk and not claimed_at:
                    claimed_at = time.monotonic() - left
            counts = [
                m.delivery_count if (m := alive.connector.message_metadata(d)) else None
                for d, _ in got
            ]
            await alive.connector.ack([d for d, _ in got])
            deadline = time.monotonic() + 5
            while "dead" in (names := await consumers(redis_url, stream, group)):
                assert time.monotonic() < deadline, f"'dead' was never removed: {names}"
                await alive.fetch()
        return claimed_at, [data for _, data in got], counts, names

    claimed_at, got, counts, names = run(main())
    assert 0.4 <= claimed_at < 3.0, claimed_at
    assert sorted(got) == [b"x", b"y"] and counts == [2, 2]
    assert list(names) == ["alive"]


def test_entries_held_longer_than_claim_idle_are_kept_alive_and_not_stolen(
    redis_url: str, streams: Streams
) -> None:
    """Consumer A holds an entry for 3 s (a long handler, a delayed resend) with claim_idle
    1 s; consumer B, looking for idle entries all along, never gets it; A acknowledges it."""
    stream = streams("keep")

    async def main() -> tuple[list[bytes], list[dict[str, object]]]:
        await add_entries(redis_url, stream, [b"held"])
        async with (
            Consumer(redis_url, stream, consumer="A", claim_idle=1.0) as a,
            Consumer(redis_url, stream, consumer="B", claim_idle=1.0) as b,
        ):
            ((delivery, _),) = await a.fetch_until(1)
            stolen: list[bytes] = []
            until = time.monotonic() + 3.0
            while time.monotonic() < until:
                stolen += [data for _, data in await b.fetch()]
            await a.connector.ack([delivery])
            await a.fetch()  # the acknowledgement goes with the next read
            return stolen, await pending(redis_url, stream, f"{stream}-g")

    stolen, left = run(main())
    assert stolen == []
    assert left == []


def test_an_entry_delivered_past_its_budget_is_dead_lettered_unhandled(
    redis_url: str, streams: Streams
) -> None:
    """An entry whose worker died twice while handling it (delivered, never acked, twice) is,
    with retries=1 (budget 2), named by spent_deliveries on its third delivery; in an App run
    the dead-letter hook gets it, the handler never sees it, and it is acknowledged."""
    stream = streams("poison")

    async def crash_twice() -> None:
        for _ in range(2):
            async with Consumer(redis_url, stream, retries=1) as victim:
                await victim.fetch_until(1)  # then "dies": closed without acknowledging

    async def main() -> tuple[list[str], list[romeways.DeadLetter]]:
        await add_entries(redis_url, stream, [b"poison", b"fine"])
        await crash_twice()
        connector_config, queue_config = configs(redis_url, stream, retries=1)
        app = romeways.App(shutdown_timeout=2)
        app.connector_register(connector=RedisQueueConnector, config=connector_config)
        handled: list[str] = []
        dead: list[romeways.DeadLetter] = []
        done = asyncio.Event()

        async def hook(letter: romeways.DeadLetter) -> None:
            dead.append(letter)

        @app.queue_consumer(queue_name="q", config=queue_config, dead_letter=hook)
        async def handle(message: romeways.Message) -> None:
            handled.append(message.payload)
            if message.payload == "fine":
                done.set()

        task = asyncio.create_task(app.start())
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.sleep(0.3)
        app.stop()
        await task
        return handled, dead

    handled, dead = run(main())
    assert handled == ["fine"]
    assert [letter.data for letter in dead] == [b"poison"]
    assert "delivered 3 times without being finished" in dead[0].reason
    assert "more than the 2 allowed" in dead[0].reason
    assert run(pending(redis_url, stream, f"{stream}-g")) == []


def test_resend_adds_the_envelope_and_acks_the_original_at_once_keeping_key_and_headers(
    redis_url: str, streams: Streams
) -> None:
    stream = streams("resend")

    async def main() -> None:
        async with Consumer(redis_url, stream) as consumer:
            await consumer.connector.publish(
                b"order-1", key=b"customer-9", headers=[("trace", b"t-1"), ("tenant", b"eu")]
            )
            ((delivery, data),) = await consumer.fetch_until(1)
            envelope = romeways.Message.from_message(data).raise_resend_counter().to_json()
            await consumer.connector.resend(delivery, envelope)
            # Before the worker's ack: the original is already acknowledged, the envelope added.
            assert await pending(redis_url, stream, f"{stream}-g") == []
            await consumer.connector.ack([delivery])
            ((again, data2),) = await consumer.fetch_until(1)
            assert data2 == envelope
            metadata = consumer.connector.message_metadata(again)
            assert metadata is not None
            assert metadata.key == b"customer-9"
            assert dict(metadata.headers) == {"trace": b"t-1", "tenant": b"eu"}
            assert metadata.delivery_count == 1
            await consumer.connector.ack([again])
            await consumer.fetch()
            async with client(redis_url) as redis:
                assert await redis.xlen(stream) == 2  # no trimming, no deletion by default

    run(main())


def test_publish_key_and_headers_travel_as_fields_and_come_back_as_metadata(
    redis_url: str, streams: Streams
) -> None:
    """end to end: romeways.publish -> get_messages -> message_metadata."""
    stream = streams("publish")
    connector_config, queue_config = configs(redis_url, stream)
    app = romeways.App()
    app.connector_register(connector=RedisQueueConnector, config=connector_config)
    handle = app.queue_handle("orders", bytes, config=queue_config)

    async def main() -> romeways.MessageMetadata | None:
        sent = time.time()
        await romeways.publish(handle, b"\x00raw", key=b"k-1", headers={"trace": b"abc"})
        await app.close_publishers()
        async with client(redis_url) as redis:
            entries: Any = await redis.xrange(stream)
        ((_, fields),) = entries
        assert fields == {b"data": b"\x00raw", b"key": b"k-1", b"h:trace": b"abc"}
        async with Consumer(redis_url, stream) as consumer:
            ((delivery, data),) = await consumer.fetch_until(1)
            assert data == b"\x00raw"
            metadata = consumer.connector.message_metadata(delivery)
            assert metadata is not None and metadata.timestamp is not None
            assert abs(metadata.timestamp - sent) < 5
            await consumer.connector.ack([delivery])
            assert consumer.connector.message_metadata(delivery) is None  # finished: forgotten
            return metadata

    metadata = run(main())
    assert metadata is not None
    assert metadata.key == b"k-1" and metadata.header("trace") == b"abc"
    assert metadata.position[0] == ("stream", stream) and metadata.position[1][0] == "id"
    assert metadata.where().startswith(f"stream={stream} id=")


def test_acks_go_with_the_next_read_or_at_close(redis_url: str, streams: Streams) -> None:
    """ack() sends nothing by itself; the next get_messages carries the XACK in its round trip
    (before its read), and close() sends what is left."""
    stream = streams("ack")
    group = f"{stream}-g"

    async def main() -> None:
        await add_entries(redis_url, stream, [b"1", b"2", b"3"])
        async with Consumer(redis_url, stream, max_chunk_size=2) as consumer:
            first = await consumer.fetch_until(2, chunk=2)
            await consumer.connector.ack([d for d, _ in first])
            assert len(await pending(redis_url, stream, group)) == 2
            second = await consumer.fetch_until(1, chunk=2)
            assert [e["message_id"] for e in await pending(redis_url, stream, group)] != []
            assert len(await pending(redis_url, stream, group)) == 1
            await consumer.connector.ack([d for d, _ in second])
        assert await pending(redis_url, stream, group) == []

    run(main())


def test_delete_acked_removes_finished_entries_from_the_stream(
    redis_url: str, streams: Streams
) -> None:
    stream = streams("xdel")

    async def main() -> int:
        await add_entries(redis_url, stream, [b"1", b"2", b"3"])
        async with Consumer(redis_url, stream, delete_acked=True) as consumer:
            got = await consumer.fetch_until(3)
            await consumer.connector.ack([d for d, _ in got[:2]])
            await consumer.fetch()
            async with client(redis_url) as redis:
                return int(await redis.xlen(stream))

    assert run(main()) == 1


def test_no_trimming_by_default_and_maxlen_trims_only_when_asked(
    redis_url: str, streams: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    plain, trimmed = streams("nomaxlen"), streams("maxlen")

    async def main() -> tuple[int, int]:
        async with Consumer(redis_url, plain) as a, Consumer(redis_url, trimmed, maxlen=10) as b:
            for i in range(250):
                await a.connector.send_messages(b"%d" % i)
                await b.connector.send_messages(b"%d" % i)
            async with client(redis_url) as redis:
                return int(await redis.xlen(plain)), int(await redis.xlen(trimmed))

    with caplog.at_level(logging.WARNING, logger="romeways"):
        untrimmed, trimmed_length = run(main())
    assert untrimmed == 250
    assert trimmed_length < 250  # MAXLEN ~ trims whole nodes: about, not exactly, 10
    assert any("maxlen=10" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)


def test_a_deleted_stream_or_group_is_recreated_and_consuming_goes_on(
    redis_url: str, streams: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    """DEL of the stream, then XGROUP DESTROY, under a running consumer: each time the group
    is created again at the start (logged, naming what happened), and what is added afterwards
    is consumed; after a destroyed group, the entries still in the stream come again."""
    stream = streams("nogroup")
    group = f"{stream}-g"

    async def main() -> tuple[list[bytes], list[bytes]]:
        async with Consumer(redis_url, stream) as consumer:
            await add_entries(redis_url, stream, [b"before"])
            got = await consumer.fetch_until(1)
            await consumer.connector.ack([d for d, _ in got])
            async with client(redis_url) as redis:
                await redis.delete(stream)
            assert await consumer.fetch() == []  # NOGROUP: recreated
            await add_entries(redis_url, stream, [b"after-del"])
            after_del = [data for _, data in await consumer.fetch_until(1)]
            async with client(redis_url) as redis:
                await redis.xgroup_destroy(stream, group)
            assert await consumer.fetch() == []
            again = [data for _, data in await consumer.fetch_until(1)]
            return after_del, again

    with caplog.at_level(logging.WARNING, logger="romeways"):
        after_del, again = run(main())
    assert after_del == [b"after-del"]
    assert again == [b"after-del"]  # the group starts over at 0: delivered again
    notes = [r.getMessage() for r in caplog.records if "group was deleted (" in r.getMessage()]
    assert len(notes) == 2 and "consuming goes on" in notes[0], notes


def test_entries_not_added_by_romeways_come_as_a_json_object_of_their_fields(
    redis_url: str, streams: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    stream = streams("foreign")

    async def main() -> list[bytes]:
        await add_entries(redis_url, stream, [b"42"], field=b"amount")
        await add_entries(redis_url, stream, [b"also"], field=b"note")
        async with Consumer(redis_url, stream) as consumer:
            return [data for _, data in await consumer.fetch_until(2)]

    with caplog.at_level(logging.WARNING, logger="romeways"):
        got = run(main())
    assert [msgspec.json.decode(data) for data in got] == [{"amount": "42"}, {"note": "also"}]
    assert sum("has no 'data' field" in r.getMessage() for r in caplog.records) == 1


def test_consumer_lag_counts_what_the_group_has_not_read(redis_url: str, streams: Streams) -> None:
    stream = streams("lag")

    async def main() -> tuple[dict[str, int], dict[str, int]]:
        await add_entries(redis_url, stream, [b"%d" % i for i in range(5)])
        async with Consumer(redis_url, stream) as consumer:
            before = dict(await consumer.connector.consumer_lag())
            await consumer.fetch_until(2, chunk=2)
            await asyncio.sleep(1.05)  # the figure is reused for a second
            return before, dict(await consumer.connector.consumer_lag())

    before, after = run(main())
    assert before == {stream: 5} and after == {stream: 3}


def test_two_queues_of_one_process_cannot_read_as_one_consumer(
    redis_url: str, streams: Streams
) -> None:
    stream = streams("twice")

    async def main() -> None:
        async with Consumer(redis_url, stream):
            second = Consumer(redis_url, stream)
            with pytest.raises(romeways.ConfigError, match="reads as already; give one of"):
                await second.connector.on_start()
        async with Consumer(redis_url, stream):  # the first one closed: free again
            pass

    run(main())
