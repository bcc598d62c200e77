"""Middleware, log context, Prometheus metrics and health of `romeways run`, over loopback."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from multiprocessing import Queue
from pathlib import Path
from typing import Any

import msgspec
import pytest

import romeways
from romeways._logging import JsonFormatter
from romeways._metrics import WorkerReport
from romeways.testing import TestKit

ROOT = Path(__file__).resolve().parent.parent

# --- middleware --------------------------------------------------------------------------------


class Recorder(romeways.Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.results: list[tuple[str, romeways.HandlingResult]] = []

    async def before(self, ctx: romeways.MessageContext) -> None:
        self.log.append(f"{self.name}:before")

    async def after(self, ctx: romeways.MessageContext, result: romeways.HandlingResult) -> None:
        self.log.append(f"{self.name}:after:{result.outcome}")
        self.results.append((ctx.queue_name, result))


def _app(retries: int = 1) -> tuple[romeways.App, romeways.MemoryQueueConfig]:
    app = romeways.App(shutdown_timeout=2.0)
    config = romeways.MemoryQueueConfig(
        connector_name="mem", queue=Queue(), retries=retries, frequency=0.05
    )
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    return app, config


def test_middleware_sees_every_outcome_in_order_with_durations() -> None:
    app, config = _app(retries=1)
    log: list[str] = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)
    app.add_middleware(outer)
    app.add_middleware(inner)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        log.append(f"handler:{message.payload}")
        if message.payload == "resend":
            raise romeways.ResendException()
        if message.payload == "fail":
            raise RuntimeError("broken")
        await asyncio.sleep(0.02)

    async def scenario() -> None:
        async with TestKit(app, raise_exceptions=False) as kit:
            for payload in ("ok", "resend", "fail"):
                await kit.publish("q", payload)
            await kit.send("q", b"\xff\xfe")

    asyncio.run(scenario())
    first = ["outer:before", "inner:before", "handler:ok", "inner:after:handled"]
    assert log[:5] == [*first, "outer:after:handled"]
    outcomes = [r.outcome for _, r in outer.results]
    assert outcomes == [
        romeways.Outcome.HANDLED,
        romeways.Outcome.RESENT,
        romeways.Outcome.DEAD_LETTERED,  # the resend, once its retries are spent
        romeways.Outcome.FAILED,
        romeways.Outcome.DEAD_LETTERED,  # undecodable bytes
    ]
    assert outer.results[0][1].duration >= 0.02
    failed = outer.results[3][1]
    assert isinstance(failed.exception, RuntimeError) and failed.outcome.dead_lettered
    assert "cannot decode" in (outer.results[4][1].reason or "")


def test_a_wrapping_middleware_runs_around_the_handler_in_a_real_start() -> None:
    """A tracing-style middleware: its context variable is visible in the handler."""
    app, config = _app()
    span: contextvars.ContextVar[str] = contextvars.ContextVar("span", default="none")
    seen: list[str] = []

    class Tracing(romeways.Middleware):
        async def __call__(
            self, ctx: romeways.MessageContext, call_next: romeways.CallNext
        ) -> romeways.HandlingResult:
            token = span.set(f"span-{ctx.queue_name}-{ctx.attempt}")
            try:
                return await call_next()
            finally:
                span.reset(token)

    class Broken(romeways.Middleware):
        async def before(self, ctx: romeways.MessageContext) -> None:
            raise LookupError("middleware bug")

    app.add_middleware(Tracing())
    app.add_middleware(Broken())

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        seen.append(span.get())
        app.stop()

    async def scenario() -> None:
        config.queue.put(b"hello")
        await asyncio.wait_for(app.start(), 10)

    asyncio.run(scenario())
    # the broken middleware is logged and the message still handled, exactly once
    assert seen == ["span-q-None"]


def test_add_middleware_rejects_non_middleware() -> None:
    app, _ = _app()
    with pytest.raises(romeways.RegistrationError, match=r"romeways\.Middleware subclass"):
        app.add_middleware(object())  # type: ignore[arg-type]  # the runtime check under test


def test_json_lines_carry_the_message_context() -> None:
    app, config = _app(retries=0)
    lines: list[dict[str, object]] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(JsonFormatter().format(record)))

    capture = Capture()
    capture.addFilter(romeways.ContextFilter())
    user_logger = logging.getLogger("myapp.orders")
    user_logger.addHandler(capture)
    user_logger.setLevel(logging.INFO)
    logging.getLogger("romeways").addHandler(capture)

    @app.queue_consumer(queue_name="orders", config=config)
    async def handler(message: romeways.Message) -> None:
        user_logger.info("charging %s", message.payload)
        raise romeways.ResendException()

    async def scenario() -> None:
        async with TestKit(app) as kit:
            await kit.publish("orders", "order-1")

    try:
        asyncio.run(scenario())
    finally:
        user_logger.removeHandler(capture)
        logging.getLogger("romeways").removeHandler(capture)
    about = [
        line
        for line in lines
        if str(line["message"]).startswith(("charging", "dead-lettered"))  # about the message
    ]
    assert any(line["message"] == "charging order-1" for line in about)
    assert any(str(line["message"]).startswith("dead-lettered") for line in about)
    for line in about:
        assert line["connector"] == "mem" and line["queue"] == "orders"
        assert line["attempt"] == 1 and str(line["handler"]).endswith("handler")
        assert "topic" not in line  # only Kafka tells topic, partition and offset


# --- metrics and health of `romeways run`, real processes over 127.0.0.1 ----------------------

APP = textwrap.dedent(
    """
    import os
    from multiprocessing import Queue

    import romeways

    app = romeways.App(shutdown_timeout=2.0)
    config = romeways.MemoryQueueConfig(
        connector_name="mem", queue=Queue(), frequency=0.1, retries=1
    )
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
        spawn_process=True,
    )


    @app.queue_consumer(queue_name="jobs", config=config)
    async def work(message: romeways.Message) -> None:
        if message.payload == "resend":
            raise romeways.ResendException()
        if message.payload == "fail":
            raise ValueError("bad job")


    jobs = app.publisher(work)


    @app.on_startup
    async def seed() -> None:
        # each worker process puts 5 jobs on the shared queue once
        marker = os.path.join(os.environ["SEED_DIR"], f"seed-{os.getpid()}")
        if len(os.listdir(os.environ["SEED_DIR"])) < int(os.environ["SEEDS"]):
            open(marker, "w").close()
            for payload in ("a", "b", "c", "resend", "fail"):
                await jobs.publish(payload)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(p) for p in path.read_text().split()} if path.exists() else set()


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return -1.0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    (tmp_path / "obsapp.py").write_text(APP)
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    metrics, health = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SEED_DIR": str(seeds), "SEEDS": "2"}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "romeways", "run", "obsapp:app", "--workers", "2"),
            *("--metrics-port", str(metrics), "--health-port", str(health)),
            *("--http-host", "127.0.0.1", "--log-format", "json"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, metrics, health
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_metrics_cover_every_worker_process_and_health_follows_them(
    running: tuple[subprocess.Popen[str], int, int],
) -> None:
    proc, metrics_port, health_port = running
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    health_url = f"http://127.0.0.1:{health_port}/health"

    # two worker processes seeded 5 jobs each: 3 handled, 1 resent then dead-lettered, 1 failed
    def counted() -> bool:
        status, text = get(metrics_url)
        return status == 200 and sample(text, "romeways_handling_duration_seconds_count") == 12

    wait_for(counted, 20, "12 handlings counted")
    _, text = get(metrics_url)
    assert sample(text, "romeways_messages_handled_total") == 6
    assert sample(text, "romeways_messages_resent_total") == 2
    assert sample(text, "romeways_messages_failed_total") == 2
    assert sample(text, "romeways_messages_dead_lettered_total") == 4
    assert 'romeways_messages_handled_total{connector="mem",queue="jobs"} 6.0' in text
    assert 'romeways_handling_duration_seconds_bucket{connector="mem",le="+Inf",queue="jobs"}' in (
        text
    )
    assert sample(text, "romeways_workers") == 2

    wait_for(lambda: get(health_url)[0] == 200, 10, "healthy")
    body = json.loads(get(health_url)[1])
    assert body["status"] == "ok" and len(body["workers"]) == 2
    assert {w["pid"] for w in body["workers"]} == children(proc.pid)
    assert get(f"http://127.0.0.1:{health_port}/nope")[0] == 404

    # a stalled worker (stopped, not polling) makes health fail; resumed, it passes again
    victim = min(children(proc.pid))
    os.kill(victim, signal.SIGSTOP)
    try:
        wait_for(lambda: get(health_url)[0] == 503, 10, "unhealthy while a worker is stalled")
        assert "1 of 2 worker(s) alive" in get(health_url)[1]
    finally:
        os.kill(victim, signal.SIGCONT)
    wait_for(lambda: get(health_url)[0] == 200, 10, "healthy again")

    # a killed worker is unhealthy at once, and healthy again once the supervisor restarted it
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: get(health_url)[0] == 503, 5, "unhealthy after a kill")
    wait_for(lambda: get(health_url)[0] == 200, 15, "healthy after the restart")
    assert victim not in children(proc.pid) and len(children(proc.pid)) == 2
    # counts survive the worker's death: never lower than before
    _, text = get(metrics_url)
    assert sample(text, "romeways_messages_handled_total") >= 6

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0


def test_metrics_port_without_a_consumer_process_still_counts(tmp_path: Path) -> None:
    """In-process connectors (no --workers, spawn_process=False) report the same way."""
    (tmp_path / "inproc.py").write_text(APP.replace("spawn_process=True", "spawn_process=False"))
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SEED_DIR": str(seeds), "SEEDS": "1"}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "romeways", "run", "inproc:app", "--metrics-port", str(port)),
            *("--health-port", str(port), "--http-host", "127.0.0.1"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: sample(get(url + "/metrics")[1], "romeways_messages_handled_total") == 3,
            15,
            "3 handled",
        )
        assert get(url + "/health")[0] == 200  # one port can serve both
        assert children(proc.pid) == set()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_metrics_report_is_small_and_decodable() -> None:
    """Worker reports fit one atomic pipe write even with many Kafka partitions."""
    from romeways._metrics import WorkerReport
    from romeways._telemetry import _MAX_FRAME, Reporting

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        reporting = Reporting.__new__(Reporting)
        reporting._fd = write_fd
        reporting._broken = False
        report = WorkerReport(
            session="s",
            pid=1,
            final=False,
            connector="k",
            queue="q",
            handler="h",
            frequency=1.0,
            poll_age=0.1,
            inflight=0,
            counts=[1, 2, 3, 4],
            buckets=[0] * 15,
            total_seconds=0.5,
            lag={f"topic-with-a-long-name:{p}": 10_000 for p in range(500)},
        )
        reporting._write(report)
        frame = os.read(read_fd, 65536)
        assert len(frame) <= _MAX_FRAME
        decoded = msgspec.msgpack.decode(frame[4:], type=WorkerReport)
        assert decoded.counts == [1, 2, 3, 4] and 0 < len(decoded.lag) < 500
    finally:
        os.close(read_fd)
        os.close(write_fd)


def _report(**fields: Any) -> WorkerReport:
    base: dict[str, Any] = {
        "session": "s",
        "pid": os.getpid(),
        "final": False,
        "connector": "mem",
        "queue": "jobs",
        "handler": "handle_jobs",
        "frequency": 1.0,
        "poll_age": 0.1,
        "inflight": 1,
        "counts": [0, 0, 0, 0],
        "buckets": [],
        "total_seconds": 0.0,
        "lag": {},
    }
    return WorkerReport(**{**base, **fields})


def test_health_fails_for_a_worker_stuck_past_its_bound_and_names_it() -> None:
    """A worker busy with a chunk is alive, unless its report says it is stuck far past the
    bound of a handler or dead-letter hook: then health fails naming queue, pid and why."""
    from romeways._health import evaluate
    from romeways._metrics import Aggregator

    expected = {("mem", "jobs"): 1}
    for stuck, healthy in (("", True), ("the dead-letter hook of handle_jobs has run", False)):
        aggregator = Aggregator()
        aggregator.apply(_report(stuck=stuck, poll_age=600.0), 100.0)
        ok, body = evaluate(aggregator, expected, 100.0)
        assert ok is healthy, body
        if not healthy:
            assert body["problems"] == [
                f"worker of queue 'jobs' (connector 'mem', pid {os.getpid()}) is stuck: {stuck}",
                "queue 'jobs' (connector 'mem'): 0 of 1 worker(s) alive",
            ]
            assert body["workers"][0]["stuck"] == stuck
    # A report of an older romeways (no stuck field) still decodes.
    fields = msgspec.structs.astuple(_report())
    frame = msgspec.msgpack.encode(fields[: len(fields) - 1])
    assert msgspec.msgpack.decode(frame, type=WorkerReport).stuck == ""


class LaggingMemoryConnector(romeways.MemoryQueueConnector):
    """The memory connector plus ``consumer_lag`` (romeways.ReportsLag), for the lag metric."""

    async def consumer_lag(self) -> Mapping[str, int]:
        return {"shard-a": 7, "shard-b": 0}


def test_consumer_lag_metric_from_any_connector_with_the_capability() -> None:
    """romeways_consumer_lag{connector,queue,source} comes from any connector that reports
    lag; romeways_kafka_consumer_lag (kept for Kafka dashboards) only from Kafka's, its
    "topic:partition" sources split into the two labels."""
    from romeways._metrics import Aggregator, prometheus_text
    from romeways._telemetry import Telemetry

    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=LaggingMemoryConnector,
        config=romeways.MemoryConnectorConfig(connector_name="lagging"),
    )
    config = romeways.MemoryQueueConfig(connector_name="lagging", queue=Queue(), frequency=0.05)

    @app.queue_consumer(queue_name="jobs", config=config)
    async def handler(message: romeways.Message) -> None:
        return None

    async def scenario() -> str:
        telemetry = Telemetry(app, metrics_port=free_port(), host="127.0.0.1", interval=0.05)
        await telemetry.open()
        app.telemetry = telemetry
        task = asyncio.create_task(app.start())
        try:
            url = f"http://127.0.0.1:{telemetry.metrics_port}/metrics"
            deadline = time.monotonic() + 20
            text = ""
            while 'source="shard-a"' not in text:
                assert time.monotonic() < deadline and not task.done(), text
                await asyncio.sleep(0.05)
                text = (await asyncio.to_thread(get, url))[1]
            return text
        finally:
            app.stop()
            await asyncio.wait_for(task, 10)
            app.telemetry = None
            await telemetry.close()

    text = asyncio.run(asyncio.wait_for(scenario(), 60))
    lines = [line for line in text.splitlines() if line.startswith("romeways_consumer_lag{")]
    assert sorted(lines) == [
        'romeways_consumer_lag{connector="lagging",queue="jobs",source="shard-a"} 7.0',
        'romeways_consumer_lag{connector="lagging",queue="jobs",source="shard-b"} 0.0',
    ]
    assert "romeways_kafka_consumer_lag{" not in text

    aggregator = Aggregator()
    aggregator.apply(_report(connector="k", queue="q", lag={"orders:2": 5}, kafka=True), 1.0)
    kafka_text = prometheus_text(aggregator)[0].decode()
    assert 'romeways_consumer_lag{connector="k",queue="q",source="orders:2"} 5.0' in kafka_text
    assert (
        'romeways_kafka_consumer_lag{connector="k",partition="2",queue="q",topic="orders"} 5.0'
        in kafka_text
    )


def test_worker_probe_says_when_a_hook_or_a_timed_chunk_is_far_past_its_bound() -> None:
    """The probe's verdict: a dead-letter hook in flight past 2 x dead_letter_timeout + 5 s, or
    (with handler_timeout) a chunk in flight past 2 x its bound + 5 s, where the bound is
    (handler_timeout + dead_letter_timeout) per message, times the chunk size if sequential."""
    from romeways._worker import WorkerProbe

    for sequential in (False, True):
        app = romeways.App()
        app.connector_register(
            connector=romeways.MemoryQueueConnector,
            config=romeways.MemoryConnectorConfig(connector_name="mem"),
        )
        config = romeways.MemoryQueueConfig(
            connector_name="mem",
            queue=Queue(),
            handler_timeout=1.0,
            dead_letter_timeout=2.0,
            sequential=sequential,
        )

        @app.queue_consumer(queue_name="jobs", config=config)
        async def handle_jobs(message: romeways.Message) -> None: ...

        probe = WorkerProbe(app, app.routes[0])
        now = 1000.0
        assert probe.stuck(now) == ""
        probe.hook_starts.append(now - (2 * 2.0 + 5.0) + 0.1)
        assert probe.stuck(now) == ""
        probe.hook_starts.append(now - (2 * 2.0 + 5.0) - 0.1)
        assert "the dead-letter hook of" in probe.stuck(now)
        assert "handle_jobs" in probe.stuck(now) and "dead_letter_timeout=2.0s" in probe.stuck(now)
        probe.hook_starts.clear()
        probe.inflight = 4
        bound = (1.0 + 2.0) * (4 if sequential else 1)
        probe.last_poll = now - (2 * bound + 5.0) + 0.1
        assert probe.stuck(now) == ""
        probe.last_poll = now - (2 * bound + 5.0) - 0.1
        verdict = probe.stuck(now)
        assert "handle_jobs has held a chunk of 4" in verdict and "handler_timeout=1.0s" in verdict
        probe.inflight = 0  # idle: polling, not stuck
        assert probe.stuck(now) == ""


# --- Kafka: topic/partition/offset in the context and log lines, consumer lag ----------------


@pytest.fixture(scope="module")
def kafka_bootstrap() -> Iterator[str]:
    from broker import start_broker

    broker = start_broker()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


def test_kafka_context_log_fields_lag_and_keyed_publish(kafka_bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer
    from broker import create_topic, unique_name

    from romeways._telemetry import Telemetry

    topic, group = unique_name("obs"), unique_name("obs-group")
    app = romeways.App(shutdown_timeout=5.0)
    app.connector_register(
        connector=romeways.KafkaQueueConnector,
        config=romeways.KafkaConnectorConfig(
            connector_name="kafka", bootstrap_server=kafka_bootstrap, startup_timeout=30.0
        ),
    )
    config = romeways.KafkaQueueConfig(
        connector_name="kafka",
        topic=topic,
        group_id=group,
        frequency=0.1,
        max_chunk_size=1,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    seen: list[tuple[str | None, int | None, int | None, int | None]] = []
    release = asyncio.Event()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    logging.getLogger("romeways").addHandler(keep)

    @app.queue_consumer(queue_name="events", config=config)
    async def handler(message: romeways.Message[int]) -> None:
        ctx = romeways.context()
        seen.append((ctx.topic, ctx.partition, ctx.offset, ctx.attempt))
        logging.getLogger("romeways").warning("event %d", message.payload)
        await release.wait()

    events = app.publisher(handler)

    async def scenario() -> tuple[str, list[tuple[bytes | None, list[tuple[str, bytes]]]]]:
        await create_topic(kafka_bootstrap, topic)
        telemetry = Telemetry(app, metrics_port=free_port(), host="127.0.0.1")
        await telemetry.open()
        app.telemetry = telemetry
        task = asyncio.create_task(app.start())
        try:
            for i in range(6):
                await events.publish(i, key=b"k%d" % i, headers=[("trace", b"t%d" % i)])
            # the handler holds the first message: the other five are behind
            url = f"http://127.0.0.1:{telemetry.metrics_port}/metrics"
            deadline = time.monotonic() + 40
            text = ""
            while "romeways_kafka_consumer_lag{" not in text or not seen:
                assert time.monotonic() < deadline, "no consumer lag reported"
                await asyncio.sleep(0.2)
                text = (await asyncio.to_thread(get, url))[1]
            lag_text = text
            release.set()
            while len(seen) < 6:
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.05)
        finally:
            app.stop()
            await asyncio.wait_for(task, 30)
            await app.close_publishers()
            app.telemetry = None
            await telemetry.close()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=5000)
            got = [(r.key, list(r.headers)) for rs in batch.values() for r in rs]
        finally:
            await consumer.stop()
        return lag_text, got

    try:
        lag_text, got = asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        logging.getLogger("romeways").removeHandler(keep)
    assert seen == [(topic, 0, i, 1) for i in range(6)]
    lag_line = next(line for line in lag_text.splitlines() if line.startswith("romeways_kafka"))
    assert f'topic="{topic}"' in lag_line and 'partition="0"' in lag_line
    assert float(lag_line.rsplit(" ", 1)[1]) >= 1
    neutral = next(line for line in lag_text.splitlines() if line.startswith("romeways_consumer"))
    assert f'source="{topic}:0"' in neutral
    assert neutral.rsplit(" ", 1)[1] == lag_line.rsplit(" ", 1)[1]
    about = [r for r in records if r.getMessage().startswith("event ")]
    assert [(r.__dict__["topic"], r.__dict__["offset"]) for r in about] == [
        (topic, i) for i in range(6)
    ]
    assert [r.__dict__["position"] for r in about] == [
        f"topic={topic} partition=0 offset={i}" for i in range(6)
    ]
    assert got[:1] == [(b"k0", [("trace", b"t0")])]
