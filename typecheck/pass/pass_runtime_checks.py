"""Issue 14's runtime half, as typed code writes it: a bound-method handler's publisher, the
romeways 0.2 connector constructor, an in-process-only connector, config errors caught."""

from __future__ import annotations

from collections.abc import Sequence
from multiprocessing import Queue
from typing import Any, assert_type

import msgspec

import romeways


class Order(msgspec.Struct, frozen=True):
    id: int


class Service:
    async def handle(self, message: romeways.Message[Order]) -> None:
        print(message.payload.id)


app = romeways.App()
service = Service()
orders = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
app.queue_consumer(queue_name="orders", config=orders)(service.handle)
assert_type(app.publisher(service.handle), romeways.QueueHandle[Order])

# romeways 0.2 built connectors without a queue name; romeways itself always passes one.
memory = romeways.MemoryConnectorConfig(connector_name="mem")
legacy = romeways.MemoryQueueConnector(connector_config=memory, config=orders)
assert_type(legacy.queue_name, str)


class LocalConnector(romeways.AQueueConnector[romeways.MemoryConnectorConfig, Any]):
    in_process_only = True  # its backend lives in this process: no worker processes

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        pass


app.connector_register(connector=LocalConnector, config=memory)
assert_type(LocalConnector.in_process_only, bool)

try:
    romeways.App(shutdown_timeout=0)
except romeways.ConfigError as exc:
    print(exc)
options: dict[str, Any] = {"connector_name": "mem"}  # read from a file, say
try:
    romeways.MemoryQueueConfig(**options)
except romeways.ConfigFieldError as exc:  # a missing or unknown field; also a TypeError
    assert_type(exc, romeways.ConfigFieldError)
