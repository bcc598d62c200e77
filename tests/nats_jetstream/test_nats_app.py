"""The NATS connector under a real App on the shared server: ``romeways.publish`` through a typed
handle with a key and headers, read back in the handler through ``romeways.context()`` (its
connector's ``message_metadata`` for its delivery), a resend, a delayed resend and a dead letter
(the hook, then the ack), and a worker process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from faults.natshelp import consumer_info, run

import romeways
from romeways.connectors.nats import NatsQueueConnector

from .conftest import QueueFactory

pytestmark = pytest.mark.timeout(60)


class Order(msgspec.Struct):
    id: int
    amount: float


def test_publish_with_key_and_headers_resend_and_dead_letter_in_an_app(
    new_queue: QueueFactory,
) -> None:
    cc, qc = new_queue(frequency=0.2, retries=1)
    app = romeways.App(shutdown_timeout=3.0)
    app.connector_register(connector=NatsQueueConnector, config=cc)
    seen: dict[int, list[Any]] = {}
    letters: list[romeways.DeadLetter] = []

    async def park(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="orders", config=qc, dead_letter=park)
    async def handle(message: romeways.Message[Order]) -> None:
        ctx = romeways.context()
        metadata = getattr(ctx.connector, "message_metadata")(ctx.delivery)  # noqa: B009
        seen.setdefault(message.payload.id, []).append((message.attempt, metadata))
        if message.payload.id == 2 and message.rw_resend_times == 0:
            raise romeways.ResendException()
        if message.payload.id == 3 and message.rw_resend_times == 0:
            raise romeways.ResendException(delay=0.5)
        if message.payload.id == 4:
            raise ValueError("never valid")

    orders = app.publisher(handle)

    async def scenario() -> None:
        task = asyncio.create_task(app.start())
        try:
            await orders.publish(Order(id=1, amount=9.5), key=b"customer-42", headers={"t": b"x"})
            for i in (2, 3, 4):
                await romeways.publish(orders, Order(id=i, amount=1.0))
            deadline = time.monotonic() + 20
            while not (len(seen.get(2, ())) == 2 and len(seen.get(3, ())) == 2 and letters):
                assert time.monotonic() < deadline, seen
                assert not task.done(), task
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
        finally:
            app.stop()
            await asyncio.wait_for(task, 10)
            await app.close_publishers()

    run(scenario(), timeout=40)
    ((attempt, meta),) = seen[1]
    assert attempt == 1 and meta is not None
    assert meta.key == b"customer-42" and meta.header("t") == b"x"
    assert dict(meta.position)["stream"] == qc.stream and meta.delivery_count == 1
    assert [a for a, _ in seen[2]] == [1, 2] and [a for a, _ in seen[3]] == [1, 2]
    assert seen[2][1][1].header("Nats-Msg-Id").startswith(b"romeways-resend:")
    assert [letter.reason for letter in letters] == ["handler raised ValueError: never valid"]
    info = run(consumer_info(cc.shown_servers(), qc.stream, qc.durable))
    assert info.num_pending == 0 and info.num_ack_pending == 0, "not everything was acked"
