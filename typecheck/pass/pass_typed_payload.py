"""Typed payloads: the handler's Message[T] annotation fixes what message.payload is."""

from __future__ import annotations

import dataclasses
from multiprocessing import Queue
from typing import TypedDict, assert_type

import msgspec

import romeways

app = romeways.App()
queue: Queue[bytes] = Queue()
config = romeways.MemoryQueueConfig(connector_name="orders", queue=queue)


class Order(msgspec.Struct, frozen=True):
    id: int
    amount: float
    tags: list[str] = []


@dataclasses.dataclass
class Refund:
    order_id: int


class Audit(TypedDict):
    user: str
    action: str


@app.queue_consumer(queue_name="orders", config=config)
async def on_order(message: romeways.Message[Order]) -> None:
    assert_type(message.payload, Order)
    assert_type(message.payload.amount, float)
    assert_type(message.payload.tags, list[str])


@app.queue_consumer(queue_name="refunds", config=config)
async def on_refund(message: romeways.Message[Refund]) -> None:
    assert_type(message.payload.order_id, int)


@app.queue_consumer(queue_name="audit", config=config)
async def on_audit(message: romeways.Message[Audit]) -> None:
    assert_type(message.payload["user"], str)


@app.queue_consumer(queue_name="numbers", config=config)
async def on_numbers(message: romeways.Message[list[int]]) -> None:
    assert_type(sum(message.payload), int)


@app.queue_consumer(queue_name="raw", config=config)
async def on_raw(message: romeways.Message[bytes]) -> None:
    assert_type(message.payload, bytes)


async def call_directly() -> None:
    # Calling a decorated handler directly (as a unit test would) keeps its types.
    assert_type(await on_order(romeways.Message(payload=Order(id=1, amount=2.0))), None)


order_message = romeways.Message(payload=Order(id=1, amount=2.0))
assert_type(order_message, romeways.Message[Order])
assert_type(order_message.raise_resend_counter(), romeways.Message[Order])
assert_type(order_message.raise_resend_counter().payload, Order)
