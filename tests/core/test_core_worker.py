"""The worker loop: chunk sizes, sequential vs concurrent dispatch, handler timeouts, acks."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from multiprocessing import Queue
from typing import Any

import pytest
from _core_helpers import (
    Feed,
    ScriptedConnector,
    ScriptedConnectorConfig,
    ScriptedQueueConfig,
    run_until,
    scripted_app,
)

import romeways
import romeways._worker


def test_connector_is_asked_for_max_chunk_size() -> None:
    feed = Feed([str(i).encode() for i in range(10)])
    app, config = scripted_app(feed, max_chunk_size=4)
    handled: list[str] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        handled.append(message.payload)

    asyncio.run(run_until(app, lambda: len(handled) == 10))
    assert feed.requested and set(feed.requested) == {4}
    assert [len(chunk) for chunk in feed.chunks] == [4, 4, 2]
    assert sorted(handled, key=int) == [str(i) for i in range(10)]


def produce(queue: Queue[Any], items: list[bytes]) -> None:
    for item in items:
        queue.put(item)


def test_memory_connector_returns_at_most_n_in_fifo_order() -> None:
    queue: Queue[Any] = Queue()
    items = [f"m{i}".encode() for i in range(7)]
    # A producer process that has exited has flushed everything into the queue's pipe.
    producer = multiprocessing.get_context("fork").Process(target=produce, args=(queue, items))
    producer.start()
    producer.join(5)
    assert producer.exitcode == 0
    connector = romeways.MemoryQueueConnector(
        connector_config=romeways.MemoryConnectorConfig(connector_name="mem"),
        queue_name="q",
        config=romeways.MemoryQueueConfig(connector_name="mem", queue=queue, frequency=0.5),
    )

    async def main() -> list[list[bytes]]:
        await connector.on_start()
        chunks: list[list[bytes]] = []
        try:
            deadline = time.monotonic() + 5
            while sum(map(len, chunks)) < len(items) and time.monotonic() < deadline:
                chunks.append(list(await connector.get_messages(3)))
            # Empty now: waits about `frequency`, then returns nothing.
            started = time.monotonic()
            assert list(await connector.get_messages(3)) == []
            assert 0.3 < time.monotonic() - started < 3
            # send_messages puts one back on the same queue.
            await connector.send_messages(b"again")
            assert list(await connector.get_messages(3)) == [b"again"]
        finally:
            await connector.close()
        return chunks

    chunks = asyncio.run(main())
    assert all(1 <= len(chunk) <= 3 for chunk in chunks)
    assert [m for chunk in chunks for m in chunk] == items
    assert len(chunks[0]) == 3  # all seven were waiting: the first fetch is full


def test_memory_connector_turns_str_and_objects_into_bytes() -> None:
    queue: Queue[Any] = Queue()
    for item in ("text", {"a": 1}, bytearray(b"raw")):
        queue.put(item)
    connector = romeways.MemoryQueueConnector(
        connector_config=romeways.MemoryConnectorConfig(connector_name="mem"),
        queue_name="q",
        config=romeways.MemoryQueueConfig(connector_name="mem", queue=queue, frequency=0.5),
    )

    async def main() -> list[bytes]:
        got: list[bytes] = []
        while len(got) < 3:
            got.extend(await connector.get_messages(10))
        await connector.close()
        return got

    assert asyncio.run(main()) == [b"text", b'{"a":1}', b"raw"]


def dispatch_app(sequential: bool, size: int) -> tuple[romeways.App, Feed, list[int], list[str]]:
    feed = Feed([str(i).encode() for i in range(size * 2)])
    app, config = scripted_app(feed, max_chunk_size=size, sequential=sequential)
    in_flight = [0, 0]  # current, highest
    handled: list[str] = []
    everyone_in = asyncio.Event()

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        if in_flight[0] == size:
            everyone_in.set()
        try:
            # Concurrent handlers of a chunk all get here before any leaves; a sequential one
            # waits alone until the timeout lets it go.
            await asyncio.wait_for(everyone_in.wait(), 0.05 if sequential else 5)
        except TimeoutError:
            pass
        finally:
            in_flight[0] -= 1
        handled.append(message.payload)
        if len(handled) % size == 0:
            everyone_in.clear()

    return app, feed, in_flight, handled


def test_concurrent_dispatch_overlaps_the_handlers_of_a_chunk() -> None:
    app, feed, in_flight, handled = dispatch_app(sequential=False, size=5)
    asyncio.run(run_until(app, lambda: len(handled) == 10))
    assert in_flight[1] == 5
    assert [len(chunk) for chunk in feed.chunks] == [5, 5]


def test_sequential_dispatch_handles_one_at_a_time_in_order() -> None:
    app, feed, in_flight, handled = dispatch_app(sequential=True, size=5)
    asyncio.run(run_until(app, lambda: len(handled) == 10))
    assert in_flight[1] == 1
    assert handled == [str(i) for i in range(10)]
    assert [len(chunk) for chunk in feed.chunks] == [5, 5]


def test_handler_timeout_resends_then_dead_letters_a_hung_handler() -> None:
    feed = Feed([b"hang", b"quick"])
    app, config = scripted_app(feed, handler_timeout=0.2, retries=1)
    attempts: list[tuple[str, int]] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        attempts.append((message.payload, message.rw_resend_times))
        if message.payload == "hang":
            await asyncio.sleep(3600)

    started = time.monotonic()
    asyncio.run(run_until(app, lambda: bool(letters)))
    assert time.monotonic() - started < 5
    assert sorted(attempts) == [("hang", 0), ("hang", 1), ("quick", 0)]
    assert letters[0].reason == (
        "handler timed out after 0.2s, and the 1 resend(s) allowed are spent"
    )
    assert letters[0].resend_times == 1
    assert feed.resent == [(0, b'{"payload":"hang","rw_resend_times":1}')]


def test_finished_deliveries_are_acked_once_each() -> None:
    feed = Feed([b"ok", b"resend", b"boom", b"ok2", b"ok3"])
    app, config = scripted_app(feed, max_chunk_size=3, retries=1)
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "resend" and message.rw_resend_times == 0:
            raise romeways.ResendException()
        if message.payload == "boom":
            raise ValueError("boom")

    # 5 fresh deliveries (0-4) and the resent envelope (5): all finished, all acked.
    asyncio.run(run_until(app, lambda: len(feed.acked) == 6))
    assert sorted(feed.acked) == [0, 1, 2, 3, 4, 5]
    # One ack call per chunk, in delivery order.
    assert feed.acks[0] == [0, 1, 2]
    assert all(call == sorted(call) for call in feed.acks)
    assert len(letters) == 1
    assert feed.closed == 1


@pytest.mark.parametrize("sequential", [False, True])
def test_interrupted_delivery_is_not_acked(sequential: bool) -> None:
    """Shutdown while a handler runs past the App's shutdown_timeout: what finished is acked,
    the interrupted one is not, and the connector is still closed."""
    feed = Feed([b"fast", b"slow"])
    app, config = scripted_app(
        feed, app=romeways.App(shutdown_timeout=0.3), sequential=sequential, max_chunk_size=2
    )
    done: list[str] = []
    slow_started = asyncio.Event()
    cancelled: list[str] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "slow":
            slow_started.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append("slow")
                raise
        done.append(message.payload)

    started = time.monotonic()
    asyncio.run(run_until(app, lambda: slow_started.is_set() and done == ["fast"]))
    assert time.monotonic() - started < 5
    assert cancelled == ["slow"]
    assert feed.chunks == [[b"fast", b"slow"]]
    assert feed.acked == [0]
    assert feed.closed == 1


def test_each_message_of_a_chunk_has_its_own_context_even_in_tasks_it_starts() -> None:
    """Handlers that finish without waiting run inline in the worker's task; each still sees
    its own ``romeways.context()``, and so does a task it starts that runs on after it."""
    feed = Feed([b"a", b"b", b"c", b"d"])
    app, config = scripted_app(feed, max_chunk_size=4)
    seen: list[tuple[str, int, int | None]] = []
    late: list[tuple[str, int, int | None]] = []
    background: set[asyncio.Task[None]] = set()

    async def after(payload: str) -> None:
        await asyncio.sleep(0.05)  # runs on while the worker handles the rest of the chunk
        ctx = romeways.context()
        assert ctx.message is not None
        late.append((payload, ctx.delivery, ctx.attempt))

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        ctx = romeways.context()
        assert ctx.message is message
        seen.append((message.payload, ctx.delivery, ctx.attempt))
        task = asyncio.create_task(after(message.payload))
        background.add(task)
        task.add_done_callback(background.discard)

    asyncio.run(run_until(app, lambda: len(late) == 4))
    expected = [("a", 0, 1), ("b", 1, 1), ("c", 2, 1), ("d", 3, 1)]
    assert seen == expected
    assert sorted(late) == expected
    assert feed.acks == [[0, 1, 2, 3]]


@pytest.mark.parametrize("watchable", [True, False])
def test_what_a_handler_schedules_keeps_its_messages_context(
    watchable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inline handlers share one moving context cursor until one schedules something: a
    call_later callback, a task or a kept ``romeways.context()`` then still describe their own
    message after the worker has moved on, and so do log fields. ``watchable=False``: a loop
    whose queues cannot be watched, where the worker makes a cursor per message instead."""
    if not watchable:
        monkeypatch.setattr(romeways._worker, "_loop_queues", lambda loop: None)
    envelope = b'{"payload":"b","rw_resend_times":2}'
    feed = Feed([b"a", envelope, b"c", b"d", b"e"])
    app, config = scripted_app(feed, max_chunk_size=5)
    kept: dict[str, romeways.MessageContext] = {}
    later: list[tuple[str, int, int | None]] = []
    logged: list[tuple[str, object]] = []
    log = logging.getLogger("test.cursor")

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append((record.getMessage(), getattr(record, "attempt", None)))

    collect = Collect()
    collect.addFilter(romeways.ContextFilter())
    log.addHandler(collect)
    log.setLevel(logging.INFO)

    def report(payload: str) -> None:
        ctx = romeways.context()
        later.append((payload, ctx.delivery, ctx.attempt))
        log.info("late %s", payload)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        kept[message.payload] = romeways.context()
        log.info("now %s", message.payload)
        if message.payload == "b":  # a timer, run after the rest of the chunk
            asyncio.get_running_loop().call_later(0.05, report, "b")
        if message.payload == "c":  # a ready callback
            asyncio.get_running_loop().call_soon(report, "c")

    try:
        asyncio.run(run_until(app, lambda: len(later) == 2 and len(kept) == 5))
    finally:
        log.removeHandler(collect)
    assert sorted(later) == [("b", 1, 3), ("c", 2, 1)]
    assert {p: (ctx.delivery, ctx.attempt) for p, ctx in kept.items()} == {
        "a": (0, 1),
        "b": (1, 3),
        "c": (2, 1),
        "d": (3, 1),
        "e": (4, 1),
    }
    assert all(ctx.message is not None and ctx.message.payload == p for p, ctx in kept.items())
    assert sorted(logged, key=str) == sorted(
        [
            ("now a", 1),
            ("now b", 3),
            ("now c", 1),
            ("now d", 1),
            ("now e", 1),
            ("late b", 3),
            ("late c", 1),
        ],
        key=str,
    )
    assert feed.acks == [[0, 1, 2, 3, 4]]


def test_a_base_exception_mid_chunk_acks_only_what_finished_before_it() -> None:
    """SystemExit from the third handler of five: deliveries 0 and 1 are acked, 2 (raised) and
    3-4 (never started) are not; the worker stops and start() raises it."""
    feed = Feed([b"0", b"1", b"exit", b"3", b"4"])
    app, config = scripted_app(feed, max_chunk_size=5, sequential=True)
    handled: list[str] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "exit":
            raise SystemExit(3)
        handled.append(message.payload)

    with pytest.raises(SystemExit):
        asyncio.run(run_until(app, lambda: False, timeout=3.0))
    assert handled == ["0", "1"]
    assert feed.acked == [0, 1]


class _HangingResend(ScriptedConnector):
    """A resend that never returns (a backend gone quiet)."""

    async def resend(self, delivery: int, message: bytes) -> None:
        await asyncio.Event().wait()


def test_connector_is_closed_when_the_drain_cancels_a_delayed_resend_flush() -> None:
    """At shutdown a delayed resend is sent at once; when that send hangs past the shutdown
    timeout, the drain cancels the worker in the flush, and the connector must still be closed
    (it used to be skipped: its clients were left open)."""
    feed = Feed([b"one"])
    app = romeways.App(shutdown_timeout=0.3)
    app.connector_register(
        connector=_HangingResend, config=ScriptedConnectorConfig(connector_name="scripted")
    )
    config = ScriptedQueueConfig(connector_name="scripted", feed=feed, frequency=0.05)
    handled: list[str] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handle(message: romeways.Message) -> None:
        handled.append(message.payload)
        raise romeways.ResendException("later", delay=30.0)

    started = time.monotonic()
    asyncio.run(run_until(app, lambda: handled == ["one"]))
    assert time.monotonic() - started < 4.0
    assert feed.closed == 1
    assert feed.acked == []  # the resend never went out: the original is not finished
