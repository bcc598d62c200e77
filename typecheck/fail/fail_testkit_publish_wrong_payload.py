"""A test publishing a payload of the wrong type through the queue's typed handle."""

from multiprocessing import Queue

import msgspec

import romeways
from romeways.testing import TestKit


class Order(msgspec.Struct):
    id: int


app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())


@app.queue_consumer(queue_name="orders", config=config)
async def handle(message: romeways.Message[Order]) -> None:
    print(message.payload.id)


orders = app.publisher(handle)


async def produce() -> None:
    async with TestKit(app) as kit:
        await kit.publish(orders, "five")  # expect: call-overload
