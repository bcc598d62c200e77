"""``max_concurrency``: at most N handlers in flight, a fetch as soon as a slot is free, each
message acked once as it finishes; validated with the config; stops drain the handlers."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest
from _core_helpers import Feed, run_until, scripted_app

import romeways
from romeways._worker import WorkerProbe, build_workers


def test_max_concurrency_is_checked_with_the_config() -> None:
    assert romeways.GenericQueueConfig(connector_name="c").max_concurrency is None
    assert romeways.GenericQueueConfig(connector_name="c", max_concurrency=1).max_concurrency == 1
    with pytest.raises(
        romeways.ConfigError, match=r"GenericQueueConfig\.max_concurrency=0 is invalid: give a"
    ):
        romeways.GenericQueueConfig(connector_name="c", max_concurrency=0)
    with pytest.raises(romeways.ConfigError, match=r"max_concurrency=2\.5 is invalid: give an int"):
        romeways.GenericQueueConfig(connector_name="c", max_concurrency=cast(Any, 2.5))
    with pytest.raises(
        romeways.ConfigError, match=r"max_concurrency=4 is invalid: sequential=True handles one"
    ):
        romeways.GenericQueueConfig(connector_name="c", sequential=True, max_concurrency=4)
    one = romeways.GenericQueueConfig(connector_name="c", sequential=True, max_concurrency=1)
    assert one.sequential and one.max_concurrency == 1


def _straggler_run(max_concurrency: int | None) -> tuple[list[str], Feed]:
    """50 messages in chunks of 10; "0" sleeps 1 s, the others 10 ms. The order they finish."""
    feed = Feed([str(i).encode() for i in range(50)])
    app, config = scripted_app(feed, max_chunk_size=10, max_concurrency=max_concurrency)
    finished: list[str] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        await asyncio.sleep(1.0 if message.payload == "0" else 0.01)
        finished.append(message.payload)

    asyncio.run(run_until(app, lambda: len(feed.acked) == 50, timeout=10.0))
    return finished, feed


def test_a_straggler_no_longer_holds_up_the_chunks_behind_it() -> None:
    """Not a timing test: with max_concurrency the other 49 finish before the straggler; with
    None (a chunk at a time) the next chunk waits for it, so only its own chunk's 9 do."""
    finished, feed = _straggler_run(10)
    assert finished[-1] == "0" and sorted(finished, key=int) == [str(i) for i in range(50)]
    assert sorted(feed.acked) == list(range(50))  # each once
    assert all(len(call) == 1 for call in feed.acks)  # acked one by one as they finish
    assert max(feed.requested) == 10 and min(feed.requested) >= 1

    finished, feed = _straggler_run(None)
    assert finished.index("0") == 9  # the rest of chunk one, then the straggler
    assert sorted(feed.acked) == list(range(50))


def test_never_more_than_max_concurrency_in_flight_and_fetches_ask_for_free_slots() -> None:
    feed = Feed([str(i).encode() for i in range(40)])
    app, config = scripted_app(feed, max_chunk_size=10, max_concurrency=3)
    in_flight = [0, 0]  # now, most
    finished: list[str] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        context = romeways.context()
        assert context is not None and context.message is message
        await asyncio.sleep(0.02 if int(message.payload) % 4 else 0.06)
        in_flight[0] -= 1
        finished.append(message.payload)

    asyncio.run(run_until(app, lambda: len(feed.acked) == 40, timeout=10.0))
    assert in_flight[1] == 3
    assert max(feed.requested) == 3  # never more than the free slots
    assert max(len(chunk) for chunk in feed.chunks) <= 3
    assert sorted(feed.acked) == list(range(40))
    assert sorted(finished, key=int) == [str(i) for i in range(40)]
    assert feed.closed == 1


def test_resends_and_dead_letters_are_acked_once_each_out_of_order() -> None:
    feed = Feed([b"ok", b"resend", b"later", b"boom", b"ok2"])
    app, config = scripted_app(feed, max_chunk_size=2, max_concurrency=4, retries=1)
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        if message.rw_resend_times == 0 and message.payload in ("resend", "later"):
            raise romeways.ResendException(delay=0.2 if message.payload == "later" else 0.0)
        if message.payload == "boom":
            raise ValueError("boom")

    # 5 fresh deliveries (0-4) and the two resent envelopes (5, 6).
    asyncio.run(run_until(app, lambda: len(feed.acked) == 7, timeout=10.0))
    assert sorted(feed.acked) == list(range(7))
    assert sorted(d for d, _ in feed.resent) == [1, 2]
    assert [letter.reason for letter in letters] == ["handler raised ValueError: boom"]


def test_stop_lets_handlers_in_flight_finish_and_leaves_the_interrupted_unacked() -> None:
    """Stopping: no fetch after the stop; a handler that finishes within shutdown_timeout is
    acked, one cancelled at the deadline is not, and the connector is closed once."""
    feed = Feed([b"finishing", b"stuck", b"never"])
    app, config = scripted_app(
        feed, app=romeways.App(shutdown_timeout=0.5), max_chunk_size=3, max_concurrency=2
    )
    started: list[str] = []
    done: list[str] = []
    cancelled: list[str] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        started.append(message.payload)
        try:
            await asyncio.sleep(0.2 if message.payload == "finishing" else 3600)
        except asyncio.CancelledError:
            cancelled.append(message.payload)
            raise
        done.append(message.payload)

    began = time.monotonic()
    asyncio.run(run_until(app, lambda: len(started) == 2))
    assert time.monotonic() - began < 4.0
    assert done == ["finishing"]
    assert cancelled == ["stuck"]
    assert feed.acked == [0]
    assert feed.requested == [2]  # the slots were full until after the stop: no fetch since
    assert list(feed.pending) == [b"never"]
    assert feed.closed == 1


def test_a_stuck_message_fails_health_while_the_worker_polls_on() -> None:
    """With handler_timeout the oldest message in flight bounds the worker, not its last poll
    (which a worker with free slots keeps fresh)."""
    app, config = scripted_app(
        Feed(), max_concurrency=4, handler_timeout=1.0, dead_letter_timeout=1.0
    )

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        pass

    (worker,) = build_workers(app, ["scripted"], asyncio.Event())
    probe: WorkerProbe = worker.probe
    now = time.monotonic()
    probe.last_poll = now
    probe.inflight = 2
    probe.handling = {7: now - 1.0, 8: now - 20.0}
    assert probe.stuck(now) == (
        f"{probe.handler} has held a message for 20.0s, far past handler_timeout=1.0s (a handler "
        "ignores cancellation or blocks)"
    )
    probe.handling = {7: now - 1.0}
    assert probe.stuck(now) == ""


def test_handler_timeout_and_middleware_work_per_message() -> None:
    feed = Feed([b"hang", b"a", b"b"])
    app, config = scripted_app(feed, max_concurrency=2, handler_timeout=0.2, retries=0)
    seen: list[str] = []
    letters: list[romeways.DeadLetter] = []

    class Outcomes(romeways.Middleware):
        async def after(
            self, ctx: romeways.MessageContext, result: romeways.HandlingResult
        ) -> None:
            payload = ctx.message.payload if ctx.message is not None else None
            seen.append(f"{payload}:{result.outcome.value}")

    app.add_middleware(Outcomes())

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "hang":
            await asyncio.sleep(3600)

    asyncio.run(run_until(app, lambda: len(feed.acked) == 3, timeout=5.0))
    assert sorted(feed.acked) == [0, 1, 2]
    assert [letter.reason for letter in letters] == [
        "handler timed out after 0.2s, and the 0 resend(s) allowed are spent"
    ]
    assert sorted(seen) == ["a:handled", "b:handled", "hang:dead-lettered"]


def test_max_concurrency_one_is_sequential_with_a_fetch_per_message() -> None:
    feed = Feed([str(i).encode() for i in range(6)])
    app, config = scripted_app(feed, max_chunk_size=4, sequential=True, max_concurrency=1)
    handled: list[str] = []
    in_flight = [0, 0]

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        await asyncio.sleep(0.005)
        in_flight[0] -= 1
        handled.append(message.payload)

    asyncio.run(run_until(app, lambda: len(feed.acked) == 6))
    assert handled == [str(i) for i in range(6)]
    assert in_flight[1] == 1
    assert feed.chunks == [[str(i).encode()] for i in range(6)]
    assert feed.acks == [[i] for i in range(6)]


def test_a_handler_raising_cancelled_error_stops_the_worker_as_in_chunk_mode() -> None:
    """Cancellation is let through: start() raises it (nobody asked to stop), the message is
    not acked, and the connector is closed."""
    feed = Feed([b"ok", b"cancel", b"later"])
    app, config = scripted_app(feed, max_chunk_size=2, max_concurrency=2)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "cancel":
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run_until(app, lambda: False, timeout=3.0))
    assert 1 not in feed.acked
    assert feed.closed == 1
