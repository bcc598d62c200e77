"""NATS JetStream scenarios against a raw nats-py loop, on the shared server (127.0.0.1:4222, or
``ROMEWAYS_TEST_NATS_URL``), or a private ``nats-server -js`` when neither runs; listed as
skipped when nats-py or nats-server is missing.

- drain: N JSON orders already in a stream, consumed by a new durable pull consumer from the
  start; steady rate (first handled to last handled) and start-up. Ours with
  ``max_chunk_size=500`` and an ack per message (the connector's); raw: nats-py
  ``pull_subscribe`` + ``fetch(500)`` + ``msgspec`` decode + an awaited handler + ``ack()``.
- latency: the consumer idle for 1.5 s (past ``frequency``: ours waits in its lingering pull),
  then messages at a fixed rate, each carrying its send time; default settings on both sides
  (raw: ``fetch(10, timeout=1)`` in a loop).
- idle CPU: a worker process on an empty stream, after it connected.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from romeways import App, Message

from ._harness import Measurement, Metric, Params, Scenario, Target, Variant, log
from .decode import Order, payloads

ROOT = Path(__file__).resolve().parent.parent
CONNECTOR = "bench-nats"
IDLE_BEFORE_RUN = 1.5  # seconds: more than the default frequency (1 s), so ours is idle
WAIT_LIMIT = 300.0
MAX_DRAIN = 50_000


class Stamp(msgspec.Struct, frozen=True):
    """A latency probe: its number and when it was sent (perf_counter, same host)."""

    i: int
    sent: float


def _helpers() -> Any:
    """tests/faults/natshelp (servers, stream names), importable as the tests import it."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from faults import natshelp

    return natshelp


def unavailable() -> str | None:
    """Why the NATS scenarios cannot run here, or None when they can."""
    try:
        import nats  # noqa: F401

        from romeways.connectors import nats as connector  # noqa: F401

        helpers = _helpers()
    except ImportError as exc:
        return f"the NATS connector or its test helpers cannot be imported ({exc})"
    if helpers.shared_url() is None and not _has_server_binary():
        return "no JetStream server at 127.0.0.1:4222 and no nats-server to start one"
    return None


def _has_server_binary() -> bool:
    import shutil

    return shutil.which("nats-server") is not None


class _Server:
    """The server, found or started on first use; streams made here deleted by ``stop()``."""

    def __init__(self) -> None:
        self._url: str | None = None
        self._private: Any = None
        self._tmp: Any = None
        self._streams: list[str] = []
        self._orders: dict[int, str] = {}

    @property
    def url(self) -> str:
        if self._url is None:
            helpers = _helpers()
            url = helpers.shared_url()
            if url is None:
                import tempfile

                self._tmp = tempfile.TemporaryDirectory(prefix="bench-nats-")
                self._private = helpers.PrivateServer(Path(self._tmp.name)).start()
                url = self._private.url
            self._url = url
            atexit.register(self.stop)  # bench/__main__ stops only Kafka's broker itself
        return self._url

    def new_stream(self, prefix: str) -> tuple[str, str]:
        """A fresh stream name and its subject."""
        name = _helpers().unique_name(prefix).replace("-", "_")
        self._streams.append(name)
        asyncio.run(_add_stream(self.url, name, f"bench.{name}"))
        return name, f"bench.{name}"

    def stream_of_orders(self, n: int) -> tuple[str, str]:
        """A stream holding ``n`` JSON orders (made once per ``n``)."""
        if n not in self._orders:
            stream, subject = self.new_stream("BENCH_ORDERS")
            started = time.perf_counter()
            asyncio.run(_publish_all(self.url, stream, subject, payloads(n)))
            rate = n / (time.perf_counter() - started)
            log(f"  (published {n:,} orders to {stream} at {rate:,.0f} msg/s)")
            self._orders[n] = stream
        stream = self._orders[n]
        return stream, f"bench.{stream}"

    def stop(self) -> None:
        if self._url is not None and self._streams:
            try:
                asyncio.run(_helpers().delete_streams(self._url, self._streams))
            except Exception as exc:  # the server went away: nothing left to delete
                log(f"  (could not delete the bench streams: {exc})")
        self._streams.clear()
        self._orders.clear()
        if self._private is not None:
            self._private.kill()
            self._private = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._url = None


SERVER = _Server()


async def _add_stream(url: str, stream: str, subject: str) -> None:
    import nats

    client = await nats.connect(url)
    try:
        await client.jetstream().add_stream(name=stream, subjects=[subject])
    finally:
        await client.close()


async def _publish_all(url: str, stream: str, subject: str, values: list[bytes]) -> None:
    """Core-NATS publishes (the stream stores them), then wait until it holds them all."""
    import nats

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        for i in range(0, len(values), 1000):
            for value in values[i : i + 1000]:
                await client.publish(subject, value)
            await client.flush()
        deadline = time.monotonic() + WAIT_LIMIT
        while (await js.stream_info(stream)).state.messages < len(values):
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream {stream} never held {len(values):,} messages")
            await asyncio.sleep(0.05)
    finally:
        await client.close()


def _app(stream: str, subject: str, handler: Any, *, spawn: bool = False, **queue: Any) -> App:
    from romeways import NatsConnectorConfig, NatsQueueConfig, NatsQueueConnector

    app = App(shutdown_timeout=10.0)
    config = NatsQueueConfig(
        connector_name=CONNECTOR,
        stream=stream,
        subject=subject,
        durable=_helpers().unique_name("bench"),
        **queue,
    )
    app.queue_consumer(queue_name="bench", config=config)(handler)
    app.connector_register(
        connector=NatsQueueConnector,
        config=NatsConnectorConfig(connector_name=CONNECTOR, servers=SERVER.url),
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


def ours_drain(n: int, chunk: int) -> Measurement:
    stream, subject = SERVER.stream_of_orders(n)
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
        app = _app(stream, subject, handle, max_chunk_size=chunk)
        started = time.perf_counter()
        await _run_until(app, done, "romeways NATS drain")
        return started

    started = asyncio.run(main())
    return {"steady": (n - 1) / (last - first), "startup": first - started}


def raw_drain(n: int, chunk: int) -> Measurement:
    """nats-py ``pull_subscribe`` + ``fetch(chunk)`` + decode + an awaited handler + ack."""
    import nats
    import nats.errors

    stream, subject = SERVER.stream_of_orders(n)
    decoder = msgspec.json.Decoder(Order)
    count = 0

    async def handle(order: Order) -> None:
        nonlocal count
        count += 1

    async def main() -> Measurement:
        started = time.perf_counter()
        client = await nats.connect(SERVER.url)
        first = 0.0
        try:
            js = client.jetstream()
            sub = await js.pull_subscribe(
                subject, durable=_helpers().unique_name("bench-raw"), stream=stream
            )
            deadline = time.monotonic() + WAIT_LIMIT
            while count < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw NATS drain stuck at {count:,} of {n:,}")
                try:
                    msgs = await sub.fetch(chunk, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    await handle(decoder.decode(msg.data))
                    await msg.ack()
                    if count == 1:
                        first = time.perf_counter()
            last = time.perf_counter()
            await client.flush()
        finally:
            await client.close()
        return {"steady": (n - 1) / (last - first), "startup": first - started}

    return asyncio.run(main())


# --- latency ---------------------------------------------------------------------------------


def _produce_paced(subject: str, count: int, rate: float) -> None:
    """In its own thread and loop: ``count`` stamps at ``rate``/s, each published to
    JetStream (awaiting its PubAck) as it is stamped."""
    import nats

    async def main() -> None:
        client = await nats.connect(SERVER.url)
        encoder = msgspec.json.Encoder()
        try:
            js = client.jetstream()
            start = time.perf_counter() + 0.01
            for i in range(count):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await js.publish(subject, encoder.encode(Stamp(i=i, sent=time.perf_counter())))
        finally:
            await client.close()

    asyncio.run(main())


def _produce_after_warmup(
    subject: str, count: int, rate: float, joined: asyncio.Event | threading.Event
) -> None:
    """A warm-up probe (i=-1) until the consumer saw one, idle, then the paced run."""
    deadline = time.monotonic() + WAIT_LIMIT
    while not joined.is_set():
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer never saw a warm-up probe")
        _produce_probe(subject)
        for _ in range(20):
            if joined.is_set():
                break
            time.sleep(0.1)
    time.sleep(IDLE_BEFORE_RUN)
    _produce_paced(subject, count, rate)


def _produce_probe(subject: str) -> None:
    import nats

    async def main() -> None:
        client = await nats.connect(SERVER.url)
        try:
            await client.jetstream().publish(subject, msgspec.json.encode(Stamp(i=-1, sent=0.0)))
        finally:
            await client.close()

    asyncio.run(main())


def _latency_stats(latencies: list[float]) -> Measurement:
    from .memory import _latency_stats as stats

    return stats(latencies)


def ours_latency(count: int, rate: float) -> Measurement:
    stream, subject = SERVER.new_stream("BENCH_LATENCY")
    latencies: list[float] = []
    joined = asyncio.Event()
    done = asyncio.Event()

    async def handle(message: Message[Stamp]) -> None:
        stamp = message.payload
        if stamp.i < 0:
            joined.set()
            return
        latencies.append(time.perf_counter() - stamp.sent)
        if len(latencies) == count:
            done.set()

    async def main() -> None:
        app = _app(stream, subject, handle)
        runner = asyncio.create_task(_run_until(app, done, "romeways NATS latency run"))
        await asyncio.to_thread(_produce_after_warmup, subject, count, rate, joined)
        await runner

    asyncio.run(main())
    return _latency_stats(latencies)


def raw_latency(count: int, rate: float) -> Measurement:
    """nats-py ``fetch(10, timeout=1)`` in a loop, decode, an awaited handler, ack."""
    import nats
    import nats.errors

    stream, subject = SERVER.new_stream("BENCH_LATENCY")
    decoder = msgspec.json.Decoder(Stamp)
    latencies: list[float] = []
    joined = threading.Event()

    async def handle(stamp: Stamp) -> None:
        if stamp.i < 0:
            joined.set()
            return
        latencies.append(time.perf_counter() - stamp.sent)

    async def main() -> None:
        client = await nats.connect(SERVER.url)
        try:
            js = client.jetstream()
            sub = await js.pull_subscribe(
                subject, durable=_helpers().unique_name("bench-raw"), stream=stream
            )
            producer = asyncio.create_task(
                asyncio.to_thread(_produce_after_warmup, subject, count, rate, joined)
            )
            deadline = time.monotonic() + WAIT_LIMIT
            while len(latencies) < count:
                if time.monotonic() > deadline or (producer.done() and producer.exception()):
                    raise TimeoutError(f"raw NATS latency run stuck at {len(latencies)}")
                try:
                    msgs = await sub.fetch(10, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                for msg in msgs:
                    await handle(decoder.decode(msg.data))
                    await msg.ack()
            await producer
        finally:
            await client.close()

    asyncio.run(main())
    return _latency_stats(latencies)


# --- idle CPU --------------------------------------------------------------------------------


def ours_idle_cpu(seconds: float) -> Measurement:
    """CPU of a worker process consuming an empty stream, after it connected."""
    from .memory import CTX, _cpu_percent_over

    stream, subject = SERVER.new_stream("BENCH_IDLE")
    pid = CTX.Value("i", 0, lock=False)
    ready = CTX.Event()

    async def handle(message: Message) -> None:
        return None

    app = _app(stream, subject, handle, spawn=True)

    @app.on_startup
    async def record_pid() -> None:
        pid.value = os.getpid()
        ready.set()

    async def main() -> float:
        runner = asyncio.create_task(app.start())
        try:
            if not await asyncio.to_thread(ready.wait, WAIT_LIMIT):
                raise TimeoutError("the NATS worker process did not start")
            await asyncio.sleep(2.0)  # connected, its first probe done
            return await asyncio.to_thread(_cpu_percent_over, pid.value, seconds)
        finally:
            app.stop()
            await runner

    return {"cpu": asyncio.run(main())}


# --- scenarios -------------------------------------------------------------------------------


def scenarios(params: Params) -> list[Scenario]:
    reason = unavailable()
    n = min(params.kafka_n, MAX_DRAIN)
    count, rate = params.latency_count, params.latency_rate
    raw = "raw nats-py fetch(500) + ack()"
    result = [
        Scenario(
            name=f"nats drain {n:,}",
            metrics=[
                Metric("steady", "msg/s", target=Target("ratio", ">=", 0.8)),
                Metric("startup", "s", 2),
            ],
            variants=[
                Variant("romeways max_chunk_size=500", lambda: ours_drain(n, 500), baseline=raw),
                Variant(raw, lambda: raw_drain(n, 500), raw=True),
            ],
            skip=reason,
        )
    ]
    raw = "raw nats-py fetch(10, timeout=1) + ack()"
    result.append(
        Scenario(
            name=f"nats latency {count:,} msgs at {rate:g}/s",
            metrics=[
                Metric("p50", "ms", 3),
                Metric("p99", "ms", 3, Target("value", "<=", 5.0)),
                Metric("max", "ms", 3),
            ],
            variants=[
                Variant("romeways defaults", lambda: ours_latency(count, rate), baseline=raw),
                Variant(raw, lambda: raw_latency(count, rate), raw=True),
            ],
            skip=reason,
        )
    )
    seconds = params.idle_seconds
    result.append(
        Scenario(
            name=f"nats idle CPU over {seconds:g}s",
            metrics=[Metric("cpu", "% of a core", 2, Target("value", "<=", 1.0))],
            variants=[Variant("romeways worker process, defaults", lambda: ours_idle_cpu(seconds))],
            skip=reason,
            reps=3,
        )
    )
    return result


def stop() -> None:
    SERVER.stop()
