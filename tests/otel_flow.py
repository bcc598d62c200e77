"""A publish -> consume -> resend -> dead-letter flow traced with the real OpenTelemetry SDK, run
on any connector that carries headers (the memory connector's tests and a real broker's), and
checks of the spans it makes: parent/child trace ids, attributes, events, status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import romeways
import romeways.otel


class Order(msgspec.Struct, frozen=True):
    id: int


def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


async def _until(done: Any, timeout: float, task: asyncio.Task[Any]) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if task.done():
            task.result()
            raise AssertionError("start() returned before the flow finished")
        if time.monotonic() > deadline:
            raise AssertionError(f"the flow did not finish within {timeout}s")
        await asyncio.sleep(0.02)


def run_flow(
    app: romeways.App,
    config: romeways.GenericQueueConfig,
    out_config: romeways.GenericQueueConfig,
    *,
    timeout: float = 20.0,
) -> tuple[list[ReadableSpan], list[str]]:
    """Instrument ``app`` and run: under a root span "request", publish orders 1, 2 and 3 to
    queue "orders" (``config``, retries=1). Order 1 is resent (delay 0.05 s) and then fails
    (ValueError: dead-lettered); order 2 is resent until its resends are spent; order 3 is
    handled and its handler publishes to queue "out" (``out_config``). The spans, and what
    the dead-letter hook saw."""
    tracer_provider, exporter = provider()
    romeways.otel.instrument(app, tracer_provider=tracer_provider)
    dead: list[str] = []
    handled: list[int] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        dead.append(letter.reason)

    out = app.queue_handle("out", Order, config=out_config)

    @app.queue_consumer(queue_name="orders", config=config, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Order]) -> None:
        order = message.payload
        if order.id == 1:
            if message.attempt == 1:
                raise romeways.ResendException(delay=0.05)
            raise ValueError("order 1 is broken")
        if order.id == 2:
            raise romeways.ResendException()
        await out.publish(order)
        handled.append(order.id)

    orders = app.publisher(handle)
    tracer = tracer_provider.get_tracer("test")

    async def scenario() -> None:
        runner = asyncio.create_task(app.start())
        try:
            with tracer.start_as_current_span("request"):
                for i in (1, 2, 3):
                    await romeways.publish(orders, Order(id=i), headers={"tenant": b"acme"})
            await _until(lambda: len(dead) == 2 and handled == [3], timeout, runner)
        finally:
            app.stop()
            await asyncio.wait_for(runner, 15)
            await app.close_publishers()

    asyncio.run(scenario())
    return list(exporter.get_finished_spans()), dead


def _attempt(span: ReadableSpan) -> object:
    return (span.attributes or {}).get("romeways.attempt")


def check_flow(
    spans: Sequence[ReadableSpan], system: str, destination: str, out_destination: str
) -> None:
    """What ``run_flow`` must have traced."""
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    (request,) = by_name["request"]
    sends = by_name[f"send {destination}"]
    processes = by_name[f"process {destination}"]
    (send_out,) = by_name[f"send {out_destination}"]
    assert len(sends) == 3 and len(processes) == 5, sorted(by_name)
    trace_id = request.context.trace_id
    for send in sends:
        assert send.kind is SpanKind.PRODUCER
        assert send.context.trace_id == trace_id
        assert send.parent is not None and send.parent.span_id == request.context.span_id
        attributes = send.attributes or {}
        assert attributes["messaging.system"] == system
        assert attributes["messaging.operation.type"] == "send"
        assert attributes["messaging.destination.name"] == destination
        assert attributes["romeways.queue"] == "orders"
    send_ids = {send.context.span_id for send in sends}
    for process in processes:
        assert process.kind is SpanKind.CONSUMER
        # A child of the producer span of its message (a resend keeps the message's headers).
        assert process.context.trace_id == trace_id
        assert process.parent is not None and process.parent.span_id in send_ids
        assert [link.context.span_id for link in process.links] == [process.parent.span_id]
        attributes = process.attributes or {}
        assert attributes["messaging.system"] == system
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["messaging.operation.name"] == "process"
        assert attributes["messaging.destination.name"] == destination
        assert str(attributes["romeways.handler"]).endswith("handle")
    per_message: dict[int, list[ReadableSpan]] = {}
    for process in processes:
        assert process.parent is not None
        per_message.setdefault(process.parent.span_id, []).append(process)
    order_of = {send.context.span_id: i for i, send in enumerate(sorted(sends, key=_start), 1)}
    first, second, third = (
        sorted(per_message[s], key=_start) for s in sorted(per_message, key=order_of.__getitem__)
    )
    # Order 1: resent with its delay, then failed: the exception recorded, dead-lettered, ERROR.
    assert [_attempt(s) for s in first] == [1, 2]
    assert [e.name for e in first[0].events] == ["romeways.resend"]
    assert (first[0].events[0].attributes or {})["romeways.delay"] == 0.05
    assert first[0].status.status_code is StatusCode.UNSET
    assert [e.name for e in first[1].events] == ["exception", "romeways.dead_letter"]
    assert (first[1].events[0].attributes or {})["exception.type"] == "ValueError"
    assert first[1].status.status_code is StatusCode.ERROR
    # Order 2: resent once, then its resends were spent: dead-lettered without an exception.
    assert [_attempt(s) for s in second] == [1, 2]
    assert [e.name for e in second[1].events] == ["romeways.dead_letter"]
    reason = str((second[1].events[0].attributes or {})["romeways.reason"])
    assert "resend(s) allowed are spent" in reason
    assert second[1].status.status_code is StatusCode.ERROR
    # Order 3: handled; the handler's publish is a child of its consumer span.
    (handled,) = third
    assert handled.status.status_code is StatusCode.UNSET and not handled.events
    assert send_out.kind is SpanKind.PRODUCER
    assert send_out.parent is not None and send_out.parent.span_id == handled.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN  # nothing leaked into the test


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0
