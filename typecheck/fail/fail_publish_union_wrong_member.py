"""A union handle takes only the union's members."""

from multiprocessing import Queue

import msgspec

import romeways


class Refund(msgspec.Struct, tag=True):
    order_id: int


class Charge(msgspec.Struct, tag=True):
    cents: int


app = romeways.App()
config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
money = app.queue_handle("money", Refund | Charge, config=config)


async def produce() -> None:
    await money.publish("refund 1")  # expect: arg-type
