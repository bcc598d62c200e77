"""Union payloads: a handle typed as the union, from queue_handle or from the handler."""

from __future__ import annotations

from multiprocessing import Queue
from typing import assert_type

import msgspec

import romeways


class Refund(msgspec.Struct, tag=True):
    order_id: int


class Charge(msgspec.Struct, tag=True):
    cents: int


app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="money", config=config)
async def on_money(message: romeways.Message[Refund | Charge]) -> None:
    match message.payload:
        case Refund(order_id=order_id):
            assert_type(order_id, int)
        case Charge(cents=cents):
            assert_type(cents, int)


money = app.queue_handle("money", Refund | Charge, config=config)
assert_type(money, romeways.QueueHandle[Refund | Charge])
assert_type(app.publisher(on_money), romeways.QueueHandle[Refund | Charge])
assert_type(app.queue_handle("ids", list[int], config=config), romeways.QueueHandle[list[int]])
assert_type(app.queue_handle("text", str, config=config), romeways.QueueHandle[str])
assert_type(
    romeways.queue_handle("maybe", int | None, config=config), romeways.QueueHandle[int | None]
)


async def produce() -> None:
    await money.publish(Refund(order_id=1))
    await romeways.publish(money, Charge(cents=250))
