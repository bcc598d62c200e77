"""romeways._private: each private attribute of a dependency that romeways reads is still there
in the installed release (these fail loudly, naming the attribute and the release, when a new
one drops it: ``make test-latest``), and the callers fall back when it is gone."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import multiprocessing
import platform
import signal
import time
from typing import Any

import pytest

import romeways
import romeways.connectors.memory
from romeways._private import (
    fetcher_with_wait,
    loop_queues,
    loop_signal_callback,
    queue_pipe,
    set_fetch_wait,
)

PYTHON = f"Python {platform.python_version()}"


def gone(attribute: str, release: str, fallback: str) -> str:
    return (
        f"{attribute} is gone (or changed) in {release}: romeways now falls back to {fallback}; "
        "update romeways/_private.py for this release"
    )


def test_asyncio_loops_have_their_ready_queue_and_timer_heap() -> None:
    loop = asyncio.new_event_loop()
    try:
        queues = loop_queues(loop)
        assert queues is not None, gone(
            "asyncio BaseEventLoop._ready/_scheduled", PYTHON, "a message context per message"
        )
        ready, scheduled = queues
        before = len(ready), len(scheduled)
        loop.call_soon(lambda: None)
        loop.call_later(60, lambda: None)
        assert (len(ready), len(scheduled)) == (before[0] + 1, before[1] + 1), gone(
            "what asyncio's _ready/_scheduled hold", PYTHON, "wrong context sharing"
        )
    finally:
        loop.close()


def test_asyncio_unix_loops_keep_their_signal_handlers() -> None:
    def callback(*args: object) -> None:
        del args

    loop = asyncio.new_event_loop()
    try:
        assert loop_signal_callback(loop, signal.SIGUSR1) is None  # none set yet
        loop.add_signal_handler(signal.SIGUSR1, callback, "arg")
        try:
            found = loop_signal_callback(loop, signal.SIGUSR1)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        assert found == (callback, ("arg",)), gone(
            "asyncio _UnixSelectorEventLoop._signal_handlers (Handle._callback/_args)",
            PYTHON,
            "dropping the loop's own SIGTERM/SIGINT/SIGHUP handlers while an App runs",
        )
    finally:
        loop.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_queues_have_their_pipe_lock_and_semaphore(method: str) -> None:
    queue: multiprocessing.Queue[Any] = multiprocessing.get_context(method).Queue(maxsize=3)
    try:
        pipe = queue_pipe(queue)
        assert pipe is not None, gone(
            "multiprocessing.Queue._reader/_rlock/_sem",
            PYTHON,
            "Queue.get, which holds the read lock while it waits (a SIGKILLed idle worker "
            "then stalls its successor)",
        )
        queue.put(b"x")
        assert pipe.reader.poll(5), gone("Queue._reader as the queue's pipe", PYTHON, "-")
        assert pipe.read_lock.acquire(False)
        pipe.read_lock.release()
    finally:
        queue.close()
        queue.join_thread()


def test_aiokafka_consumers_have_a_fetcher_with_a_settable_wait() -> None:
    aiokafka: Any = pytest.importorskip("aiokafka")
    Fetcher: Any = importlib.import_module("aiokafka.consumer.fetcher").Fetcher  # no stubs

    release = f"aiokafka {aiokafka.__version__}"
    fallback = "a fixed fetch wait (idle_fetch_max_wait_ms unused)"
    source = inspect.getsource(Fetcher)
    # Set in __init__ and read again for every FetchRequest built, so that setting it works.
    assert source.count("self._fetch_max_wait_ms") >= 2, gone(
        "aiokafka Fetcher._fetch_max_wait_ms", release, fallback
    )

    async def scenario() -> None:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        assert "_fetcher" in vars(consumer), gone(
            "aiokafka AIOKafkaConsumer._fetcher", release, fallback
        )
        assert fetcher_with_wait(consumer) is None  # not started: no fetcher yet
        # What start() does (without a broker to start against).
        fetcher: Any = Fetcher(consumer._client, consumer._subscription, fetch_max_wait_ms=7)
        consumer._fetcher = fetcher
        try:
            found = fetcher_with_wait(consumer)
            assert found is fetcher, gone(
                "aiokafka Fetcher._fetch_max_wait_ms (an int)", release, fallback
            )
            set_fetch_wait(found, 42)
            assert consumer._fetcher._fetch_max_wait_ms == 42
        finally:
            started, consumer._fetcher = consumer._fetcher, None
            await started.close()

    asyncio.run(scenario())


def test_a_memory_queue_without_a_pipe_to_watch_is_read_the_plain_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As on a Python whose multiprocessing.Queue lacks the attributes: messages come in order,
    a wait for none ends after ``frequency``, and close() ends a wait in progress promptly."""
    monkeypatch.setattr(romeways.connectors.memory, "queue_pipe", lambda queue: None)
    queue: multiprocessing.Queue[Any] = multiprocessing.Queue()
    connector = romeways.MemoryQueueConnector(
        connector_config=romeways.MemoryConnectorConfig(connector_name="m"),
        config=romeways.MemoryQueueConfig(
            connector_name="m", queue=queue, frequency=0.3, max_chunk_size=3
        ),
        queue_name="plain",
    )
    assert connector._pipe is None and connector._ready is None

    async def scenario() -> None:
        await connector.on_start()
        for i in range(5):
            queue.put(f"m{i}")
        got: list[bytes] = []
        deadline = time.monotonic() + 10
        while len(got) < 5 and time.monotonic() < deadline:
            got.extend(await connector.get_messages(3))
        assert got == [f"m{i}".encode() for i in range(5)]
        started = time.monotonic()
        assert await connector.get_messages(3) == []
        assert 0.25 < time.monotonic() - started < 3

        waiting = asyncio.ensure_future(connector.get_messages(3))
        await asyncio.sleep(0.05)
        waiting.cancel()
        started = time.monotonic()
        await connector.close()
        assert time.monotonic() - started < 2

    asyncio.run(scenario())
    queue.close()
    queue.join_thread()
