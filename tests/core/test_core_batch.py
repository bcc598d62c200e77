"""Batch handlers (``batch_consumer``): chunks at once, marks, failures, context, middleware,
and registration errors, on the scripted connector (which records every call)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from _core_helpers import Feed, run_until, scripted_app

import romeways


class Order(msgspec.Struct, frozen=True):
    id: int


def orders(*ids: int) -> list[bytes]:
    return [msgspec.json.encode(Order(i)) for i in ids]


def test_batch_gets_chunks_and_marks_resend_and_dead_letter_single_messages() -> None:
    feed = Feed(orders(*range(6)))
    app, config = scripted_app(feed, max_chunk_size=3, retries=1)
    batches: list[list[int]] = []
    contexts: list[tuple[int | None, int]] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.batch_consumer(queue_name="q.batch", config=config, dead_letter=dead_letter)
    async def handle(batch: romeways.Batch[Order]) -> None:
        batches.append([m.payload.id for m in batch])
        ctx = romeways.context()
        contexts.append((ctx.batch_size, ctx.delivery))
        for message in batch:
            assert batch.context(message).message is message
            if message.payload.id == 1 and message.attempt == 1:
                batch.resend(message)
            if message.payload.id == 4:
                batch.dead_letter(message, "no such customer")

    asyncio.run(run_until(app, lambda: len(feed.acked) == 7))
    assert batches[:2] == [[0, 1, 2], [3, 4, 5]]
    assert batches[2] == [1]  # the resend, with its counter raised
    assert contexts[:2] == [(3, 0), (3, 3)]  # the first message's context, batch_size set
    assert [json.loads(data)["rw_resend_times"] for _, data in feed.resent] == [1]
    assert [d for d, _ in feed.resent] == [1]
    assert [letter.reason for letter in letters] == ["no such customer"]
    assert letters[0].data == orders(4)[0]
    assert sorted(feed.acked) == list(range(7))  # each delivery acked once, marked ones too


def test_undecodable_messages_are_dead_lettered_singly_and_left_out() -> None:
    feed = Feed([*orders(1), b"not json", *orders(2)])
    app, config = scripted_app(feed, max_chunk_size=3)
    batches: list[list[int]] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.batch_consumer(queue_name="q.undecodable", config=config, dead_letter=dead_letter)
    async def handle(batch: romeways.Batch[Order]) -> None:
        batches.append([m.payload.id for m in batch])

    asyncio.run(run_until(app, lambda: len(feed.acked) == 3))
    assert batches == [[1, 2]]
    assert [letter.data for letter in letters] == [b"not json"]
    assert letters[0].reason.startswith("cannot decode the message")


def test_resend_exception_resends_every_unmarked_message_within_retries() -> None:
    feed = Feed(orders(1, 2, 3))
    app, config = scripted_app(feed, max_chunk_size=3, retries=1)
    seen: list[list[tuple[int, int]]] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.batch_consumer(queue_name="q.resend", config=config, dead_letter=dead_letter)
    async def handle(batch: romeways.Batch[Order]) -> None:
        seen.append([(m.payload.id, m.rw_resend_times) for m in batch])
        for message in batch:
            if message.payload.id == 3:
                batch.dead_letter(message, "bad")
        raise romeways.ResendException("database down")

    asyncio.run(run_until(app, lambda: len(letters) == 3 and len(feed.acked) == 5))
    assert seen == [[(1, 0), (2, 0), (3, 0)], [(1, 1), (2, 1)]]
    assert [d for d, _ in feed.resent] == [0, 1]
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == [
        "bad",
        "resent, and the 1 resend(s) allowed are spent",
        "resent, and the 1 resend(s) allowed are spent",
    ]


def test_other_exception_dead_letters_every_unmarked_message_with_the_reason() -> None:
    feed = Feed(orders(1, 2, 3))
    app, config = scripted_app(feed, max_chunk_size=3, retries=3)
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.batch_consumer(queue_name="q.fail", config=config, dead_letter=dead_letter)
    async def handle(batch: romeways.Batch[Order]) -> None:
        if batch[0].attempt == 1:
            batch.resend(batch[0], delay=0)
            raise ValueError("bulk insert failed")

    asyncio.run(run_until(app, lambda: len(letters) == 2 and len(feed.acked) == 4))
    assert [d for d, _ in feed.resent][:1] == [0]  # the marked one is resent, not failed
    assert {letter.data for letter in letters} == set(orders(2, 3))
    assert {letter.reason for letter in letters} == {
        "handler raised ValueError: bulk insert failed"
    }


def test_handler_timeout_bounds_the_whole_batch_call_and_resends() -> None:
    feed = Feed(orders(1, 2))
    app, config = scripted_app(feed, max_chunk_size=2, retries=0, handler_timeout=0.1)
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.batch_consumer(queue_name="q.timeout", config=config, dead_letter=dead_letter)
    async def handle(batch: romeways.Batch[Order]) -> None:
        await asyncio.sleep(10)

    asyncio.run(run_until(app, lambda: len(letters) == 2 and len(feed.acked) == 2))
    assert {letter.reason for letter in letters} == {
        "handler timed out after 0.1s, and the 0 resend(s) allowed are spent"
    }


def test_middleware_wraps_the_batch_call_once() -> None:
    feed = Feed(orders(1, 2, 3))
    app, config = scripted_app(feed, max_chunk_size=3)
    seen: list[tuple[int | None, romeways.Outcome]] = []

    class Count(romeways.Middleware):
        async def after(
            self, ctx: romeways.MessageContext, result: romeways.HandlingResult
        ) -> None:
            seen.append((ctx.batch_size, result.outcome))

    app.add_middleware(Count())

    @app.batch_consumer(queue_name="q.mw", config=config)
    async def handle(batch: romeways.Batch[Order]) -> None:
        pass

    asyncio.run(run_until(app, lambda: len(feed.acked) == 3))
    assert seen == [(3, romeways.Outcome.HANDLED)]


def test_marks_are_checked() -> None:
    batch = romeways.Batch([romeways.Message(payload="a")], where="handler h")
    with pytest.raises(romeways.RomewaysError, match="not one of this batch's"):
        batch.resend(romeways.Message(payload="a"))  # equal, but not the batch's own
    with pytest.raises(romeways.RomewaysError, match="seconds >= 0"):
        batch.resend(batch[0], delay=-1)
    batch.close()
    with pytest.raises(romeways.RomewaysError, match="after the handler returned"):
        batch.dead_letter(batch[0], "late")
    assert batch.payloads == ["a"] and len(batch) == 1 and list(batch[0:1]) == [batch[0]]


def test_registration_points_to_the_right_decorator() -> None:
    feed = Feed()
    app, config = scripted_app(feed)

    async def single(message: romeways.Message[Order]) -> None:
        pass

    async def batched(batch: romeways.Batch[Order]) -> None:
        pass

    loose: Any = app.batch_consumer(queue_name="q.reg", config=config)
    with pytest.raises(romeways.RegistrationError) as caught:
        loose(single)
    text = str(caught.value)
    assert "@batch_consumer(queue_name='q.reg')" in text and "single" in text
    assert "ScriptedQueueConfig(connector_name='scripted')" in text
    assert "register it with @queue_consumer" in text
    loose = app.queue_consumer(queue_name="q.reg", config=config)
    with pytest.raises(romeways.RegistrationError, match="register it with @batch_consumer"):
        loose(batched)
    assert app.routes == []
    app.batch_consumer(queue_name="q.reg", config=config)(batched)
    assert [route.batch for route in app.routes] == [True]


def test_middleware_sees_each_messages_outcome_in_batch_contexts() -> None:
    feed = Feed([*orders(1), b"not json", *orders(2, 3)])
    app, config = scripted_app(feed, max_chunk_size=4)
    seen: list[list[tuple[int, romeways.Outcome | None]]] = []

    class PerMessage(romeways.Middleware):
        async def after(
            self, ctx: romeways.MessageContext, result: romeways.HandlingResult
        ) -> None:
            seen.append([(c.delivery, c.outcome) for c in ctx.batch_contexts])

    app.add_middleware(PerMessage())

    @app.batch_consumer(queue_name="q.per-message", config=config)
    async def handle(batch: romeways.Batch[Order]) -> None:
        batch.dead_letter(batch[1], "two")

    asyncio.run(run_until(app, lambda: len(feed.acked) == 4))
    dead = romeways.Outcome.DEAD_LETTERED
    assert seen == [[(0, None), (1, dead), (2, dead), (3, None)]]  # None: handled


def test_a_chunk_of_which_nothing_decodes_does_not_call_the_handler() -> None:
    feed = Feed([b"nope", b"nor this"])
    app, config = scripted_app(feed, max_chunk_size=2)
    calls: list[int] = []
    results: list[tuple[int | None, romeways.Outcome]] = []

    class Results(romeways.Middleware):
        async def after(
            self, ctx: romeways.MessageContext, result: romeways.HandlingResult
        ) -> None:
            results.append((ctx.batch_size, result.outcome))

    app.add_middleware(Results())

    @app.batch_consumer(queue_name="q.nothing", config=config)
    async def handle(batch: romeways.Batch[Order]) -> None:
        calls.append(len(batch))

    asyncio.run(run_until(app, lambda: len(feed.acked) == 2))
    assert calls == []
    assert results == [(0, romeways.Outcome.DEAD_LETTERED)]


def test_testkit_reports_each_message_of_a_batch() -> None:
    from romeways.testing import TestKit

    app, config = scripted_app(Feed(), max_chunk_size=5)

    @app.batch_consumer(queue_name="q.kit", config=config)
    async def handle(batch: romeways.Batch[Order]) -> None:
        for message in batch:
            if message.payload.id == 2:
                batch.dead_letter(message, "no twos")

    async def main() -> list[romeways.Outcome | None]:
        async with TestKit(app) as kit:
            reports = await asyncio.gather(*(kit.publish("q.kit", Order(i)) for i in (1, 2, 3)))
        return [report.outcome for report in reports]

    assert asyncio.run(main()) == [
        romeways.Outcome.HANDLED,
        romeways.Outcome.DEAD_LETTERED,
        romeways.Outcome.HANDLED,
    ]


def test_metrics_count_each_message_of_a_batch() -> None:
    from romeways._metrics import StatsMiddleware

    feed = Feed(orders(1, 2, 3))
    app, config = scripted_app(feed, max_chunk_size=3)
    stats = StatsMiddleware()
    app.add_middleware(stats)

    @app.batch_consumer(queue_name="q.metrics", config=config)
    async def handle(batch: romeways.Batch[Order]) -> None:
        batch.dead_letter(batch[2], "three")

    asyncio.run(run_until(app, lambda: len(feed.acked) == 3))
    counts = stats.stats[("scripted", "q.metrics")].counts
    assert counts == [2, 0, 0, 1]  # handled, failed, resent, dead-lettered


def test_batch_resends_and_retry_on_failures_wait_the_queue_backoff() -> None:
    import time

    feed = Feed(orders(1, 2))
    backoff = romeways.RetryBackoff(first=0.3, jitter=0.0)
    app, config = scripted_app(
        feed, max_chunk_size=2, retries=1, retry_on=(TimeoutError,), retry_backoff=backoff
    )
    seen: list[tuple[list[tuple[int, int]], float]] = []

    @app.batch_consumer(queue_name="q.batch", config=config)
    async def handle(batch: romeways.Batch[Order]) -> None:
        seen.append(([(m.payload.id, m.rw_resend_times) for m in batch], time.monotonic()))
        if len(seen) == 1:
            batch.resend(batch[0])  # no delay given: the queue's backoff
            raise TimeoutError("downstream slow")  # in retry_on: the other one is resent too

    asyncio.run(run_until(app, lambda: len(seen) >= 2 and feed.acked == [0, 1, 2, 3]))
    (first, at_first), (second, at_second) = seen[:2]
    assert first == [(1, 0), (2, 0)]
    assert sorted(second) == [(1, 1), (2, 1)]  # both came back once, together
    assert at_second - at_first >= 0.3 * 0.9


def test_batch_consumer_refuses_max_concurrency() -> None:
    app, config = scripted_app(Feed(), max_concurrency=4)
    with pytest.raises(romeways.RegistrationError, match="max_concurrency=4 bounds single-message"):

        @app.batch_consumer(queue_name="q.batch", config=config)
        async def handle(batch: romeways.Batch[Order]) -> None: ...
