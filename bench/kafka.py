"""Kafka scenarios against a raw aiokafka loop, on the Tansu broker that ``tests/broker.py``
starts (or the broker ``ROMEWAYS_TEST_KAFKA=host:port`` names); listed as skipped when that
cannot run here.

- drain: N JSON orders pre-produced to a topic of 1 and of 3 partitions, consumed from the start
  by a new group; steady rate (first handled to last handled) apart from start-up (start to
  first handled: group join and first fetch). Ours with at-least-once commits, raw with
  aiokafka's auto-commit.
- batch drain: the same drain (1 partition) into a batch handler (``batch_consumer``, one call
  per chunk of up to 500, as a bulk insert would take them), beside the raw loop doing the same:
  ``getmany(500)``, decode, one awaited handler call per batch.
- latency: the consumer joined and idle (longer than ``frequency``, so ours fetches with its
  idle wait), then messages at a fixed rate, each carrying its send time; default settings on
  both sides, and ours with both fetch waits at 500 ms (the old defaults, no adaptive wait);
  the raw loop also with a 10 ms and a 5 ms fetch wait, which shows the broker's floor.
- idle CPU: a worker process on an empty topic after its group join; the same two settings.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import msgspec

from romeways import App, Batch, Message

from ._harness import Measurement, Metric, Params, Scenario, Target, Variant, log
from .decode import Order, payloads

CONNECTOR = "bench-kafka"
# Both fetch waits at aiokafka's default: romeways' defaults before the adaptive wait.
FIXED_WAITS: dict[str, Any] = {"fetch_max_wait_ms": 500, "idle_fetch_max_wait_ms": 500}
FIXED_NAME = "fetch waits 500/500 (old defaults)"
IDLE_BEFORE_RUN = 1.5  # seconds: more than the default frequency (1 s), so ours is idle
WAIT_LIMIT = 300.0


class Stamp(msgspec.Struct, frozen=True):
    """A latency probe: its number and when it was sent (perf_counter, same host)."""

    i: int
    sent: float


def unavailable() -> str | None:
    """Why the Kafka scenarios cannot run here, or None when they can."""
    try:
        import aiokafka  # noqa: F401

        from romeways.connectors import kafka  # noqa: F401
        from tests import broker  # noqa: F401
    except ImportError as exc:
        return f"the Kafka connector or tests/broker.py cannot be imported ({exc})"
    return None


class _Cluster:
    """The broker, started on first use and stopped by ``stop()``; topics produced once."""

    def __init__(self) -> None:
        self._broker: Any = None
        self._topics: dict[tuple[int, int], str] = {}

    @property
    def bootstrap(self) -> str:
        if self._broker is None:
            from tests.broker import start_broker

            self._broker = start_broker()
        bootstrap: str = self._broker.bootstrap
        return bootstrap

    def topic_of_orders(self, n: int, partitions: int) -> str:
        """A topic holding ``n`` JSON orders spread round-robin over ``partitions``."""
        key = (n, partitions)
        if key not in self._topics:
            from tests.broker import unique_name

            topic = unique_name(f"bench-orders-{partitions}p")
            started = time.perf_counter()
            asyncio.run(_produce_all(self.bootstrap, topic, payloads(n), partitions))
            rate = n / (time.perf_counter() - started)
            log(f"  (produced {n:,} orders to {topic} at {rate:,.0f} msg/s)")
            self._topics[key] = topic
        return self._topics[key]

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()
            self._broker = None


CLUSTER = _Cluster()


async def _produce_all(bootstrap: str, topic: str, values: list[bytes], partitions: int) -> None:
    from aiokafka import AIOKafkaProducer

    from tests.broker import create_topic

    await create_topic(bootstrap, topic, partitions)
    producer: Any = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, value, partition=i % partitions)
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


def _app(
    topic: str, handler: Any, *, spawn: bool = False, batch: bool = False, **queue_options: Any
) -> App:
    from romeways import KafkaConnectorConfig, KafkaQueueConfig, KafkaQueueConnector
    from tests.broker import unique_name

    app = App(shutdown_timeout=10.0)
    config = KafkaQueueConfig(
        connector_name=CONNECTOR, topic=topic, group_id=unique_name("bench"), **queue_options
    )
    consumer = app.batch_consumer if batch else app.queue_consumer
    consumer(queue_name="bench", config=config)(handler)
    app.connector_register(
        connector=KafkaQueueConnector,
        config=KafkaConnectorConfig(connector_name=CONNECTOR, bootstrap_server=CLUSTER.bootstrap),
        spawn_process=spawn,
    )
    return app


async def _run_until(app: App, done: asyncio.Event, what: str) -> None:
    """Run ``app`` until ``done`` is set; fail if it stops first or takes too long."""
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


def ours_drain(n: int, partitions: int, chunk: int) -> Measurement:
    topic = CLUSTER.topic_of_orders(n, partitions)
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

    async def main() -> float:
        app = _app(topic, handle, max_chunk_size=chunk)
        started = time.perf_counter()
        await _run_until(app, done, "romeways Kafka drain")
        return started

    started = asyncio.run(main())
    return {"steady": (n - 1) / (last - first), "startup": first - started}


def raw_drain(n: int, partitions: int) -> Measurement:
    """aiokafka ``getmany(max_records=500)`` + ``msgspec.json.decode`` + an awaited handler,
    with auto-commit."""
    from aiokafka import AIOKafkaConsumer

    from tests.broker import unique_name

    topic = CLUSTER.topic_of_orders(n, partitions)
    decoder = msgspec.json.Decoder(Order)
    count = 0

    async def handle(order: Order) -> None:
        nonlocal count
        count += 1

    async def main() -> Measurement:
        started = time.perf_counter()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=CLUSTER.bootstrap,
            group_id=unique_name("bench-raw"),
            auto_offset_reset="earliest",
            enable_auto_commit=True,
        )
        await consumer.start()
        first = 0.0
        try:
            deadline = time.monotonic() + WAIT_LIMIT
            while count < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw Kafka drain stuck at {count:,} of {n:,}")
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                for records in batch.values():
                    for record in records:
                        await handle(decoder.decode(record.value or b""))
                        if count == 1:
                            first = time.perf_counter()
            last = time.perf_counter()
        finally:
            await consumer.stop()
        return {"steady": (n - 1) / (last - first), "startup": first - started}

    return asyncio.run(main())


def ours_batch_drain(n: int, partitions: int, chunk: int) -> Measurement:
    """The drain into ``async def handle(batch: Batch[Order])``: one call per chunk."""
    topic = CLUSTER.topic_of_orders(n, partitions)
    count = 0
    first = last = 0.0
    done = asyncio.Event()

    async def handle(batch: Batch[Order]) -> None:
        nonlocal count, first, last
        if count == 0:
            first = time.perf_counter()
        count += len(batch.payloads)
        if count >= n:
            last = time.perf_counter()
            done.set()

    async def main() -> float:
        app = _app(topic, handle, batch=True, max_chunk_size=chunk)
        started = time.perf_counter()
        await _run_until(app, done, "romeways Kafka batch drain")
        return started

    started = asyncio.run(main())
    return {"steady": (n - 1) / (last - first), "startup": first - started}


def raw_batch_drain(n: int, partitions: int) -> Measurement:
    """aiokafka ``getmany(max_records=500)``, ``msgspec.json.decode`` of each record and one
    awaited handler call per batch, with auto-commit."""
    from aiokafka import AIOKafkaConsumer

    from tests.broker import unique_name

    topic = CLUSTER.topic_of_orders(n, partitions)
    decoder = msgspec.json.Decoder(Order)
    count = 0

    async def handle(orders: list[Order]) -> None:
        nonlocal count
        count += len(orders)

    async def main() -> Measurement:
        started = time.perf_counter()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=CLUSTER.bootstrap,
            group_id=unique_name("bench-raw"),
            auto_offset_reset="earliest",
            enable_auto_commit=True,
        )
        await consumer.start()
        first = 0.0
        try:
            deadline = time.monotonic() + WAIT_LIMIT
            while count < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw Kafka batch drain stuck at {count:,} of {n:,}")
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                for records in batch.values():
                    if count == 0 and records:
                        first = time.perf_counter()
                    await handle([decoder.decode(record.value or b"") for record in records])
            last = time.perf_counter()
        finally:
            await consumer.stop()
        return {"steady": (n - 1) / (last - first), "startup": first - started}

    return asyncio.run(main())


# --- latency ---------------------------------------------------------------------------------


def _produce_paced(topic: str, count: int, rate: float) -> None:
    """In its own thread and loop: ``count`` stamps at ``rate``/s, each sent as it is stamped."""

    async def main() -> None:
        from aiokafka import AIOKafkaProducer

        producer: Any = AIOKafkaProducer(bootstrap_servers=CLUSTER.bootstrap, acks=1, linger_ms=0)
        await producer.start()
        encoder = msgspec.json.Encoder()
        try:
            sent = []
            start = time.perf_counter() + 0.01
            for i in range(count):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                stamp = Stamp(i=i, sent=time.perf_counter())
                sent.append(await producer.send(topic, encoder.encode(stamp)))
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    asyncio.run(main())


def _fresh_topic() -> str:
    from tests.broker import create_topic, unique_name

    topic = unique_name("bench-latency")
    asyncio.run(create_topic(CLUSTER.bootstrap, topic, 1))
    return topic


def _latency_stats(latencies: list[float]) -> Measurement:
    from .memory import _latency_stats as stats

    return stats(latencies)


def ours_latency(count: int, rate: float, **queue_options: Any) -> Measurement:
    topic = _fresh_topic()
    latencies: list[float] = []
    joined = asyncio.Event()
    done = asyncio.Event()

    async def handle(message: Message[Stamp]) -> None:
        stamp = message.payload
        if stamp.i < 0:  # the warm-up probe: the consumer has joined and fetches
            joined.set()
            return
        latencies.append(time.perf_counter() - stamp.sent)
        if len(latencies) == count:
            done.set()

    async def main() -> None:
        app = _app(topic, handle, **queue_options)
        runner = asyncio.create_task(_run_until(app, done, "romeways Kafka latency run"))
        await asyncio.to_thread(_produce_paced_after_warmup, topic, count, rate, joined)
        await runner

    asyncio.run(main())
    return _latency_stats(latencies)


def _produce_paced_after_warmup(
    topic: str, count: int, rate: float, joined: asyncio.Event | threading.Event
) -> None:
    """Send a warm-up probe (i=-1) until the consumer saw one, then the paced run."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not joined.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer never saw a warm-up probe")
        _send_probe(topic)
        for _ in range(20):
            if joined.is_set():
                break
            time.sleep(0.1)
    time.sleep(IDLE_BEFORE_RUN)  # idle, as the scenario says, before the run
    _produce_paced(topic, count, rate)


def _send_probe(topic: str) -> None:
    async def main() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=CLUSTER.bootstrap, acks=1)
        await producer.start()
        try:
            await producer.send_and_wait(topic, msgspec.json.encode(Stamp(i=-1, sent=0.0)))
        finally:
            await producer.stop()

    asyncio.run(main())


def raw_latency(count: int, rate: float, **consumer_options: Any) -> Measurement:
    """aiokafka ``getmany()`` with default settings (or ``consumer_options``), decode, an
    awaited handler."""
    from aiokafka import AIOKafkaConsumer

    from tests.broker import unique_name

    topic = _fresh_topic()
    decoder = msgspec.json.Decoder(Stamp)
    latencies: list[float] = []
    joined = threading.Event()

    async def handle(stamp: Stamp) -> None:
        if stamp.i < 0:
            joined.set()
            return
        latencies.append(time.perf_counter() - stamp.sent)

    async def main() -> None:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=CLUSTER.bootstrap,
            group_id=unique_name("bench-raw"),
            auto_offset_reset="earliest",
            **consumer_options,
        )
        await consumer.start()
        producer = asyncio.create_task(
            asyncio.to_thread(_produce_paced_after_warmup, topic, count, rate, joined)
        )
        try:
            deadline = time.monotonic() + WAIT_LIMIT
            while len(latencies) < count:
                if time.monotonic() > deadline or (producer.done() and producer.exception()):
                    raise TimeoutError(f"raw Kafka latency run stuck at {len(latencies)}")
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        await handle(decoder.decode(record.value or b""))
            await producer
        finally:
            await consumer.stop()

    asyncio.run(main())
    return _latency_stats(latencies)


# --- idle CPU --------------------------------------------------------------------------------


def ours_idle_cpu(seconds: float, *, join_wait: float = 8.0, **queue_options: Any) -> Measurement:
    """CPU of a worker process consuming an empty topic, after its group join."""
    from .memory import CTX, _cpu_percent_over

    topic = _fresh_topic()
    pid = CTX.Value("i", 0, lock=False)
    ready = CTX.Event()

    async def handle(message: Message) -> None:
        return None

    app = _app(topic, handle, spawn=True, **queue_options)

    @app.on_startup
    async def record_pid() -> None:
        pid.value = os.getpid()
        ready.set()

    async def main() -> float:
        runner = asyncio.create_task(app.start())
        try:
            if not await asyncio.to_thread(ready.wait, WAIT_LIMIT):
                raise TimeoutError("the Kafka worker process did not start")
            await asyncio.sleep(join_wait)
            return await asyncio.to_thread(_cpu_percent_over, pid.value, seconds)
        finally:
            app.stop()
            await runner

    return {"cpu": asyncio.run(main())}


# --- scenarios -------------------------------------------------------------------------------


def scenarios(params: Params) -> list[Scenario]:
    reason = unavailable()
    n = params.kafka_n
    count, rate = params.latency_count, params.latency_rate
    steady = Metric("steady", "msg/s", target=Target("ratio", ">=", 0.8))
    startup = Metric("startup", "s", 2)

    def ours(partitions: int) -> Callable[[], Measurement]:
        return lambda: ours_drain(n, partitions, 500)

    def raw_of(partitions: int) -> Callable[[], Measurement]:
        return lambda: raw_drain(n, partitions)

    result = []
    for partitions in (1, 3):
        raw = "raw aiokafka getmany(500), auto-commit"
        result.append(
            Scenario(
                name=f"kafka drain {n:,} ({partitions} partition{'s' if partitions > 1 else ''})",
                metrics=[steady, startup],
                variants=[
                    Variant("romeways max_chunk_size=500", ours(partitions), baseline=raw),
                    Variant(raw, raw_of(partitions), raw=True),
                ],
                skip=reason,
            )
        )
    raw = "raw aiokafka getmany(500), one handler call per batch, auto-commit"
    result.append(
        Scenario(
            name=f"kafka batch drain {n:,} (1 partition)",
            metrics=[steady, startup],
            variants=[
                Variant(
                    "romeways batch_consumer max_chunk_size=500",
                    lambda: ours_batch_drain(n, 1, 500),
                    baseline=raw,
                ),
                Variant(raw, lambda: raw_batch_drain(n, 1), raw=True),
            ],
            skip=reason,
        )
    )
    raw = "raw aiokafka getmany(), defaults"
    result.append(
        Scenario(
            name=f"kafka latency {count:,} msgs at {rate:g}/s",
            metrics=[
                Metric("p50", "ms", 3),
                Metric("p99", "ms", 3, Target("value", "<=", 10.0)),
                Metric("max", "ms", 3),
            ],
            variants=[
                Variant("romeways defaults", lambda: ours_latency(count, rate), baseline=raw),
                Variant(
                    f"romeways {FIXED_NAME}",
                    lambda: ours_latency(count, rate, **FIXED_WAITS),
                    baseline=raw,
                ),
                Variant(raw, lambda: raw_latency(count, rate), raw=True),
                # The broker's floor: the hand-written loop with romeways' active wait, and half.
                *(
                    Variant(
                        f"raw aiokafka getmany(), fetch_max_wait_ms={wait}",
                        partial(raw_latency, count, rate, fetch_max_wait_ms=wait),
                        raw=True,
                    )
                    for wait in (10, 5)
                ),
            ],
            skip=reason,
        )
    )
    seconds = params.idle_seconds
    result.append(
        Scenario(
            name=f"kafka idle CPU over {seconds:g}s",
            metrics=[Metric("cpu", "% of a core", 2, Target("value", "<=", 2.0))],
            variants=[
                Variant("romeways worker process, defaults", lambda: ours_idle_cpu(seconds)),
                Variant(
                    f"romeways worker process, {FIXED_NAME}",
                    lambda: ours_idle_cpu(seconds, **FIXED_WAITS),
                ),
            ],
            skip=reason,
            reps=3,
        )
    )
    return result


def stop() -> None:
    CLUSTER.stop()
