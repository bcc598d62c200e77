"""Typed publishing, the message context, app state and middleware, as users write them."""

from __future__ import annotations

from multiprocessing import Queue
from typing import assert_type

import msgspec

import romeways


class Order(msgspec.Struct):
    id: int
    amount: float


app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
audit_config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
audit = app.queue_handle("audit", str, config=audit_config)
assert_type(audit, romeways.QueueHandle[str])


@app.queue_consumer(queue_name="orders", config=config)
async def handle(message: romeways.Message[Order]) -> None:
    ctx = romeways.context()
    assert_type(ctx.attempt, int | None)
    assert_type(ctx.topic, str | None)
    pool: object = ctx.state.pool
    await audit.publish(f"order {message.payload.id} via {pool}")
    await romeways.publish(audit, "done", key=b"k", headers={"h": b"v"})


text_config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="text", config=text_config)
async def text(message: romeways.Message) -> None:
    print(message.payload)


orders = app.publisher(handle)
assert_type(orders, romeways.QueueHandle[Order])
assert_type(app.publisher(text), romeways.QueueHandle[str])


@app.on_startup
async def open_pool() -> None:
    app.state.pool = "a pool"


class Timing(romeways.Middleware):
    async def after(self, ctx: romeways.MessageContext, result: romeways.HandlingResult) -> None:
        assert_type(result.outcome, romeways.Outcome)
        print(ctx.queue_name, result.outcome, result.duration)


app.add_middleware(Timing())


async def produce() -> None:
    await romeways.publish(orders, Order(id=1, amount=2.0))
    await orders.publish(Order(id=2, amount=3.0))
