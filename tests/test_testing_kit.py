"""romeways.testing.TestKit: handlers run in-process through the real worker, no broker."""

from __future__ import annotations

import asyncio
import logging
import time
from multiprocessing import Queue

import msgspec
import pytest

import romeways
from romeways.testing import TestKit

# --- the example of docs/testing.md, verbatim ---------------------------------------


class Order(msgspec.Struct):
    id: int
    amount: float


app = romeways.App()
orders_config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue(), retries=2)
app.connector_register(
    connector=romeways.MemoryQueueConnector,
    config=romeways.MemoryConnectorConfig(connector_name="mem"),
)


@app.queue_consumer(queue_name="orders", config=orders_config)
async def handle_order(message: romeways.Message[Order]) -> None:
    if message.payload.amount < 0:
        raise ValueError("negative amount")
    if message.payload.amount == 0:
        raise romeways.ResendException()  # not priced yet: try again later


orders = app.publisher(handle_order)  # QueueHandle[Order]


def test_order_outcomes() -> None:
    async def scenario() -> None:
        async with TestKit(app, raise_exceptions=False) as kit:
            ok = await kit.publish(orders, Order(id=1, amount=9.5))
            assert ok.handled

            again = await kit.publish(orders, Order(id=2, amount=0))
            assert again.dead_lettered and again.resends == 2  # retries=2, then given up
            assert "resend(s) allowed are spent" in (again.reason or "")

            bad = await kit.publish(orders, Order(id=3, amount=-1))
            assert bad.failed and isinstance(bad.exception, ValueError)

            garbage = await kit.send("orders", b"not json")
            assert garbage.dead_lettered and "cannot decode" in (garbage.reason or "")

    asyncio.run(scenario())


# --- the rest of the kit's behaviour ---------------------------------------------------------


def test_exceptions_are_raised_into_the_test_by_default() -> None:
    async def scenario() -> None:
        async with TestKit(app) as kit:
            with pytest.raises(ValueError, match="negative amount"):
                await kit.publish("orders", Order(id=3, amount=-1))
            # the worker dead-lettered it and went on: the next message is handled
            assert (await kit.publish("orders", Order(id=4, amount=1.0))).handled

    asyncio.run(scenario())


def test_the_typed_handle_form_checks_the_payload_and_delivers() -> None:
    async def scenario() -> None:
        async with TestKit(app) as kit:
            assert (await kit.publish(orders, Order(id=5, amount=2.5))).handled
            with pytest.raises(TypeError, match="cannot publish a str to queue 'orders'"):
                await kit.publish(orders, "five")  # type: ignore[call-overload]  # the misuse under test
            assert kit.reports[-1].data == b'{"id":5,"amount":2.5}'

    asyncio.run(scenario())


def test_a_payload_the_queue_cannot_decode_raises_naming_queue_handler_and_error() -> None:
    async def scenario() -> None:
        async with TestKit(app) as kit:
            with pytest.raises(romeways.testing.PayloadError) as info:
                await kit.publish("orders", {"id": "seven", "amount": 1.0})
            assert not kit.reports, "nothing was put on the queue"
        message = str(info.value)
        assert isinstance(info.value, TypeError)
        for fragment in (
            "queue 'orders'",
            "handler test_testing_kit.handle_order",
            "as Order",
            "Expected `int`, got `str` - at `$.id`",
            "kit.send(",
        ):
            assert fragment in message, message
        # Opting out of exceptions delivers it as production would: a dead letter.
        async with TestKit(app, raise_exceptions=False) as kit:
            report = await kit.publish("orders", {"id": "seven", "amount": 1.0})
            assert report.dead_lettered and "cannot decode" in (report.reason or "")

    asyncio.run(scenario())


def _fresh_app(retries: int = 3) -> tuple[romeways.App, romeways.MemoryQueueConfig]:
    fresh = romeways.App()
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue(), retries=retries)
    fresh.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    return fresh, config


def own_queue(config: romeways.MemoryQueueConfig) -> romeways.MemoryQueueConfig:
    """``config`` with a queue of its own: two queues may not share one (their consumers would
    split its messages in production)."""
    return msgspec.structs.replace(config, queue=Queue())


def test_resends_are_redelivered_with_the_counter_until_handled() -> None:
    fresh, config = _fresh_app(retries=5)
    attempts: list[tuple[int, int | None]] = []

    @fresh.queue_consumer(queue_name="q", config=config)
    async def flaky(message: romeways.Message[int]) -> None:
        attempts.append((message.rw_resend_times, romeways.context().attempt))
        if message.rw_resend_times < 2:
            raise romeways.ResendException(delay=0.01)

    async def scenario() -> romeways.testing.DeliveryReport:
        async with TestKit(fresh) as kit:
            return await kit.publish("q", 7)

    report = asyncio.run(scenario())
    assert report.handled and report.resends == 2
    assert [a.outcome for a in report.attempts] == [
        romeways.Outcome.RESENT,
        romeways.Outcome.RESENT,
        romeways.Outcome.HANDLED,
    ]
    assert attempts == [(0, 1), (1, 2), (2, 3)]


def test_dead_letter_hook_and_handler_timeout_run_as_in_production() -> None:
    fresh = romeways.App()
    config = romeways.MemoryQueueConfig(
        connector_name="mem", queue=Queue(), retries=1, handler_timeout=0.05
    )
    letters: list[romeways.DeadLetter] = []

    async def park(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @fresh.queue_consumer(queue_name="slow", config=config, dead_letter=park)
    async def slow(message: romeways.Message) -> None:
        await asyncio.sleep(1.0)

    async def scenario() -> romeways.testing.DeliveryReport:
        # no connector registered: the kit does not need one
        async with TestKit(fresh) as kit:
            return await kit.publish("slow", "x")

    report = asyncio.run(scenario())
    assert report.dead_lettered and report.resends == 1
    assert "timed out" in (report.reason or "")
    assert len(letters) == 1 and letters[0].resend_times == 1


def test_lifespan_hooks_state_and_context() -> None:
    fresh, config = _fresh_app()
    events: list[str] = []

    @fresh.on_startup
    async def open_pool() -> None:
        events.append("startup")
        fresh.state.pool = "pool"

    @fresh.on_shutdown
    async def close_pool() -> None:
        events.append("shutdown")

    @fresh.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        ctx = romeways.context()
        assert ctx.app is fresh and ctx.state.pool == "pool"
        events.append(f"{ctx.connector_name}/{ctx.queue_name}/{ctx.attempt}/{message.payload}")

    async def scenario() -> None:
        async with TestKit(fresh) as kit:
            await kit.publish("q", "hello")

    asyncio.run(scenario())
    assert events == ["startup", "mem/q/1/hello", "shutdown"]
    with pytest.raises(romeways.RomewaysError, match="only available while a message"):
        romeways.context()


def test_publishing_from_a_handler_goes_through_the_kit() -> None:
    fresh, config = _fresh_app()
    out_config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
    totals: list[float] = []

    @fresh.queue_consumer(queue_name="totals", config=config)
    async def add(message: romeways.Message[float]) -> None:
        totals.append(message.payload)
        await audit.publish(f"total {message.payload}")

    @fresh.queue_consumer(queue_name="orders", config=own_queue(config))
    async def order(message: romeways.Message[Order]) -> None:
        await totals_handle.publish(message.payload.amount)

    totals_handle = fresh.publisher(add)
    audit = fresh.queue_handle("audit", str, config=out_config)  # consumed elsewhere

    async def scenario() -> list[bytes]:
        async with TestKit(fresh) as kit:
            first = await kit.publish(fresh.publisher(order), Order(id=1, amount=2.5))
            assert first.handled
            await kit.drain()
            assert [r.queue_name for r in kit.reports] == ["orders", "totals"]
            return kit.sent("audit")

    assert asyncio.run(scenario()) == [b"total 2.5"]
    assert totals == [2.5]


def test_an_unawaited_failure_is_raised_on_exit() -> None:
    fresh, config = _fresh_app()

    @fresh.queue_consumer(queue_name="a", config=config)
    async def first(message: romeways.Message) -> None:
        await second_handle.publish("go")

    @fresh.queue_consumer(queue_name="b", config=own_queue(config))
    async def second(message: romeways.Message) -> None:
        raise KeyError("downstream bug")

    second_handle = fresh.publisher(second)

    async def scenario() -> None:
        async with TestKit(fresh) as kit:
            await kit.publish("a", "start")
            await kit.drain()

    with pytest.raises(KeyError, match="downstream bug"):
        asyncio.run(scenario())


def test_concurrent_chunks_and_timeouts() -> None:
    fresh = romeways.App()
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue(), max_chunk_size=5)
    running: list[int] = []
    peak: list[int] = [0]

    @fresh.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message[int]) -> None:
        running.append(message.payload)
        peak[0] = max(peak[0], len(running))
        await asyncio.sleep(0.05)
        running.remove(message.payload)

    @fresh.queue_consumer(queue_name="stuck", config=own_queue(config))
    async def stuck(message: romeways.Message) -> None:
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with TestKit(fresh, timeout=0.3) as kit:
            reports = await asyncio.gather(*(kit.publish("q", i) for i in range(5)))
            assert all(r.handled for r in reports)
            with pytest.raises(TimeoutError, match=r"not finished within 0\.3s"):
                await kit.publish("stuck", "x")
            with pytest.raises(romeways.RomewaysError, match="no consumer of queue 'nope'"):
                await kit.publish("nope", 1)

    fresh.shutdown_timeout = 0.2
    asyncio.run(scenario())
    assert peak[0] > 1  # a chunk's handlers ran concurrently, as in production


def test_log_records_about_a_message_carry_its_context(caplog: pytest.LogCaptureFixture) -> None:
    fresh, config = _fresh_app(retries=0)

    @fresh.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        logging.getLogger("romeways").info("working on it")
        raise romeways.ResendException()

    async def scenario() -> None:
        async with TestKit(fresh) as kit:
            await kit.publish("q", "x")

    with caplog.at_level(logging.INFO, logger="romeways"):
        asyncio.run(scenario())
    about = [r for r in caplog.records if r.getMessage() == "working on it"]
    dead = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    for record in (*about, *dead):
        fields = record.__dict__  # set by romeways.ContextFilter
        assert (fields["connector"], fields["queue"], fields["attempt"]) == ("mem", "q", 1)
        assert fields["handler"].endswith("handler")
    assert about and dead


def test_handlers_see_the_key_and_headers_a_message_was_published_with() -> None:
    """The kit's connector provides message metadata: romeways.context() in the handler (and
    in middleware) shows the key and headers given to kit.publish, a timestamp and the
    message's place in the queue; a resend keeps key and headers, as Kafka's does."""
    fresh, config = _fresh_app(retries=1)
    seen: list[tuple[object, ...]] = []
    around: list[tuple[object, ...]] = []

    class Watch(romeways.Middleware):
        async def before(self, ctx: romeways.MessageContext) -> None:
            around.append((ctx.key, ctx.header("traceparent")))

    fresh.add_middleware(Watch())

    @fresh.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message[str]) -> None:
        ctx = romeways.context()
        assert ctx.timestamp is not None and abs(ctx.timestamp - time.time()) < 60
        seen.append((message.payload, ctx.key, ctx.headers, ctx.position, ctx.attempt))
        if message.payload == "again" and message.attempt == 1:
            raise romeways.ResendException()

    handle = fresh.publisher(handler)

    async def scenario() -> None:
        async with TestKit(fresh) as kit:
            await kit.publish(handle, "keyed", key=b"order-7", headers={"traceparent": b"00-ab"})
            await kit.publish(handle, "plain")
            await kit.publish(
                handle, "again", key=b"k", headers=[("a", b"1"), ("a", b"2")], timeout=5.0
            )
            await kit.send("q", b"raw", key=b"raw-key")

    asyncio.run(scenario())
    assert seen == [
        ("keyed", b"order-7", (("traceparent", b"00-ab"),), (("queue", "q"), ("sequence", 0)), 1),
        ("plain", None, (), (("queue", "q"), ("sequence", 1)), 1),
        ("again", b"k", (("a", b"1"), ("a", b"2")), (("queue", "q"), ("sequence", 2)), 1),
        ("again", b"k", (("a", b"1"), ("a", b"2")), (("queue", "q"), ("sequence", 3)), 2),
        ("raw", b"raw-key", (), (("queue", "q"), ("sequence", 4)), 1),
    ]
    assert around == [
        (b"order-7", b"00-ab"),
        (None, None),
        (b"k", None),
        (b"k", None),
        (b"raw-key", None),
    ]
