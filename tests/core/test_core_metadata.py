"""Message metadata on the consumer side (issue 15): a connector that provides
``message_metadata`` has it in ``romeways.context()``, in middleware and in log fields, looked up
lazily, once per message, and only when asked; its capabilities are found once per worker."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any, ClassVar

import pytest
from _core_helpers import (
    Feed,
    ScriptedConnector,
    ScriptedConnectorConfig,
    ScriptedQueueConfig,
    run_until,
)

import romeways
import romeways._worker
from romeways._connector import Capabilities, capabilities
from romeways._logging import JsonFormatter

TIMESTAMP = 1_700_000_000.25


class MetadataConnector(ScriptedConnector):
    """The scripted connector plus ``message_metadata`` in Kafka's words (topic, partition,
    offset), counting its calls per delivery; ``fail`` makes it raise."""

    calls: ClassVar[Counter[int]] = Counter()
    fail: ClassVar[bool] = False

    def message_metadata(self, delivery: int) -> romeways.MessageMetadata | None:
        MetadataConnector.calls[delivery] += 1
        if MetadataConnector.fail:
            raise RuntimeError("metadata backend gone")
        return romeways.MessageMetadata(
            key=b"key-%d" % delivery,
            headers=(("trace", b"t-%d" % delivery), ("tenant", b"acme")),
            timestamp=TIMESTAMP,
            position=(("topic", "orders"), ("partition", 2), ("offset", 40 + delivery)),
            delivery_count=1,
        )


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    MetadataConnector.calls = Counter()
    MetadataConnector.fail = False


def metadata_app(feed: Feed, **queue_options: Any) -> tuple[romeways.App, ScriptedQueueConfig]:
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=MetadataConnector, config=ScriptedConnectorConfig(connector_name="scripted")
    )
    queue_options.setdefault("frequency", 0.05)
    return app, ScriptedQueueConfig(connector_name="scripted", feed=feed, **queue_options)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []
        self.addFilter(romeways.ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(JsonFormatter().format(record)))


def test_context_has_the_metadata_looked_up_once_and_only_when_asked() -> None:
    """Inline fast path (no middleware): the handler of delivery 0 reads every field, several
    times; delivery 1 only logs; deliveries 2 and 3 ask for nothing. message_metadata is
    called once for 0 and 1, never for 2 and 3."""
    feed = Feed([b"read", b"log", b"quiet", b"quiet"])
    app, config = metadata_app(feed, max_chunk_size=4)
    seen: list[tuple[object, ...]] = []
    lines = _Lines()
    log = logging.getLogger("test.metadata")
    log.addHandler(lines)
    log.setLevel(logging.INFO)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "read":
            ctx = romeways.context()
            seen.append((ctx.key, ctx.headers, ctx.header("trace"), ctx.timestamp))
            seen.append((ctx.position, ctx.topic, ctx.partition, ctx.offset))
            seen.append((romeways.context().metadata is ctx.metadata, ctx.delivery))
        elif message.payload == "log":
            log.info("handling")

    try:
        asyncio.run(run_until(app, lambda: feed.acked == [0, 1, 2, 3]))
    finally:
        log.removeHandler(lines)
    assert seen == [
        (b"key-0", (("trace", b"t-0"), ("tenant", b"acme")), b"t-0", TIMESTAMP),
        ((("topic", "orders"), ("partition", 2), ("offset", 40)), "orders", 2, 40),
        (True, 0),
    ]
    assert MetadataConnector.calls == {0: 1, 1: 1}
    (line,) = [line for line in lines.lines if line["message"] == "handling"]
    assert line["position"] == "topic=orders partition=2 offset=41"
    assert line["key"] == "key-1"
    assert (line["topic"], line["partition"], line["offset"]) == ("orders", 2, 41)
    assert "trace" not in json.dumps(line)  # headers are not logged


def test_middleware_sees_the_metadata() -> None:
    feed = Feed([b"a", b"b"])
    app, config = metadata_app(feed, max_chunk_size=2)
    seen: list[tuple[object, ...]] = []

    class Watch(romeways.Middleware):
        async def before(self, ctx: romeways.MessageContext) -> None:
            seen.append(("before", ctx.key, ctx.header("tenant"), ctx.offset))

        async def after(
            self, ctx: romeways.MessageContext, result: romeways.HandlingResult
        ) -> None:
            seen.append(("after", ctx.key, ctx.position[-1], result.outcome))

    app.add_middleware(Watch())

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        return None

    asyncio.run(run_until(app, lambda: feed.acked == [0, 1]))
    assert seen == [
        ("before", b"key-0", b"acme", 40),
        ("after", b"key-0", ("offset", 40), romeways.Outcome.HANDLED),
        ("before", b"key-1", b"acme", 41),
        ("after", b"key-1", ("offset", 41), romeways.Outcome.HANDLED),
    ]
    # Pinned once per message (middleware may keep the context past the ack).
    assert MetadataConnector.calls == {0: 1, 1: 1}


def test_a_failing_message_metadata_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    """A connector whose message_metadata raises: the handler runs, the context tells no
    metadata, the failure is logged once per message, the message is finished."""
    MetadataConnector.fail = True
    feed = Feed([b"a"])
    app, config = metadata_app(feed)
    seen: list[tuple[object, ...]] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        ctx = romeways.context()
        logging.getLogger("romeways").info("in the handler")
        seen.append((ctx.metadata, ctx.key, ctx.headers, ctx.position, ctx.topic))

    with caplog.at_level(logging.INFO, logger="romeways"):
        asyncio.run(run_until(app, lambda: feed.acked == [0]))
    assert seen == [(None, None, (), (), None)]
    failures = [r for r in caplog.records if "message_metadata(0)" in r.getMessage()]
    assert len(failures) == 1 and "metadata backend gone" in failures[0].getMessage()
    assert MetadataConnector.calls == {0: 1}


def test_a_connector_without_metadata_gives_none() -> None:
    """A connector without message_metadata: no metadata, no key, no position."""
    feed = Feed([b"a"])
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=ScriptedConnector, config=ScriptedConnectorConfig(connector_name="scripted")
    )
    config = ScriptedQueueConfig(connector_name="scripted", feed=feed, frequency=0.05)
    seen: list[tuple[object, ...]] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        ctx = romeways.context()
        seen.append((ctx.metadata, ctx.key, ctx.headers, ctx.timestamp, ctx.position))
        seen.append((ctx.topic, ctx.partition, ctx.offset, "position" in ctx.log_fields()))

    asyncio.run(run_until(app, lambda: feed.acked == [0]))
    assert seen == [(None, None, (), None, ()), (None, None, None, False)]


def test_capabilities_are_found_once_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not per message: the worker asks which capabilities its connector has when it builds
    it, and the message contexts use what it found."""
    found: list[Capabilities] = []
    real = capabilities

    def counting(connector: object) -> Capabilities:
        found.append(real(connector))
        return found[-1]

    monkeypatch.setattr(romeways._worker, "capabilities", counting)
    feed = Feed([b"m%d" % i for i in range(20)])
    app, config = metadata_app(feed, max_chunk_size=3)
    keys: list[bytes | None] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        keys.append(romeways.context().key)

    asyncio.run(run_until(app, lambda: len(feed.acked) == 20))
    assert len(found) == 1 and found[0].metadata is not None and found[0].lag is None
    assert keys == [b"key-%d" % i for i in range(20)]
