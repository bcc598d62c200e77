"""The runner: graceful stop (cancel, stop(), signals handled by the worker process), restart of
a killed worker process, giving up on one that keeps crashing, failing start-up hooks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Sequence
from multiprocessing import Queue
from typing import Any, cast

import pytest
from _core_helpers import Feed, children_of, get_from, is_running, run_until, scripted_app

import romeways


def spawned_memory_app(
    app: romeways.App, queue: Queue[Any], connector: Any = None, **options: Any
) -> romeways.MemoryQueueConfig:
    app.connector_register(
        connector=connector or romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem-spawn"),
        spawn_process=True,
    )
    options.setdefault("frequency", 0.1)
    return romeways.MemoryQueueConfig(connector_name="mem-spawn", queue=queue, **options)


def test_cancelling_start_lets_in_flight_handlers_finish_and_closes_the_connector() -> None:
    feed = Feed([b"slow"])
    app, config = scripted_app(feed, app=romeways.App(shutdown_timeout=5.0))
    started = asyncio.Event()
    finished: list[str] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.append(message.payload)

    async def main() -> None:
        task = asyncio.create_task(app.start())
        await asyncio.wait_for(started.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    began = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - began < 5
    assert finished == ["slow"]
    assert feed.acked == [0]
    assert feed.closed == 1


def test_stop_from_a_task_returns_from_start() -> None:
    feed = Feed([b"one", b"two"])
    app, config = scripted_app(feed)
    handled: list[str] = []
    shutdown: list[str] = []

    both_handled = asyncio.Event()

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        handled.append(message.payload)
        if len(handled) == 2:
            both_handled.set()

    @app.on_shutdown
    async def on_shutdown() -> None:
        shutdown.append("done")

    async def stopper() -> None:
        await both_handled.wait()
        app.stop()

    async def main() -> None:
        stop_task = asyncio.create_task(stopper())
        await asyncio.wait_for(app.start(), 5)  # returns normally, no exception
        await stop_task

    asyncio.run(main())
    assert handled == ["one", "two"]
    assert feed.closed == 1
    assert shutdown == ["done"]
    app.stop()  # a no-op once stopped


def test_stopping_a_spawned_worker_lets_its_in_flight_handler_finish() -> None:
    app = romeways.App(shutdown_timeout=5.0)
    queue: Queue[Any] = Queue()
    results: Queue[Any] = Queue()
    config = spawned_memory_app(app, queue)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        results.put(("start", os.getpid()))
        await asyncio.sleep(1.0)
        results.put(("done", message.payload))

    async def main() -> int:
        task = asyncio.create_task(app.start())
        queue.put("slow")
        event, pid = await get_from(results, 10)
        assert event == "start"
        assert pid in children_of(os.getpid())
        app.stop()
        await asyncio.wait_for(task, 8)
        return int(pid)

    pid = asyncio.run(main())
    assert results.get(timeout=2) == ("done", "slow")
    assert not is_running(pid)


def test_killed_worker_process_is_restarted_and_keeps_consuming(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="romeways")
    app = romeways.App(shutdown_timeout=2.0, max_restarts=3, restart_window=60)
    queue: Queue[Any] = Queue()
    results: Queue[Any] = Queue()
    config = spawned_memory_app(app, queue)

    @app.on_startup
    async def announce() -> None:
        results.put(("pid", os.getpid()))

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        results.put(("handled", message.payload))

    async def main() -> tuple[int, int]:
        task = asyncio.create_task(app.start())
        try:
            _, first = await get_from(results, 10)
            queue.put("before")
            assert await get_from(results, 10) == ("handled", "before")
            await asyncio.sleep(0.3)  # idle: waiting for messages
            os.kill(first, signal.SIGKILL)
            event, second = await get_from(results, 10)
            assert event == "pid"
            queue.put("after")
            assert await get_from(results, 10) == ("handled", "after")
        finally:
            app.stop()
            await asyncio.wait_for(task, 8)
        return first, second

    first, second = asyncio.run(main())
    assert first != second
    assert not is_running(second)
    logs = [r.getMessage() for r in caplog.records if r.name == "romeways"]
    crash = [line for line in logs if "exited unexpectedly" in line]
    assert len(crash) == 1
    assert f"worker process {first} for connector 'mem-spawn'" in crash[0]
    assert "with code -9" in crash[0]


def test_worker_that_keeps_crashing_makes_start_fail() -> None:
    app = romeways.App(shutdown_timeout=2.0, max_restarts=1, restart_window=30)
    queue: Queue[Any] = Queue()
    for i in range(5):
        queue.put(f"m{i}")
    config = spawned_memory_app(app, queue, max_chunk_size=1)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        os._exit(3)

    # Other test files' brokers may be children of this process too (session fixtures).
    before = set(children_of(os.getpid()))
    began = time.monotonic()
    with pytest.raises(romeways.WorkerCrashedError) as info:
        asyncio.run(asyncio.wait_for(app.start(), 10))
    assert time.monotonic() - began < 10
    text = str(info.value)
    assert "'mem-spawn'" in text
    assert "crashed 2 times within 30s" in text
    assert "exit code 3" in text
    assert not set(children_of(os.getpid())) - before  # none of its workers is left


class FailingStartConnector(romeways.MemoryQueueConnector):
    async def on_start(self) -> None:
        raise ConnectionRefusedError("broker unreachable")


def test_connector_failing_on_start_in_a_worker_process_makes_start_fail() -> None:
    app = romeways.App(shutdown_timeout=2.0, max_restarts=5)
    config = spawned_memory_app(app, Queue(), connector=FailingStartConnector)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        pass

    # Other test files' brokers may be children of this process too (session fixtures).
    before = set(children_of(os.getpid()))
    began = time.monotonic()
    with pytest.raises(romeways.WorkerCrashedError) as info:
        asyncio.run(asyncio.wait_for(app.start(), 10))
    assert time.monotonic() - began < 5  # at once, not after max_restarts restarts
    assert "'mem-spawn'" in str(info.value)
    assert "start-up" in str(info.value)
    assert not set(children_of(os.getpid())) - before  # none of its workers is left


def test_connector_failing_on_start_in_process_makes_start_fail() -> None:
    class Failing(romeways.AQueueConnector[romeways.MemoryConnectorConfig, Any]):
        async def on_start(self) -> None:
            raise ConnectionRefusedError("broker unreachable")

        async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
            return []

        async def send_messages(self, message: bytes) -> None:
            pass

    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=Failing, config=romeways.MemoryConnectorConfig(connector_name="failing")
    )

    @app.queue_consumer(
        queue_name="q", config=romeways.GenericQueueConfig(connector_name="failing")
    )
    async def handler(message: romeways.Message) -> None:
        pass

    with pytest.raises(ConnectionRefusedError, match="broker unreachable"):
        asyncio.run(asyncio.wait_for(app.start(), 5))


@pytest.mark.parametrize("spawn", [False, True], ids=["in_process", "spawn_process"])
def test_failing_startup_hook_makes_start_fail(spawn: bool) -> None:
    app = romeways.App(shutdown_timeout=2.0, max_restarts=5)
    queue: Queue[Any] = Queue()
    queue.put("never handled")
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
        spawn_process=spawn,
    )
    handled: list[str] = []

    @app.on_startup
    async def connect_database() -> None:
        raise RuntimeError("database is down")

    @app.queue_consumer(
        queue_name="q", config=romeways.MemoryQueueConfig(connector_name="mem", queue=queue)
    )
    async def handler(message: romeways.Message) -> None:
        handled.append(message.payload)

    expected: type[Exception] = romeways.WorkerCrashedError if spawn else RuntimeError
    # Other test files' brokers may be children of this process too (session fixtures).
    before = set(children_of(os.getpid()))
    began = time.monotonic()
    with pytest.raises(expected):
        asyncio.run(asyncio.wait_for(app.start(), 10))
    assert time.monotonic() - began < 5
    assert handled == []
    assert queue.get(timeout=1) == "never handled"
    assert not set(children_of(os.getpid())) - before  # none of its workers is left


def test_spawned_and_in_process_connectors_run_together() -> None:
    app = romeways.App(shutdown_timeout=2.0)
    spawned_queue: Queue[Any] = Queue()
    results: Queue[Any] = Queue()
    config = spawned_memory_app(app, spawned_queue)
    feed = Feed([b"local"])
    app, local_config = scripted_app(feed, app=app)
    local: list[str] = []

    @app.queue_consumer(queue_name="remote", config=config)
    async def remote_handler(message: romeways.Message) -> None:
        results.put((os.getpid(), message.payload))

    @app.queue_consumer(queue_name="local", config=local_config)
    async def local_handler(message: romeways.Message) -> None:
        local.append(message.payload)

    spawned_queue.put("remote")
    got: list[Any] = []

    async def main() -> None:
        async def collect() -> None:
            got.append(await get_from(results, 10))

        collector = asyncio.create_task(collect())
        await run_until(app, lambda: bool(local) and collector.done(), timeout=10)
        await collector

    asyncio.run(main())
    assert local == ["local"]
    ((pid, payload),) = got
    assert payload == "remote"
    assert pid != os.getpid()


class GeneratorAfterFirstChunk(romeways.MemoryQueueConnector):
    """A connector bug that shows only once consuming runs: after its first chunk, get_messages
    returns a generator, which has no len(), so the worker loop fails."""

    _delivered = False

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        if self._delivered:
            return cast("Sequence[bytes]", (m for m in [b"never"]))
        chunk = await super().get_messages(max_chunk_size)
        self._delivered = bool(chunk)
        return chunk


async def _next_result(results: Queue[Any], app_task: asyncio.Task[None]) -> Any:
    """The next item of ``results``; start()'s own error at once if it ended first."""
    getter = asyncio.create_task(get_from(results, 10))
    await asyncio.wait([getter, app_task], return_when=asyncio.FIRST_COMPLETED)
    if app_task.done() and not getter.done():
        getter.cancel()
        app_task.result()
        raise AssertionError("start() returned")
    return await getter


def test_worker_failing_after_it_started_consuming_is_restarted_like_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only a failure before consuming began is a start-up failure (exit 78, start() fails); a
    worker process that fails later exits 1 and is restarted. Before: 78, and start() failed."""
    caplog.set_level(logging.INFO, logger="romeways")
    app = romeways.App(shutdown_timeout=2.0, max_restarts=3, restart_window=60)
    queue: Queue[Any] = Queue()
    results: Queue[Any] = Queue()
    config = spawned_memory_app(app, queue, connector=GeneratorAfterFirstChunk, max_chunk_size=1)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        results.put((os.getpid(), message.payload))

    queue.put("one")
    queue.put("two")

    async def main() -> list[tuple[int, str]]:
        task = asyncio.create_task(app.start())
        try:
            return [await _next_result(results, task), await _next_result(results, task)]
        finally:
            app.stop()
            await asyncio.wait_for(task, 8)

    (first, one), (second, two) = asyncio.run(main())
    assert (one, two) == ("one", "two")
    assert first != second
    logs = [r.getMessage() for r in caplog.records if r.name == "romeways"]
    assert any(
        f"worker process {first} for connector 'mem-spawn' exited unexpectedly with code 1;" in line
        for line in logs
    ), logs
    assert not any("start-up" in line for line in logs)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_worker_stopped_from_outside_is_restarted_and_not_counted_as_a_crash(
    caplog: pytest.LogCaptureFixture, signame: str
) -> None:
    """`kill <worker pid>` (SIGTERM or SIGHUP to the worker alone): it stops gracefully (its
    shutdown hook runs, exit 0); the supervisor says so and restarts it without counting a crash,
    so even max_restarts=0 survives two of them. Before: counted as a crash (SIGHUP even killed
    the worker, exit -1), and with max_restarts=0 start() failed at the first."""
    caplog.set_level(logging.INFO, logger="romeways")
    app = romeways.App(shutdown_timeout=2.0, max_restarts=0)
    queue: Queue[Any] = Queue()
    results: Queue[Any] = Queue()
    config = spawned_memory_app(app, queue)

    @app.on_startup
    async def announce() -> None:
        results.put(("up", os.getpid()))

    @app.on_shutdown
    async def goodbye() -> None:
        results.put(("down", os.getpid()))

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        pass

    async def main() -> list[int]:
        task = asyncio.create_task(app.start())
        pids: list[int] = []
        try:
            for _ in range(2):
                event, pid = await _next_result(results, task)
                assert event == "up"
                pids.append(pid)
                os.kill(pid, getattr(signal, signame))
                assert await _next_result(results, task) == ("down", pid)
            event, pid = await _next_result(results, task)
            assert event == "up"
            pids.append(pid)
            assert not task.done()
        finally:
            app.stop()
            await asyncio.wait_for(task, 8)
        return pids

    pids = asyncio.run(main())
    assert len(set(pids)) == 3
    assert not is_running(pids[-1])
    logs = [r.getMessage() for r in caplog.records if r.name == "romeways"]
    for pid in pids[:2]:
        assert (
            f"worker process {pid} for connector 'mem-spawn' was stopped by a signal from outside "
            "(exit code 0); restarting" in "\n".join(logs)
        )
    assert not any("exited unexpectedly" in line for line in logs)
