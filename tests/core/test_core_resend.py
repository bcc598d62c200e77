"""Resend counting, the retries cap and delayed resends, on the memory connector."""

from __future__ import annotations

import asyncio
import os
import time
from multiprocessing import Queue
from typing import Any

import pytest
from _core_helpers import Feed, get_from, run_until, scripted_app

import romeways


def memory_app(
    queue: Queue[Any], **options: Any
) -> tuple[romeways.App, romeways.MemoryQueueConfig]:
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    options.setdefault("frequency", 0.1)
    return app, romeways.MemoryQueueConfig(connector_name="mem", queue=queue, **options)


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_always_resent_message_gets_retries_plus_one_attempts_then_dead_letter(
    retries: int,
) -> None:
    queue: Queue[Any] = Queue()
    queue.put(b"pay me")
    app, config = memory_app(queue, retries=retries)
    attempts: list[int] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q.resend", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        assert message.payload == "pay me"
        attempts.append(message.rw_resend_times)
        raise romeways.ResendException("not yet")

    async def main() -> None:
        await run_until(app, lambda: bool(letters))
        # Nothing more arrives after the dead-letter: the message is gone for good.
        assert queue.empty()

    asyncio.run(main())
    assert attempts == list(range(retries + 1))
    assert len(letters) == 1
    letter = letters[0]
    assert isinstance(letter, romeways.DeadLetter)
    assert letter.connector_name == "mem"
    assert letter.queue_name == "q.resend"
    assert letter.handler.endswith(handler.__qualname__)
    assert letter.resend_times == retries
    assert f"{retries} resend(s) allowed are spent" in letter.reason
    # The dead letter carries the bytes as last received: the original or the last envelope.
    if retries == 0:
        assert letter.data == b"pay me"
    else:
        assert letter.data == romeways.Message(payload="pay me", rw_resend_times=retries).to_json()


def test_resend_then_success_is_not_dead_lettered() -> None:
    feed = Feed([b"a", b"b"])
    app, config = scripted_app(feed, retries=2, sequential=True)
    handled: list[tuple[str, int]] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "a" and message.rw_resend_times < 2:
            raise romeways.ResendException()
        handled.append((message.payload, message.rw_resend_times))

    asyncio.run(run_until(app, lambda: len(handled) == 2))
    assert sorted(handled) == [("a", 2), ("b", 0)]
    assert letters == []
    assert [data for _, data in feed.resent] == [
        b'{"payload":"a","rw_resend_times":1}',
        b'{"payload":"a","rw_resend_times":2}',
    ]


def test_delayed_resend_does_not_block_other_messages() -> None:
    queue: Queue[Any] = Queue()
    for payload in ("A", "B", "C"):
        queue.put(payload)
    app, config = memory_app(queue, max_chunk_size=1, sequential=True, frequency=0.05)
    events: list[tuple[str, int, float]] = []
    delay = 1.0

    @app.queue_consumer(queue_name="q.delay", config=config)
    async def handler(message: romeways.Message) -> None:
        events.append((message.payload, message.rw_resend_times, time.monotonic()))
        if message.payload == "A" and message.rw_resend_times == 0:
            raise romeways.ResendException(delay=delay)

    asyncio.run(run_until(app, lambda: len(events) == 4))
    order = [(payload, times) for payload, times, _ in events]
    assert order == [("A", 0), ("B", 0), ("C", 0), ("A", 1)]
    first_a, resent_a = events[0][2], events[3][2]
    assert resent_a - first_a >= delay * 0.9
    # B and C were handled while A's resend was held back.
    assert events[2][2] < first_a + delay


def test_delayed_resends_are_flushed_on_shutdown() -> None:
    feed = Feed([b"later"])
    app, config = scripted_app(feed)
    attempts: list[int] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        attempts.append(message.rw_resend_times)
        raise romeways.ResendException(delay=60)

    started = time.monotonic()
    asyncio.run(run_until(app, lambda: bool(attempts)))
    assert time.monotonic() - started < 5
    # Sent back at once instead of dropped, and acked only then.
    assert feed.resent == [(0, b'{"payload":"later","rw_resend_times":1}')]
    assert feed.acked == [0]


def test_resend_exception_rejects_negative_delay() -> None:
    with pytest.raises(ValueError, match="delay"):
        romeways.ResendException(delay=-1)


def test_resends_and_dead_letter_happen_in_a_worker_process() -> None:
    """The same counting when the worker is a spawned process putting resends back itself."""
    app = romeways.App(shutdown_timeout=2.0)
    queue: Queue[Any] = Queue()
    results: Queue[Any] = Queue()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem-proc"),
        spawn_process=True,
    )

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        results.put(("dead", letter.resend_times, letter.data))

    @app.queue_consumer(
        queue_name="q.proc",
        config=romeways.MemoryQueueConfig(
            connector_name="mem-proc", queue=queue, frequency=0.1, retries=2
        ),
        dead_letter=dead_letter,
    )
    async def handler(message: romeways.Message) -> None:
        results.put(("attempt", message.rw_resend_times, os.getpid()))
        raise romeways.ResendException()

    queue.put("again")

    async def main() -> list[Any]:
        task = asyncio.create_task(app.start())
        got: list[Any] = []
        try:
            while not got or got[-1][0] != "dead":
                got.append(await get_from(results, 10))
        finally:
            app.stop()
            await asyncio.wait_for(task, 8)
        return got

    got = asyncio.run(main())
    attempts = [item for item in got if item[0] == "attempt"]
    assert [times for _, times, _ in attempts] == [0, 1, 2]
    assert {pid for _, _, pid in attempts} != {os.getpid()}
    assert got[-1] == ("dead", 2, b'{"payload":"again","rw_resend_times":2}')
