"""Memory connector scenarios: drain, latency, idle CPU and RSS growth, each against a raw
``multiprocessing.Queue.get()`` loop in a thread where a raw loop makes sense."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Coroutine
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from romeways import (
    App,
    MemoryConnectorConfig,
    MemoryQueueConfig,
    MemoryQueueConnector,
    Message,
)

from ._harness import Measurement, Metric, Params, Scenario, Target, Variant

CTX = multiprocessing.get_context("fork")
CONNECTOR = "bench-memory"
WAIT_LIMIT = 600.0  # seconds any run may take before it is declared stuck

Handler = Callable[[Message], Coroutine[Any, Any, None]]


def _new_queue() -> Queue[bytes]:
    return CTX.Queue()


def _fill(queue: Queue[bytes], n: int) -> None:
    put = queue.put
    for i in range(n):
        put(b"message %d" % i)


def _app(queue: Queue[bytes], handler: Handler, *, spawn: bool, **queue_options: Any) -> App:
    app = App(shutdown_timeout=5.0)
    config = MemoryQueueConfig(connector_name=CONNECTOR, queue=queue, **queue_options)
    app.queue_consumer(queue_name="bench", config=config)(handler)
    app.connector_register(
        connector=MemoryQueueConnector,
        config=MemoryConnectorConfig(connector_name=CONNECTOR),
        spawn_process=spawn,
    )
    return app


def _wait(event: Any, what: str) -> None:
    if not event.wait(WAIT_LIMIT):
        raise TimeoutError(f"{what} did not finish within {WAIT_LIMIT:.0f}s")


def _close(queue: Queue[bytes]) -> None:
    queue.close()
    queue.join_thread()


# --- drain -----------------------------------------------------------------------------------


def ours_drain(n: int, *, spawn: bool) -> Measurement:
    """Seconds from ``start()`` until the handler has seen all ``n`` pre-queued messages."""
    queue = _new_queue()
    _fill(queue, n)
    done = CTX.Event()
    finished_at: Synchronized[float] = CTX.Value("d", 0.0, lock=False)
    count = 0

    async def handle(message: Message) -> None:
        nonlocal count
        count += 1
        if count == n:
            finished_at.value = time.perf_counter()
            done.set()

    app = _app(queue, handle, spawn=spawn)

    async def main() -> float:
        started = time.perf_counter()
        runner = asyncio.create_task(app.start())
        await asyncio.to_thread(_wait, done, "romeways drain")
        app.stop()
        await runner
        return started

    started = asyncio.run(main())
    _close(queue)
    elapsed = finished_at.value - started
    return {"rate": n / elapsed, "seconds": elapsed}


def _raw_drain_loop(queue: Queue[bytes], n: int, finished_at: Any, done: Any) -> None:
    seen = 0

    def handle(data: bytes) -> None:
        nonlocal seen
        seen += 1

    get = queue.get
    for _ in range(n):
        handle(get())
    finished_at.value = time.perf_counter()
    done.set()


def raw_drain(n: int, *, spawn: bool) -> Measurement:
    """The hand-written loop: ``queue.get()`` in a thread calling a function, in this process
    or (``spawn``) in a forked child, as romeways would run it."""
    queue = _new_queue()
    _fill(queue, n)
    done = CTX.Event()
    finished_at: Synchronized[float] = CTX.Value("d", 0.0, lock=False)

    def in_thread() -> None:
        thread = threading.Thread(target=_raw_drain_loop, args=(queue, n, finished_at, done))
        thread.start()
        thread.join()

    started = time.perf_counter()
    if spawn:
        proc = CTX.Process(target=in_thread, daemon=True)
        proc.start()
        _wait(done, "raw drain")
        proc.join()
    else:
        in_thread()
    _close(queue)
    elapsed = finished_at.value - started
    return {"rate": n / elapsed, "seconds": elapsed}


def drain_scenarios(params: Params) -> list[Scenario]:
    n = params.drain_n
    rate = Metric("rate", "msg/s", target=Target("ratio", ">=", 0.8))

    def ours(spawn: bool) -> Callable[[], Measurement]:
        return lambda: ours_drain(n, spawn=spawn)

    def raw(spawn: bool) -> Callable[[], Measurement]:
        return lambda: raw_drain(n, spawn=spawn)

    scenarios = []
    for spawn in (False, True):
        where = "worker process" if spawn else "in-process"
        raw_label = f"raw thread ({'child process' if spawn else 'same process'})"
        scenarios.append(
            Scenario(
                name=f"memory drain {n:,} ({where})",
                metrics=[rate],
                variants=[
                    Variant(f"romeways spawn_process={spawn}", ours(spawn), baseline=raw_label),
                    Variant(raw_label, raw(spawn), raw=True),
                ],
            )
        )
    return scenarios


# --- latency ---------------------------------------------------------------------------------


def _produce_paced(queue: Queue[bytes], count: int, rate: float) -> None:
    """``count`` messages at ``rate``/s, each carrying its send time (perf_counter, which is
    CLOCK_MONOTONIC on Linux and so comparable across processes)."""
    start = time.perf_counter() + 0.01
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        queue.put(repr(time.perf_counter()).encode())


def _latency_stats(latencies: list[float]) -> Measurement:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered) * 1e3, "p99": p99 * 1e3, "max": ordered[-1] * 1e3}


def ours_latency(count: int, rate: float, *, spawn: bool, idle: float = 0.5) -> Measurement:
    """Consumer idle for ``idle`` seconds, then ``count`` messages at ``rate``/s; default queue
    settings. Latency = handler time minus send time."""
    queue = _new_queue()
    latencies = CTX.Array("d", count, lock=False)
    done = CTX.Event()
    seen = 0

    async def handle(message: Message) -> None:
        nonlocal seen
        latencies[seen] = time.perf_counter() - float(message.payload)
        seen += 1
        if seen == count:
            done.set()

    app = _app(queue, handle, spawn=spawn)

    async def main() -> None:
        runner = asyncio.create_task(app.start())
        await asyncio.sleep(idle)
        producer = threading.Thread(target=_produce_paced, args=(queue, count, rate))
        producer.start()
        await asyncio.to_thread(_wait, done, "romeways latency run")
        app.stop()
        await runner
        producer.join()

    asyncio.run(main())
    _close(queue)
    return _latency_stats(list(latencies))


def raw_latency(count: int, rate: float, *, idle: float = 0.5) -> Measurement:
    queue = _new_queue()
    latencies: list[float] = []

    def consume() -> None:
        get = queue.get
        for _ in range(count):
            data = get()
            latencies.append(time.perf_counter() - float(data))

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(idle)
    _produce_paced(queue, count, rate)
    consumer.join(WAIT_LIMIT)
    _close(queue)
    return _latency_stats(latencies)


def latency_scenario(params: Params) -> Scenario:
    count, rate = params.latency_count, params.latency_rate
    raw = "raw thread (same process)"
    ms = Target("value", "<=", 10.0)
    return Scenario(
        name=f"memory latency {count:,} msgs at {rate:g}/s",
        metrics=[Metric("p50", "ms", 3), Metric("p99", "ms", 3, ms), Metric("max", "ms", 3)],
        variants=[
            Variant(
                "romeways spawn_process=False",
                lambda: ours_latency(count, rate, spawn=False),
                baseline=raw,
            ),
            Variant(
                "romeways spawn_process=True",
                lambda: ours_latency(count, rate, spawn=True),
                baseline=raw,
            ),
            Variant(raw, lambda: raw_latency(count, rate), raw=True),
        ],
    )


# --- idle CPU --------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid``, in seconds (Linux: /proc/PID/task/*/schedstat)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def _cpu_percent_over(pid: int, seconds: float) -> float:
    before = _cpu_seconds(pid)
    time.sleep(seconds)
    return (_cpu_seconds(pid) - before) / seconds * 100


def ours_idle_cpu(seconds: float, *, spawn: bool, warmup: float = 0.5) -> Measurement:
    """CPU of a worker with an empty queue over ``seconds`` (default queue settings)."""
    queue = _new_queue()
    pid: Synchronized[int] = CTX.Value("i", 0, lock=False)
    ready = CTX.Event()

    async def handle(message: Message) -> None:
        return None

    app = _app(queue, handle, spawn=spawn)

    @app.on_startup
    async def record_pid() -> None:
        pid.value = os.getpid()
        ready.set()

    async def main() -> float:
        runner = asyncio.create_task(app.start())
        await asyncio.to_thread(_wait, ready, "worker start-up")
        await asyncio.sleep(warmup)
        if spawn:
            percent = await asyncio.to_thread(_cpu_percent_over, pid.value, seconds)
        else:
            # The measuring thread sleeps; what runs is this process's loop and the worker.
            before = time.process_time()
            await asyncio.sleep(seconds)
            percent = (time.process_time() - before) / seconds * 100
        app.stop()
        await runner
        return percent

    percent = asyncio.run(main())
    _close(queue)
    return {"cpu": percent}


def raw_idle_cpu(seconds: float, *, warmup: float = 0.5) -> Measurement:
    """A thread blocked in ``queue.get(timeout=1.0)``, as a hand-written loop would idle."""
    queue = _new_queue()
    stop = threading.Event()

    def consume() -> None:
        import queue as queue_module

        while not stop.is_set():
            try:
                queue.get(timeout=1.0)
            except queue_module.Empty:
                pass

    consumer = threading.Thread(target=consume)
    consumer.start()
    time.sleep(warmup)
    before = time.process_time()
    time.sleep(seconds)
    percent = (time.process_time() - before) / seconds * 100
    stop.set()
    consumer.join()
    _close(queue)
    return {"cpu": percent}


def idle_cpu_scenario(params: Params) -> Scenario:
    seconds = params.idle_seconds
    raw = "raw thread in get(timeout=1)"  # for reference: a ratio of near-zeros means nothing
    return Scenario(
        name=f"idle CPU over {seconds:g}s",
        metrics=[Metric("cpu", "% of a core", 2, Target("value", "<=", 2.0))],
        variants=[
            Variant(
                "romeways worker process",
                lambda: ours_idle_cpu(seconds, spawn=True),
            ),
            Variant(
                "romeways in-process",
                lambda: ours_idle_cpu(seconds, spawn=False),
            ),
            Variant(raw, lambda: raw_idle_cpu(seconds), raw=True),
        ],
        reps=3,
    )


# --- memory growth ---------------------------------------------------------------------------


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for text in f:
            if text.startswith("VmRSS:"):
                return int(text.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def ours_growth(warmup: int, n: int, *, in_flight: int = 5_000) -> Measurement:
    """RSS of a worker process after ``warmup`` messages vs after ``n`` more, with the producer
    (this process) keeping at most ``in_flight`` messages queued."""
    queue = _new_queue()
    handled: Synchronized[int] = CTX.Value("q", 0, lock=False)
    pid: Synchronized[int] = CTX.Value("i", 0, lock=False)
    ready = CTX.Event()

    async def handle(message: Message) -> None:
        handled.value += 1

    app = _app(queue, handle, spawn=True)

    @app.on_startup
    async def record_pid() -> None:
        pid.value = os.getpid()
        ready.set()

    def produce_until(total: int) -> None:
        sent = handled.value
        deadline = time.monotonic() + WAIT_LIMIT
        while handled.value < total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"growth run stuck at {handled.value:,} of {total:,}")
            while sent < total and sent - handled.value < in_flight:
                queue.put(b"order %d amount %d.%02d" % (sent, sent % 997, sent % 100))
                sent += 1
            time.sleep(0.001)

    async def main() -> tuple[int, int]:
        runner = asyncio.create_task(app.start())
        await asyncio.to_thread(_wait, ready, "worker start-up")
        await asyncio.to_thread(produce_until, warmup)
        await asyncio.sleep(0.2)
        after_warmup = _rss_bytes(pid.value)
        await asyncio.to_thread(produce_until, warmup + n)
        await asyncio.sleep(0.2)
        after_all = _rss_bytes(pid.value)
        app.stop()
        await runner
        return after_warmup, after_all

    after_warmup, after_all = asyncio.run(main())
    _close(queue)
    return {
        "growth": (after_all - after_warmup) / after_warmup * 100,
        "rss_warm": after_warmup / 2**20,
        "rss_end": after_all / 2**20,
    }


def growth_scenario(params: Params) -> Scenario:
    return Scenario(
        name=f"RSS growth over {params.growth_n:,} msgs",
        metrics=[
            Metric("rss_warm", "MiB", 1),
            Metric("rss_end", "MiB", 1),
            Metric("growth", "%", 1, Target("value", "<", 10.0)),
        ],
        variants=[
            Variant(
                "romeways worker process",
                lambda: ours_growth(params.growth_warmup, params.growth_n),
            )
        ],
        reps=1,
    )


def scenarios(params: Params) -> list[Scenario]:
    return [
        *drain_scenarios(params),
        latency_scenario(params),
        idle_cpu_scenario(params),
        growth_scenario(params),
    ]
