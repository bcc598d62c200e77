"""Helpers shared by the core tests: a scripted connector that records what a worker asks of it,
bounded ways to run an App, and /proc readers for process checks (Linux)."""

from __future__ import annotations

import asyncio
import os
import queue as queue_module
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.queues import Queue
from typing import Any

import romeways


class Feed:
    """What a ScriptedConnector serves, and a record of every call the worker made on it."""

    def __init__(self, messages: Sequence[bytes] = ()) -> None:
        self.pending: deque[bytes] = deque(messages)
        self.requested: list[int] = []
        self.chunks: list[list[bytes]] = []
        self.resent: list[tuple[int, bytes]] = []
        self.acks: list[list[int]] = []
        self.started = 0
        self.closed = 0

    @property
    def acked(self) -> list[int]:
        return [d for call in self.acks for d in call]


class ScriptedConnectorConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    pass


class ScriptedQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    feed: Feed


class ScriptedConnector(romeways.AQueueConnector[ScriptedConnectorConfig, ScriptedQueueConfig]):
    """Serves ``feed.pending`` in order, at most ``max_chunk_size`` at a time."""

    async def on_start(self) -> None:
        self.config.feed.started += 1

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        feed = self.config.feed
        feed.requested.append(max_chunk_size)
        if not feed.pending:
            await asyncio.sleep(min(self.config.frequency, 0.02))
            return []
        chunk = [feed.pending.popleft() for _ in range(min(max_chunk_size, len(feed.pending)))]
        feed.chunks.append(chunk)
        return chunk

    async def send_messages(self, message: bytes) -> None:
        self.config.feed.pending.append(message)

    async def resend(self, delivery: int, message: bytes) -> None:
        self.config.feed.resent.append((delivery, message))
        await self.send_messages(message)

    async def ack(self, deliveries: Sequence[int]) -> None:
        self.config.feed.acks.append(list(deliveries))

    async def close(self) -> None:
        self.config.feed.closed += 1


def scripted_app(
    feed: Feed, *, app: romeways.App | None = None, **queue_options: Any
) -> tuple[romeways.App, ScriptedQueueConfig]:
    """An App with the scripted connector registered as "scripted" (in-process), and a queue
    config on it; register the handler with ``app.queue_consumer(config=...)``."""
    app = app or romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=ScriptedConnector,
        config=ScriptedConnectorConfig(connector_name="scripted"),
    )
    queue_options.setdefault("frequency", 0.05)
    config = ScriptedQueueConfig(connector_name="scripted", feed=feed, **queue_options)
    return app, config


async def run_until(app: romeways.App, done: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Run ``app.start()`` until ``done()`` holds, then ``app.stop()`` and wait for start() to
    return (raising what it raised). Fails if ``done()`` does not hold within ``timeout``."""
    task = asyncio.create_task(app.start())
    deadline = time.monotonic() + timeout
    try:
        await asyncio.sleep(0)
        while not done():
            if task.done():
                task.result()
                raise AssertionError("start() returned before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            await asyncio.sleep(0.01)
    finally:
        app.stop()
        await asyncio.wait_for(task, app.shutdown_timeout + 5.0)


async def get_from(q: Queue[Any], timeout: float = 5.0) -> Any:
    """The next item of a multiprocessing queue, waited for in a thread; fails after timeout."""
    try:
        return await asyncio.to_thread(q.get, True, timeout)
    except queue_module.Empty:
        raise AssertionError(f"nothing arrived on the queue within {timeout}s") from None


def children_of(pid: int) -> list[int]:
    """PIDs of the live child processes of ``pid`` (all its threads)."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(p) for p in f.read().split())
        except FileNotFoundError:
            continue
    return found


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime 14, stime 15 (1-based, man 5 proc).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` (blocking) until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)
