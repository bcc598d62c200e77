"""A Kafka consumer app with typed payloads and its own config subclass."""

from __future__ import annotations

import asyncio
from typing import Literal, assert_type

import msgspec

import romeways


class Payment(msgspec.Struct, frozen=True):
    id: str
    amount_cents: int
    status: Literal["done", "failed"]


kafka = romeways.KafkaConnectorConfig(
    connector_name="kafka-main", bootstrap_server=["k1:9092", "k2:9092"], client_id="billing"
)
assert_type(kafka.bootstrap_server, str | list[str])
assert_type(kafka.connector_name, str)

payments = romeways.KafkaQueueConfig(
    connector_name="kafka-main",
    topic="payments",
    group_id="billing",
    max_chunk_size=100,
    frequency=0.5,
    retries=5,
)
assert_type(payments.topic, str)
assert_type(payments.auto_offset_reset, Literal["earliest", "latest"])

app = romeways.App(shutdown_timeout=30.0)


@app.queue_consumer(queue_name="payments", config=payments)
async def on_payment(message: romeways.Message[Payment]) -> None:
    assert_type(message.payload, Payment)
    assert_type(message.payload.status, Literal["done", "failed"])
    if message.payload.status == "failed" and message.rw_resend_times < 2:
        raise romeways.ResendException(delay=5.0)


@app.queue_consumer(
    queue_name="audit",
    config=romeways.KafkaQueueConfig(connector_name="kafka-main", topic="audit", group_id="a"),
)
async def on_audit(message: romeways.Message) -> None:
    assert_type(message.payload, str)


app.connector_register(connector=romeways.KafkaQueueConnector, config=kafka, spawn_process=True)


class TeamKafkaConfig(romeways.KafkaConnectorConfig, frozen=True, kw_only=True):
    team: str


# A subclass of KafkaConnectorConfig is still a Kafka connector config.
app.connector_register(
    connector=romeways.KafkaQueueConnector,
    config=TeamKafkaConfig(connector_name="kafka-team", bootstrap_server="k:9092", team="pay"),
)


def main() -> None:
    asyncio.run(app.start())
