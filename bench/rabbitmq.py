"""RabbitMQ scenarios against a raw aio-pika consume loop, on the machine's RabbitMQ in a vhost of
the run's own (``tests/faults/rabbithelp.py``; ``ROMEWAYS_TEST_RABBITMQ_URL`` names another
broker); listed as skipped when that cannot run here.

- drain: N persistent JSON orders already in a quorum queue; steady rate (first handled to
  last handled). Both sides with the same prefetch (400) and chunks of up to 100: ours through
  the worker (acks of finished prefixes), raw an aio-pika consumer feeding a deque, msgspec
  decode and an awaited handler per message, one ``multiple`` ack per chunk.
- latency: the consumer idle (longer than ``frequency``), then messages at 200/s, each
  carrying its send time; default settings on both sides.
- idle CPU: a worker process on an empty queue, after its start.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import Any

import msgspec

from romeways import App, Message

from ._harness import Measurement, Metric, Params, Scenario, Target, Variant, log
from .decode import Order, payloads

CONNECTOR = "bench-rabbitmq"
CHUNK = 100
PREFETCH = 4 * CHUNK  # romeways' default for max_chunk_size=100
LATENCY_RATE = 200.0
IDLE_BEFORE_RUN = 1.5  # seconds: more than the default frequency (1 s)
WAIT_LIMIT = 300.0


class Stamp(msgspec.Struct, frozen=True):
    """A latency probe: its number and when it was sent (perf_counter, same host)."""

    i: int
    sent: float


def unavailable() -> str | None:
    """Why the RabbitMQ scenarios cannot run here, or None when they can."""
    try:
        import aio_pika  # noqa: F401

        from romeways.connectors import rabbitmq  # noqa: F401
        from tests.faults import rabbithelp  # noqa: F401
    except ImportError as exc:
        return f"the RabbitMQ connector or tests/faults/rabbithelp.py cannot be imported ({exc})"
    try:
        asyncio.run(_ping(VHOST.url))
    except Exception as exc:
        return f"no RabbitMQ to run against ({type(exc).__name__}: {exc})"
    return None


async def _ping(url: str) -> None:
    import aio_pika

    connection = await asyncio.wait_for(aio_pika.connect(url), 5)
    await connection.close()


class _Vhost:
    """The run's vhost, made on first use and removed by ``stop()``."""

    def __init__(self) -> None:
        self._vhost: Any = None

    @property
    def url(self) -> str:
        if self._vhost is None:
            from tests.faults.rabbithelp import Vhost

            self._vhost = Vhost()
        url: str = self._vhost.url
        return url

    def stop(self) -> None:
        if self._vhost is not None:
            self._vhost.close()
            self._vhost = None


VHOST = _Vhost()


def _fresh_queue(prefix: str) -> str:
    from tests.faults.rabbithelp import declare, unique_queue

    queue = unique_queue(prefix)
    asyncio.run(declare(VHOST.url, queue))
    return queue


def _delete(queue: str) -> None:
    from tests.faults.rabbithelp import delete_queue

    asyncio.run(delete_queue(VHOST.url, queue))


async def _publish_all(queue: str, values: list[bytes]) -> None:
    """Publish persistent messages with confirms, many in flight at once."""
    import aio_pika

    connection = await aio_pika.connect(VHOST.url)
    try:
        channel = await connection.channel()
        for start in range(0, len(values), 500):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(value, delivery_mode=2), routing_key=queue
                    )
                    for value in values[start : start + 500]
                )
            )
    finally:
        await connection.close()


def _queue_of_orders(n: int) -> str:
    queue = _fresh_queue("bench-orders")
    started = time.perf_counter()
    asyncio.run(_publish_all(queue, payloads(n)))
    log(f"  (published {n:,} orders to {queue} at {n / (time.perf_counter() - started):,.0f}/s)")
    return queue


def _app(queue: str, handler: Any, *, spawn: bool = False, **queue_options: Any) -> App:
    from romeways import RabbitMQConnectorConfig, RabbitMQQueueConfig, RabbitMQQueueConnector

    app = App(shutdown_timeout=10.0)
    config = RabbitMQQueueConfig(connector_name=CONNECTOR, queue=queue, **queue_options)
    app.queue_consumer(queue_name="bench", config=config)(handler)
    app.connector_register(
        connector=RabbitMQQueueConnector,
        config=RabbitMQConnectorConfig(connector_name=CONNECTOR, url=VHOST.url),
        spawn_process=spawn,
    )
    return app


async def _run_until(app: App, done: asyncio.Event, what: str) -> None:
    runner = asyncio.create_task(app.start())
    waiter = asyncio.create_task(done.wait())
    try:
        await asyncio.wait([runner, waiter], timeout=WAIT_LIMIT, return_when="FIRST_COMPLETED")
    finally:
        waiter.cancel()
        app.stop()
        await runner
    if not done.is_set():
        raise TimeoutError(f"{what} did not finish within {WAIT_LIMIT:.0f}s")


# --- drain -----------------------------------------------------------------------------------


def ours_drain(n: int) -> Measurement:
    queue = _queue_of_orders(n)
    count = 0
    first = last = 0.0
    done = asyncio.Event()

    async def handle(message: Message[Order]) -> None:
        nonlocal count, first, last
        count += 1
        if count == 1:
            first = time.perf_counter()
        if count == n:
            last = time.perf_counter()
            done.set()

    async def main() -> None:
        app = _app(queue, handle, max_chunk_size=CHUNK)
        await _run_until(app, done, "romeways RabbitMQ drain")

    try:
        asyncio.run(main())
    finally:
        _delete(queue)
    return {"steady": (n - 1) / (last - first)}


def raw_drain(n: int) -> Measurement:
    """An aio-pika consumer (prefetch 400) into a deque; chunks of up to 100: decode, await
    the handler, then one ``ack(multiple=True)`` of the chunk's last message."""
    import aio_pika

    queue_name = _queue_of_orders(n)
    decoder = msgspec.json.Decoder(Order)
    count = 0

    async def handle(order: Order) -> None:
        nonlocal count
        count += 1

    async def main() -> Measurement:
        connection = await aio_pika.connect(VHOST.url)
        first = 0.0
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            queue = await channel.declare_queue(
                queue_name, durable=True, arguments={"x-queue-type": "quorum"}
            )
            buffer: deque[aio_pika.abc.AbstractIncomingMessage] = deque()
            arrived = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                buffer.append(message)
                arrived.set()

            await queue.consume(on_message)
            deadline = time.monotonic() + WAIT_LIMIT
            while count < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw RabbitMQ drain stuck at {count:,} of {n:,}")
                if not buffer:
                    arrived.clear()
                    await arrived.wait()
                    continue
                chunk = [buffer.popleft() for _ in range(min(CHUNK, len(buffer)))]
                for message in chunk:
                    await handle(decoder.decode(message.body))
                    if count == 1:
                        first = time.perf_counter()
                await chunk[-1].ack(multiple=True)
            last = time.perf_counter()
        finally:
            await connection.close()
        return {"steady": (n - 1) / (last - first)}

    try:
        return asyncio.run(main())
    finally:
        _delete(queue_name)


# --- latency ---------------------------------------------------------------------------------


async def _produce_paced(queue: str, count: int, rate: float, ready: Any) -> None:
    """Wait for ``ready`` (the consumer saw a warm-up probe), idle a while, then ``count``
    stamps at ``rate``/s, each published (confirmed) as it is stamped."""
    import aio_pika

    connection = await aio_pika.connect(VHOST.url)
    encoder = msgspec.json.Encoder()
    try:
        channel = await connection.channel()
        exchange = channel.default_exchange
        deadline = time.monotonic() + WAIT_LIMIT
        while not ready.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError("the consumer never saw a warm-up probe")
            await exchange.publish(
                aio_pika.Message(encoder.encode(Stamp(i=-1, sent=0.0))), routing_key=queue
            )
            await asyncio.sleep(0.5)
        await asyncio.sleep(IDLE_BEFORE_RUN)
        start = time.perf_counter() + 0.01
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            body = encoder.encode(Stamp(i=i, sent=time.perf_counter()))
            await exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key=queue)
    finally:
        await connection.close()


def _stats(latencies: list[float]) -> Measurement:
    from .memory import _latency_stats

    return _latency_stats(latencies)


def ours_latency(count: int, rate: float) -> Measurement:
    queue = _fresh_queue("bench-latency")
    latencies: list[float] = []
    ready = asyncio.Event()
    done = asyncio.Event()

    async def handle(message: Message[Stamp]) -> None:
        stamp = message.payload
        if stamp.i < 0:
            ready.set()
            return
        latencies.append(time.perf_counter() - stamp.sent)
        if len(latencies) == count:
            done.set()

    async def main() -> None:
        app = _app(queue, handle)
        producer = asyncio.create_task(_produce_paced(queue, count, rate, ready))
        await _run_until(app, done, "romeways RabbitMQ latency run")
        await producer

    try:
        asyncio.run(main())
    finally:
        _delete(queue)
    return _stats(latencies)


def raw_latency(count: int, rate: float) -> Measurement:
    """An aio-pika consumer with the same prefetch as ours by default (40): decode, await the
    handler, ack each message."""
    import aio_pika

    queue_name = _fresh_queue("bench-latency")
    decoder = msgspec.json.Decoder(Stamp)
    latencies: list[float] = []

    async def main() -> None:
        ready = asyncio.Event()
        done = asyncio.Event()
        connection = await aio_pika.connect(VHOST.url)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=40)
            queue = await channel.declare_queue(
                queue_name, durable=True, arguments={"x-queue-type": "quorum"}
            )

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                stamp = decoder.decode(message.body)
                if stamp.i < 0:
                    ready.set()
                else:
                    latencies.append(time.perf_counter() - stamp.sent)
                    if len(latencies) == count:
                        done.set()
                await message.ack()

            await queue.consume(on_message)
            producer = asyncio.create_task(_produce_paced(queue_name, count, rate, ready))
            await asyncio.wait_for(done.wait(), WAIT_LIMIT)
            await producer
        finally:
            await connection.close()

    try:
        asyncio.run(main())
    finally:
        _delete(queue_name)
    return _stats(latencies)


# --- idle CPU --------------------------------------------------------------------------------


def ours_idle_cpu(seconds: float, *, warmup: float = 2.0) -> Measurement:
    """CPU of a worker process consuming an empty queue (default settings), after start-up."""
    from .memory import CTX, _cpu_percent_over

    queue = _fresh_queue("bench-idle")
    pid = CTX.Value("i", 0, lock=False)
    ready = CTX.Event()

    async def handle(message: Message) -> None:
        return None

    app = _app(queue, handle, spawn=True)

    @app.on_startup
    async def record_pid() -> None:
        pid.value = os.getpid()
        ready.set()

    async def main() -> float:
        runner = asyncio.create_task(app.start())
        try:
            if not await asyncio.to_thread(ready.wait, WAIT_LIMIT):
                raise TimeoutError("the RabbitMQ worker process did not start")
            await asyncio.sleep(warmup)
            return await asyncio.to_thread(_cpu_percent_over, pid.value, seconds)
        finally:
            app.stop()
            await runner

    try:
        return {"cpu": asyncio.run(main())}
    finally:
        _delete(queue)


# --- scenarios -------------------------------------------------------------------------------


def scenarios(params: Params) -> list[Scenario]:
    reason = unavailable()
    n = max(200, params.kafka_n // 10)
    count = min(params.latency_count, 1_000)
    raw = f"raw aio-pika consume, prefetch {PREFETCH}, multiple ack per chunk"
    raw_latency_name = "raw aio-pika consume, ack per message"
    seconds = params.idle_seconds
    return [
        Scenario(
            name=f"rabbitmq drain {n:,} (quorum, persistent)",
            metrics=[Metric("steady", "msg/s", target=Target("ratio", ">=", 0.8))],
            variants=[
                Variant(f"romeways max_chunk_size={CHUNK}", lambda: ours_drain(n), baseline=raw),
                Variant(raw, lambda: raw_drain(n), raw=True),
            ],
            skip=reason,
        ),
        Scenario(
            name=f"rabbitmq latency {count:,} msgs at {LATENCY_RATE:g}/s",
            metrics=[
                Metric("p50", "ms", 3),
                Metric("p99", "ms", 3, Target("value", "<=", 5.0)),
                Metric("max", "ms", 3),
            ],
            variants=[
                Variant(
                    "romeways defaults",
                    lambda: ours_latency(count, LATENCY_RATE),
                    baseline=raw_latency_name,
                ),
                Variant(raw_latency_name, lambda: raw_latency(count, LATENCY_RATE), raw=True),
            ],
            skip=reason,
        ),
        Scenario(
            name=f"rabbitmq idle CPU over {seconds:g}s",
            metrics=[Metric("cpu", "% of a core", 2, Target("value", "<=", 1.0))],
            variants=[Variant("romeways worker process, defaults", lambda: ours_idle_cpu(seconds))],
            skip=reason,
            reps=3,
        ),
    ]


def stop() -> None:
    VHOST.stop()
