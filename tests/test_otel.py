"""OpenTelemetry tracing (``romeways.otel``) on the memory connector with the real SDK: the
publish -> consume -> resend -> dead-letter flow, trace context in the headers, and romeways
without opentelemetry installed (a subprocess with it blocked)."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from multiprocessing import Queue
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from otel_flow import Order, check_flow, provider, run_flow

import romeways
import romeways.otel


def _memory_app() -> tuple[romeways.App, romeways.MemoryQueueConfig, romeways.MemoryQueueConfig]:
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    config = romeways.MemoryQueueConfig(
        connector_name="mem", queue=Queue(), frequency=0.05, retries=1
    )
    out = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
    return app, config, out


def test_the_memory_flow_is_traced_from_publish_to_dead_letter() -> None:
    app, config, out = _memory_app()
    spans, dead = run_flow(app, config, out)
    check_flow(spans, "memory", "orders", "out")
    assert len(dead) == 2


def test_the_trace_context_travels_in_the_headers_next_to_the_callers() -> None:
    app, config, _ = _memory_app()
    tracer_provider, exporter = provider()
    romeways.otel.instrument(app, tracer_provider=tracer_provider)
    romeways.otel.instrument(app, tracer_provider=tracer_provider)  # twice: no second span
    seen: list[tuple[tuple[str, bytes], ...]] = []
    both = asyncio.Event()

    @app.queue_consumer(queue_name="orders", config=config)
    async def handle(message: romeways.Message[Order]) -> None:
        seen.append(romeways.context().headers)
        if len(seen) == 2:
            both.set()

    orders = app.publisher(handle)

    async def scenario() -> None:
        runner = asyncio.create_task(app.start())
        try:
            await orders.publish(Order(id=1), key=b"k", headers=[("tenant", b"acme")])
            # A traceparent the caller gives wins over the injected one.
            await orders.publish(Order(id=2), headers={"traceparent": b"mine"})
            await asyncio.wait_for(both.wait(), 10)
        finally:
            app.stop()
            await asyncio.wait_for(runner, 10)
            await app.close_publishers()

    asyncio.run(scenario())
    spans = exporter.get_finished_spans()
    (send, _), processes = (
        [s for s in spans if s.name == "send orders"],
        [s for s in spans if s.name == "process orders"],
    )
    assert len(processes) == 2 and len(app.middleware) == 1
    first, second = seen
    assert first[0] == ("tenant", b"acme") and [name for name, _ in first] == [
        "tenant",
        "traceparent",
    ]
    traceparent = dict(first)["traceparent"].decode()
    # version-trace id-parent id-flags (sampled; newer SDKs also set the "random" flag)
    assert traceparent[:-3] == f"00-{send.context.trace_id:032x}-{send.context.span_id:016x}"
    assert int(traceparent[-2:], 16) & 1
    assert second == (("traceparent", b"mine"),)


class _BytesOnlyConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    pass


SENT: list[bytes] = []


class _BytesOnly(romeways.AQueueConnector[_BytesOnlyConfig, romeways.GenericQueueConfig]):
    """Carries bytes only: tracing must not put headers on what it sends."""

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        SENT.append(message)


def test_a_connector_without_headers_still_gets_a_producer_span() -> None:
    app = romeways.App()
    app.connector_register(connector=_BytesOnly, config=_BytesOnlyConfig(connector_name="b"))
    tracer_provider, exporter = provider()
    romeways.otel.instrument(app, tracer_provider=tracer_provider)
    handle = app.queue_handle("q", int, config=romeways.GenericQueueConfig(connector_name="b"))

    async def scenario() -> None:
        await handle.publish(5)
        await app.close_publishers()

    asyncio.run(scenario())
    assert SENT == [b"5"]
    (span,) = exporter.get_finished_spans()
    attributes: dict[str, Any] = dict(span.attributes or {})
    assert span.name == "send q" and attributes["messaging.system"] == "_bytesonly"


_BLOCKED = """
import builtins, sys
real_import = builtins.__import__
def blocked(name, *args, **kwargs):
    if name == "opentelemetry" or name.startswith("opentelemetry."):
        raise ModuleNotFoundError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)
builtins.__import__ = blocked
"""


def test_romeways_works_without_opentelemetry() -> None:
    """Without opentelemetry importable, romeways publishes and consumes as ever and adds no
    headers; importing romeways.otel says how to install it."""
    code = _BLOCKED + textwrap.dedent(
        """
        import asyncio, multiprocessing
        import romeways
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        try:
            import romeways.otel
        except ImportError as exc:
            assert "pip install 'romeways[otel]'" in str(exc), exc
        else:
            raise AssertionError("romeways.otel imported without opentelemetry")
        app = romeways.App(shutdown_timeout=2.0)
        app.connector_register(
            connector=romeways.MemoryQueueConnector,
            config=romeways.MemoryConnectorConfig(connector_name="mem"),
        )
        queue = multiprocessing.Queue()
        config = romeways.MemoryQueueConfig(connector_name="mem", queue=queue, frequency=0.05)
        seen = []

        @app.queue_consumer(queue_name="q", config=config)
        async def handle(message: romeways.Message[int]) -> None:
            seen.append((message.payload, romeways.context().headers))

        async def main() -> None:
            runner = asyncio.create_task(app.start())
            await app.publisher(handle).publish(7)
            while not seen:
                await asyncio.sleep(0.02)
            app.stop()
            await asyncio.wait_for(runner, 10)
            await app.close_publishers()

        asyncio.run(main())
        assert seen == [(7, ())], seen
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_importing_romeways_imports_no_opentelemetry() -> None:
    code = "import sys, romeways; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"


class _QueueExporter(SpanExporter):
    """Exports (name, trace id, parent span id, span id) to a multiprocessing queue: spans made
    in a forked worker process reach the test."""

    def __init__(self, queue: Queue[tuple[str, int, int | None, int]]) -> None:
        self.queue = queue

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            parent = span.parent.span_id if span.parent is not None else None
            self.queue.put((span.name, span.context.trace_id, parent, span.context.span_id))
        return SpanExportResult.SUCCESS


def test_a_worker_process_continues_the_trace_of_the_publisher() -> None:
    """``spawn_process=True``: the consumer span is made in the worker process (forked with the
    provider given), a child of the producer span made in this one."""
    exported: Queue[tuple[str, int, int | None, int]] = Queue()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_QueueExporter(exported)))
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
        spawn_process=True,
    )
    romeways.otel.instrument(app, tracer_provider=tracer_provider)
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue(), frequency=0.05)
    pids: Queue[int] = Queue()

    @app.queue_consumer(queue_name="orders", config=config)
    async def handle(message: romeways.Message[Order]) -> None:
        pids.put(os.getpid())

    async def scenario() -> list[tuple[str, int, int | None, int]]:
        runner = asyncio.create_task(app.start())
        try:
            await app.publisher(handle).publish(Order(id=1))
            return [await asyncio.to_thread(exported.get, True, 20) for _ in range(2)]
        finally:
            app.stop()
            await asyncio.wait_for(runner, 10)
            await app.close_publishers()

    spans = {name: rest for name, *rest in asyncio.run(scenario())}
    send_trace, _, send_id = spans["send orders"]
    process_trace, process_parent, _ = spans["process orders"]
    assert process_trace == send_trace and process_parent == send_id
    assert pids.get(timeout=5) != os.getpid()


def test_the_tracing_pickles_for_a_spawned_worker() -> None:
    """Pickled (a spawned worker process gets the app pickled), the middleware and the hook
    drop the provider and tracer and use that process's global provider."""
    tracer_provider, _ = provider()
    for traced in (
        romeways.otel.OpenTelemetryMiddleware(tracer_provider),
        romeways.otel.PublishTracer(tracer_provider),
    ):
        _ = traced.tracer
        copy = pickle.loads(pickle.dumps(traced))
        assert type(copy) is type(traced) and copy._provider is None and copy._tracer is None
        assert getattr(copy, "_queues", {}) == {}


def test_messaging_system_names_the_backend() -> None:
    from romeways.connectors.kafka import KafkaQueueConnector
    from romeways.connectors.nats import NatsQueueConnector
    from romeways.connectors.rabbitmq import RabbitMQQueueConnector
    from romeways.connectors.redis import RedisQueueConnector

    class MyKafka(KafkaQueueConnector):
        pass

    found = [
        romeways.otel.messaging_system(c)
        for c in (
            KafkaQueueConnector,
            MyKafka,
            RedisQueueConnector,
            RabbitMQQueueConnector,
            NatsQueueConnector,
            romeways.MemoryQueueConnector,
            _BytesOnly,
        )
    ]
    assert found == ["kafka", "kafka", "redis", "rabbitmq", "nats", "memory", "_bytesonly"]
