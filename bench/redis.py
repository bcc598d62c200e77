"""Redis Streams scenarios against a raw redis-py + hiredis XREADGROUP/XACK loop, on a private
``redis-server`` this module starts on a free 127.0.0.1 port (no persistence; or the server
``ROMEWAYS_BENCH_REDIS_URL`` names); listed as skipped when neither can run here.

- drain: N JSON orders added to a stream beforehand, read from the start by a new consumer
  group; steady rate (first handled to last handled) apart from start-up. Both sides read
  chunks of 500 and decode with msgspec; ours acknowledges each chunk with its next read, the
  raw loop awaits an XACK per chunk.
- latency: the consumer idle for 1.5 s (past ``frequency``, in a blocking read), then messages
  at a fixed rate, each carrying its send time; default settings.
- idle CPU: a worker process on an empty stream.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any

import msgspec

from romeways import App, Message

from ._harness import Measurement, Metric, Params, Scenario, Target, Variant, log
from .decode import Order, payloads

ENV_VAR = "ROMEWAYS_BENCH_REDIS_URL"
CONNECTOR = "bench-redis"
CHUNK = 500
IDLE_BEFORE_RUN = 1.5
WAIT_LIMIT = 300.0


class Stamp(msgspec.Struct, frozen=True):
    """A latency probe: its number and when it was sent (perf_counter, same host)."""

    i: int
    sent: float


def unavailable() -> str | None:
    """Why the Redis scenarios cannot run here, or None when they can."""
    try:
        import redis  # noqa: F401

        from romeways.connectors import redis as connector  # noqa: F401
    except ImportError as exc:
        return f"the Redis connector cannot be imported ({exc})"
    if not os.environ.get(ENV_VAR) and shutil.which("redis-server") is None:
        return f"redis-server is not installed and {ENV_VAR} is not set"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Server:
    """The private server, started on first use and stopped by ``stop()``; streams made once."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._url: str | None = None
        self._streams: dict[int, str] = {}

    @property
    def url(self) -> str:
        if self._url is None:
            external = os.environ.get(ENV_VAR, "").strip()
            if external:
                self._url = external
            else:
                port = _free_port()
                self._dir = tempfile.mkdtemp(prefix="romeways-bench-redis-")
                command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
                command += ["--save", "", "--appendonly", "no", "--dir", self._dir]
                self._proc = subprocess.Popen(
                    [*command, "--loglevel", "warning"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                self._url = f"redis://127.0.0.1:{port}/0"
                _wait_until_up(port)
        return self._url

    def stream_of_orders(self, n: int) -> str:
        """A stream holding ``n`` JSON orders (each run reads it with a group of its own)."""
        if n not in self._streams:
            import redis

            name = f"bench-orders-{uuid.uuid4().hex[:8]}"
            started = time.perf_counter()
            with redis.Redis.from_url(self.url) as client:
                values = payloads(n)
                for at in range(0, n, 1000):
                    pipe = client.pipeline(transaction=False)
                    for value in values[at : at + 1000]:
                        pipe.xadd(name, {b"data": value})
                    pipe.execute()
            rate = n / (time.perf_counter() - started)
            log(f"  (added {n:,} orders to {name} at {rate:,.0f} msg/s)")
            self._streams[n] = name
        return self._streams[n]

    def stop(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
            self._proc = None
        elif self._url is not None and self._streams:
            import redis

            with redis.Redis.from_url(self._url) as client:
                client.delete(*self._streams.values())
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._url = None
        self._streams.clear()


def _wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError("the bench redis-server did not start") from None
            time.sleep(0.02)


SERVER = _Server()


def _app(stream: str, handler: Any, *, spawn: bool = False, **queue_options: Any) -> App:
    from romeways import RedisConnectorConfig, RedisQueueConfig, RedisQueueConnector

    app = App(shutdown_timeout=10.0)
    config = RedisQueueConfig(
        connector_name=CONNECTOR,
        stream=stream,
        group=f"bench-{uuid.uuid4().hex[:8]}",
        **queue_options,
    )
    app.queue_consumer(queue_name="bench", config=config)(handler)
    app.connector_register(
        connector=RedisQueueConnector,
        config=RedisConnectorConfig(connector_name=CONNECTOR, url=SERVER.url),
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
    stream = SERVER.stream_of_orders(n)
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
        app = _app(stream, handle, max_chunk_size=CHUNK)
        started = time.perf_counter()
        await _run_until(app, done, "romeways Redis drain")
        return started

    started = asyncio.run(main())
    return {"steady": (n - 1) / (last - first), "startup": first - started}


def raw_drain(n: int) -> Measurement:
    """redis-py asyncio (hiredis parser) XREADGROUP COUNT 500 + ``msgspec.json.decode`` + an
    awaited handler + an awaited XACK of the chunk."""
    import redis.asyncio as aioredis

    stream = SERVER.stream_of_orders(n)
    decoder = msgspec.json.Decoder(Order)
    count = 0

    async def handle(order: Order) -> None:
        nonlocal count
        count += 1

    async def main() -> Measurement:
        started = time.perf_counter()
        client = aioredis.Redis.from_url(SERVER.url)
        group = f"bench-raw-{uuid.uuid4().hex[:8]}"
        await client.xgroup_create(stream, group, id="0", mkstream=True)
        first = 0.0
        try:
            deadline = time.monotonic() + WAIT_LIMIT
            while count < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw Redis drain stuck at {count:,} of {n:,}")
                reply = await client.xreadgroup(
                    group, "raw", {stream: ">"}, count=CHUNK, block=1000
                )
                if not reply:
                    continue
                entries = reply[0][1]
                for _, fields in entries:
                    await handle(decoder.decode(fields[b"data"]))
                    if count == 1:
                        first = time.perf_counter()
                await client.xack(stream, group, *(entry_id for entry_id, _ in entries))
            last = time.perf_counter()
        finally:
            await client.aclose()
        return {"steady": (n - 1) / (last - first), "startup": first - started}

    return asyncio.run(main())


# --- latency ---------------------------------------------------------------------------------


def _produce_paced(stream: str, count: int, rate: float, joined: threading.Event) -> None:
    """In a thread: a warm-up probe until the consumer saw one, an idle pause, then ``count``
    stamps at ``rate``/s, each added as it is stamped."""
    import redis

    encoder = msgspec.json.Encoder()
    with redis.Redis.from_url(SERVER.url) as client:
        deadline = time.monotonic() + WAIT_LIMIT
        while not joined.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError("the consumer never saw a warm-up probe")
            client.xadd(stream, {b"data": encoder.encode(Stamp(i=-1, sent=0.0))})
            joined.wait(0.5)
        time.sleep(IDLE_BEFORE_RUN)
        start = time.perf_counter() + 0.01
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            client.xadd(stream, {b"data": encoder.encode(Stamp(i=i, sent=time.perf_counter()))})


def _latency_stats(latencies: list[float]) -> Measurement:
    from .memory import _latency_stats as stats

    return stats(latencies)


def ours_latency(count: int, rate: float) -> Measurement:
    stream = f"bench-latency-{uuid.uuid4().hex[:8]}"
    latencies: list[float] = []
    joined = threading.Event()
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
        app = _app(stream, handle)
        runner = asyncio.create_task(_run_until(app, done, "romeways Redis latency run"))
        await asyncio.to_thread(_produce_paced, stream, count, rate, joined)
        await runner

    try:
        asyncio.run(main())
    finally:
        _delete(stream)
    return _latency_stats(latencies)


def raw_latency(count: int, rate: float) -> Measurement:
    """redis-py asyncio XREADGROUP BLOCK 1000 COUNT 10, decode, an awaited handler, XACK."""
    import redis.asyncio as aioredis

    stream = f"bench-latency-{uuid.uuid4().hex[:8]}"
    decoder = msgspec.json.Decoder(Stamp)
    latencies: list[float] = []
    joined = threading.Event()

    async def handle(stamp: Stamp) -> None:
        if stamp.i < 0:
            joined.set()
            return
        latencies.append(time.perf_counter() - stamp.sent)

    async def main() -> None:
        client = aioredis.Redis.from_url(SERVER.url)
        await client.xgroup_create(stream, "raw", id="0", mkstream=True)
        producer = asyncio.create_task(
            asyncio.to_thread(_produce_paced, stream, count, rate, joined)
        )
        try:
            deadline = time.monotonic() + WAIT_LIMIT
            while len(latencies) < count:
                if time.monotonic() > deadline or (producer.done() and producer.exception()):
                    raise TimeoutError(f"raw Redis latency run stuck at {len(latencies)}")
                reply = await client.xreadgroup("raw", "raw", {stream: ">"}, count=10, block=1000)
                if not reply:
                    continue
                entries = reply[0][1]
                for _, fields in entries:
                    await handle(decoder.decode(fields[b"data"]))
                await client.xack(stream, "raw", *(entry_id for entry_id, _ in entries))
            await producer
        finally:
            await client.aclose()

    try:
        asyncio.run(main())
    finally:
        _delete(stream)
    return _latency_stats(latencies)


def _delete(stream: str) -> None:
    import redis

    with redis.Redis.from_url(SERVER.url) as client:
        client.delete(stream)


# --- idle CPU --------------------------------------------------------------------------------


def ours_idle_cpu(seconds: float) -> Measurement:
    """CPU of a worker process consuming an empty stream (default settings)."""
    from .memory import CTX, _cpu_percent_over

    stream = f"bench-idle-{uuid.uuid4().hex[:8]}"
    pid = CTX.Value("i", 0, lock=False)
    ready = CTX.Event()

    async def handle(message: Message) -> None:
        return None

    app = _app(stream, handle, spawn=True)

    @app.on_startup
    async def record_pid() -> None:
        pid.value = os.getpid()
        ready.set()

    async def main() -> float:
        runner = asyncio.create_task(app.start())
        try:
            if not await asyncio.to_thread(ready.wait, WAIT_LIMIT):
                raise TimeoutError("the Redis worker process did not start")
            await asyncio.sleep(1.0)
            return await asyncio.to_thread(_cpu_percent_over, pid.value, seconds)
        finally:
            app.stop()
            await runner

    try:
        return {"cpu": asyncio.run(main())}
    finally:
        _delete(stream)


# --- scenarios -------------------------------------------------------------------------------


def scenarios(params: Params) -> list[Scenario]:
    reason = unavailable()
    n = params.drain_n
    count, rate = params.latency_count, params.latency_rate
    raw = f"raw redis-py+hiredis XREADGROUP({CHUNK})/XACK"
    raw_latency_name = "raw redis-py+hiredis XREADGROUP BLOCK/XACK"
    seconds = params.idle_seconds
    return [
        Scenario(
            name=f"redis drain {n:,}",
            metrics=[
                Metric("steady", "msg/s", target=Target("ratio", ">=", 0.8)),
                Metric("startup", "s", 3),
            ],
            variants=[
                Variant(f"romeways max_chunk_size={CHUNK}", lambda: ours_drain(n), baseline=raw),
                Variant(raw, lambda: raw_drain(n), raw=True),
            ],
            skip=reason,
        ),
        Scenario(
            name=f"redis latency {count:,} msgs at {rate:g}/s",
            metrics=[
                Metric("p50", "ms", 3),
                Metric("p99", "ms", 3, Target("value", "<=", 5.0)),
                Metric("max", "ms", 3),
            ],
            variants=[
                Variant(
                    "romeways defaults",
                    lambda: ours_latency(count, rate),
                    baseline=raw_latency_name,
                ),
                Variant(raw_latency_name, lambda: raw_latency(count, rate), raw=True),
            ],
            skip=reason,
        ),
        Scenario(
            name=f"redis idle CPU over {seconds:g}s",
            metrics=[Metric("cpu", "% of a core", 2, Target("value", "<=", 1.0))],
            variants=[Variant("romeways worker process, defaults", lambda: ours_idle_cpu(seconds))],
            skip=reason,
            reps=3,
        ),
    ]


def stop() -> None:
    SERVER.stop()
