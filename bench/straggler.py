"""The straggler scenario (``max_concurrency``): chunks of 10, one message in each 50 sleeps 2 s
and the others 10 ms. A chunk at a time (``max_concurrency=None``), the chunk holding a
straggler waits for it and the queue stalls behind it; with ``max_concurrency=10`` the others go
on around it. Messages per second from the first handler call to the last finish, on the memory
connector and on Kafka (skipped when the broker cannot run here)."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

from romeways import App, MemoryConnectorConfig, MemoryQueueConfig, MemoryQueueConnector, Message

from . import kafka
from ._harness import Measurement, Metric, Params, Scenario, Target, Variant

CHUNK = 10
EVERY = 50  # one straggler in each EVERY messages
SLOW = 2.0  # seconds a straggler sleeps
FAST = 0.01  # seconds the others sleep
WAIT_LIMIT = 300.0


def payloads(n: int) -> list[bytes]:
    """``n`` messages, the one in the middle of each EVERY a straggler."""
    return [(b"slow %d" if i % EVERY == EVERY // 2 else b"fast %d") % i for i in range(n)]


class _Clock:
    """A handler that sleeps as its message says and times the run (first call, last finish)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    async def handle(self, message: Message) -> None:
        if not self.first:
            self.first = time.perf_counter()
        await asyncio.sleep(SLOW if str(message.payload).startswith("slow") else FAST)
        self.count += 1
        if self.count == self.n:
            self.last = time.perf_counter()
            self.done.set()

    def measured(self) -> Measurement:
        return {"rate": self.n / (self.last - self.first), "seconds": self.last - self.first}


async def _run_until(app: App, clock: _Clock, what: str) -> None:
    runner = asyncio.create_task(app.start())
    waiter = asyncio.create_task(clock.done.wait())
    try:
        await asyncio.wait([runner, waiter], timeout=WAIT_LIMIT, return_when="FIRST_COMPLETED")
    finally:
        waiter.cancel()
        app.stop()
        await runner
    if not clock.done.is_set():
        raise TimeoutError(f"{what} did not finish within {WAIT_LIMIT:.0f}s")


def memory_run(n: int, max_concurrency: int | None) -> Measurement:
    queue: Any = multiprocessing.get_context("fork").Queue()
    for data in payloads(n):
        queue.put(data)
    clock = _Clock(n)
    app = App(shutdown_timeout=5.0)
    config = MemoryQueueConfig(
        connector_name="bench-straggler",
        queue=queue,
        max_chunk_size=CHUNK,
        max_concurrency=max_concurrency,
    )
    app.queue_consumer(queue_name="straggler", config=config)(clock.handle)
    app.connector_register(
        connector=MemoryQueueConnector,
        config=MemoryConnectorConfig(connector_name="bench-straggler"),
    )
    asyncio.run(_run_until(app, clock, "memory straggler run"))
    queue.close()
    queue.join_thread()
    return clock.measured()


_TOPICS: dict[int, str] = {}


def kafka_run(n: int, max_concurrency: int | None) -> Measurement:
    if n not in _TOPICS:
        from tests.broker import unique_name

        topic = unique_name("bench-straggler")
        asyncio.run(kafka._produce_all(kafka.CLUSTER.bootstrap, topic, payloads(n), 1))
        _TOPICS[n] = topic
    clock = _Clock(n)

    async def main() -> None:
        app = kafka._app(
            _TOPICS[n], clock.handle, max_chunk_size=CHUNK, max_concurrency=max_concurrency
        )
        await _run_until(app, clock, "Kafka straggler run")

    asyncio.run(main())
    return clock.measured()


def memory_scenarios(params: Params) -> list[Scenario]:
    """The memory connector's straggler scenario (the ``straggler`` group)."""
    return [_scenario("memory", memory_run, params.straggler_n, None)]


def kafka_scenarios(params: Params) -> list[Scenario]:
    """Kafka's (in the ``kafka`` group: it needs the broker)."""
    return [_scenario("kafka", kafka_run, params.straggler_n, kafka.unavailable())]


def _scenario(
    backend: str, run: Callable[[int, int | None], Measurement], n: int, skip: str | None
) -> Scenario:
    # Ideal: n/SLOW-bound (the last straggler's 2 s); a chunk at a time: n/EVERY stragglers.
    rate = Metric("rate", "msg/s", target=Target("ratio", ">=", 2.0))
    seconds = Metric("seconds", "s", 2)
    chunked = "romeways max_concurrency=None (a chunk at a time)"
    return Scenario(
        name=f"{backend} straggler {n:,} (chunks of {CHUNK}, 1 in {EVERY} sleeps {SLOW:g}s)",
        metrics=[rate, seconds],
        variants=[
            Variant("romeways max_concurrency=10", lambda: run(n, 10), baseline=chunked),
            Variant(chunked, lambda: run(n, None), raw=True),
        ],
        skip=skip,
        reps=3,
    )
