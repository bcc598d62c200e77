"""No Any in handler code: typed app state, the queue's own config, the attempt (issue 14), and
what the connector tells about the message: key, headers, timestamp, position (issue 15)."""

from __future__ import annotations

import dataclasses
from multiprocessing import Queue
from typing import assert_type

import msgspec

import romeways


class Order(msgspec.Struct):
    id: int


@dataclasses.dataclass
class AppState:
    db: str | None = None


class RegionQueueConfig(romeways.MemoryQueueConfig):
    region: str = "eu"


app = romeways.App(state=AppState(), shutdown_timeout=5.0)
assert_type(app, romeways.App[AppState])
assert_type(app.state, AppState)
assert_type(romeways.App().state, romeways.State)  # no state given: the State namespace

config = RegionQueueConfig(connector_name="mem", queue=Queue())


@app.on_startup
async def open_db() -> None:
    app.state.db = "postgres://"


@app.queue_consumer(queue_name="orders", config=config)
async def handle(message: romeways.Message[Order]) -> None:
    assert_type(message.payload, Order)
    assert_type(message.attempt, int)  # 1, then one more per resend
    assert_type(app.state.db, str | None)
    ctx = romeways.context()
    assert_type(ctx.config, romeways.GenericQueueConfig)
    assert_type(ctx.config_as(RegionQueueConfig), RegionQueueConfig)
    assert_type(ctx.config_as(RegionQueueConfig).region, str)
    assert_type(ctx.state_as(AppState).db, str | None)
    assert_type(ctx.message, romeways.Message[object] | None)
    assert_type(ctx.connector.config, romeways.GenericQueueConfig)
    assert_type(ctx.connector.connector_config, romeways.GenericConnectorConfig)
    assert_type(ctx.attempt, int | None)  # None only before decoding (middleware)
    assert_type(ctx.metadata, romeways.MessageMetadata | None)  # None: the connector tells none
    assert_type(ctx.key, bytes | None)
    assert_type(ctx.headers, tuple[tuple[str, bytes], ...])
    assert_type(ctx.header("traceparent"), bytes | None)
    assert_type(ctx.timestamp, float | None)
    assert_type(ctx.position, tuple[tuple[str, str | int], ...])
    assert_type(ctx.topic, str | None)  # the position's pairs of these names (Kafka)
    assert_type(ctx.partition, int | None)
    assert_type(ctx.offset, int | None)
    if ctx.metadata is not None:
        assert_type(ctx.metadata.where(), str)
        assert_type(ctx.metadata.delivery_count, int | None)


class Tracing(romeways.Middleware):
    async def before(self, ctx: romeways.MessageContext) -> None:
        assert_type(ctx.header("traceparent"), bytes | None)  # middleware sees them too


class TracedConnector(romeways.MemoryQueueConnector):
    """A connector with the optional capabilities, checked against their protocols."""

    def message_metadata(self, delivery: int) -> romeways.MessageMetadata | None:
        return romeways.MessageMetadata(key=b"k", position=(("queue", "q"), ("index", delivery)))

    async def consumer_lag(self) -> dict[str, int]:
        return {"q": 0}


provides: romeways.ProvidesMetadata = TracedConnector(
    connector_config=romeways.MemoryConnectorConfig(connector_name="mem"), config=config
)
reports: romeways.ReportsLag = TracedConnector(
    connector_config=romeways.MemoryConnectorConfig(connector_name="mem"), config=config
)


def typed_handler() -> romeways.AsyncHandler:
    # A handler kept in a variable: AsyncHandler is what queue_consumer takes.
    return handle


def takes_any_app(some_app: romeways.App) -> None:
    # A bare App annotation takes an App of any state type.
    print(some_app.routes)


takes_any_app(app)
takes_any_app(romeways.App())
