"""An app on every connector, with payloads of every kind and publish handles, for the AsyncAPI
tests (``romeways asyncapi asyncapi_app:app``). Configs only: nothing connects. Each secret is
a canary the tests look for in the document."""

from __future__ import annotations

import dataclasses
import multiprocessing
from typing import TypedDict

import msgspec

import romeways
from romeways import (
    KafkaConnectorConfig,
    KafkaQueueConfig,
    KafkaQueueConnector,
    MemoryConnectorConfig,
    MemoryQueueConfig,
    MemoryQueueConnector,
    Message,
    NatsConnectorConfig,
    NatsQueueConfig,
    NatsQueueConnector,
    RabbitMQConnectorConfig,
    RabbitMQQueueConfig,
    RabbitMQQueueConnector,
    RedisConnectorConfig,
    RedisQueueConfig,
    RedisQueueConnector,
)

CANARIES = {
    "kafka.sasl_plain_password": "canary-kafka-sasl-4f1c",
    "kafka.ssl_password": "canary-kafka-keypass-9d2e",
    "kafka.sasl_plain_username": "canary-kafka-user-7a3b",
    "redis.url_password": "canary-redis-url-5e8f",
    "redis.password": "canary-redis-field-2c6d",
    "redis.ssl_password": "canary-redis-keypass-8b1a",
    "rabbitmq.url_password": "canary-rabbit-url-3f9c",
    "rabbitmq.ssl_password": "canary-rabbit-keypass-6e4d",
    "nats.password": "canary-nats-field-1a7e",
    "nats.url_password": "canary-nats-url-4b2f",
    "nats.tls_key_password": "canary-nats-keypass-0c5a",
    "nats2.token": "canary-nats-token-9e3b",
    "nats3.url_token": "canary-nats-urltoken-5d0c",
}


class Order(msgspec.Struct, frozen=True):
    """An order to ship."""

    order_id: int
    items: list[str]
    note: str | None = None


@dataclasses.dataclass
class Refund:
    order_id: int
    cents: int


class Audit(TypedDict):
    actor: str
    action: str


class Charge(msgspec.Struct, tag=True):
    cents: int


class Chargeback(msgspec.Struct, tag=True):
    charge_id: str
    reason: str


app = romeways.App()
c = CANARIES
app.connector_register(
    connector=MemoryQueueConnector, config=MemoryConnectorConfig(connector_name="mem")
)
app.connector_register(
    connector=KafkaQueueConnector,
    config=KafkaConnectorConfig(
        connector_name="kafka",
        bootstrap_server="kafka-1.example:9093,kafka-2.example:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=c["kafka.sasl_plain_username"],
        sasl_plain_password=c["kafka.sasl_plain_password"],
        ssl_cafile="/etc/ssl/ca.pem",
        ssl_certfile="/etc/ssl/client.pem",
        ssl_keyfile="/etc/ssl/client.key",
        ssl_password=c["kafka.ssl_password"],
    ),
)
app.connector_register(
    connector=RedisQueueConnector,
    config=RedisConnectorConfig(
        connector_name="redis",
        url=f"rediss://app:{c['redis.url_password']}@redis.example:6380/2",
        ssl_certfile="/etc/ssl/client.pem",
        ssl_keyfile="/etc/ssl/client.key",
        ssl_password=c["redis.ssl_password"],
    ),
)
app.connector_register(
    connector=RedisQueueConnector,
    config=RedisConnectorConfig(
        connector_name="redis2", url="redis://127.0.0.1:6379/0", password=c["redis.password"]
    ),
)
app.connector_register(
    connector=RabbitMQQueueConnector,
    config=RabbitMQConnectorConfig(
        connector_name="rabbit",
        url=f"amqps://app:{c['rabbitmq.url_password']}@rabbit.example/shop",
        ssl_certfile="/etc/ssl/client.pem",
        ssl_keyfile="/etc/ssl/client.key",
        ssl_password=c["rabbitmq.ssl_password"],
    ),
)
app.connector_register(
    connector=NatsQueueConnector,
    config=NatsConnectorConfig(
        connector_name="nats",
        servers=[
            "tls://nats-1.example:4222",
            f"tls://app:{c['nats.url_password']}@nats-2.example:4222",
        ],
        user="app",
        password=c["nats.password"],
        tls_cafile="/etc/ssl/ca.pem",
        tls_certfile="/etc/ssl/client.pem",
        tls_keyfile="/etc/ssl/client.key",
        tls_key_password=c["nats.tls_key_password"],
    ),
)
app.connector_register(
    connector=NatsQueueConnector,
    config=NatsConnectorConfig(
        connector_name="nats2", servers="nats-3.example:4222", token=c["nats2.token"]
    ),
)

app.connector_register(
    connector=NatsQueueConnector,
    config=NatsConnectorConfig(
        connector_name="nats3", servers=f"nats://{c['nats3.url_token']}@nats-4.example:4222"
    ),
)

audit_queue: multiprocessing.Queue[bytes] = multiprocessing.Queue()
raw_queue: multiprocessing.Queue[bytes] = multiprocessing.Queue()


@app.queue_consumer(
    queue_name="audit", config=MemoryQueueConfig(connector_name="mem", queue=audit_queue)
)
async def record_audit(message: Message[Audit]) -> None:
    """Keep who did what."""


@app.queue_consumer(
    queue_name="orders",
    config=KafkaQueueConfig(connector_name="kafka", topic="shop.orders", group_id="shipping"),
)
async def ship(message: Message[Order]) -> None:
    """Ship an order."""


@app.queue_consumer(
    queue_name="refunds",
    config=RedisQueueConfig(connector_name="redis", stream="refunds", group="accounting"),
)
async def refund(message: Message[Refund]) -> None:
    pass


@app.queue_consumer(
    queue_name="notes",
    config=RabbitMQQueueConfig(connector_name="rabbit", queue="notes", retries=5),
)
async def take_note(message: Message) -> None:
    pass


@app.queue_consumer(
    queue_name="payments",
    config=NatsQueueConfig(
        connector_name="nats", stream="PAYMENTS", subject="payments.in", durable="ledger"
    ),
)
async def settle(message: Message[Charge | Chargeback]) -> None:
    pass


orders = app.publisher(ship)
orders_again = app.publisher(ship)  # the same handle: one send operation
notes = app.queue_handle("notes", str)
invoices = app.queue_handle(
    "invoices",
    list[int],
    config=KafkaQueueConfig(connector_name="kafka", topic="shop.invoices", group_id="billing"),
)
raw = app.queue_handle(
    "raw", bytes, config=MemoryQueueConfig(connector_name="mem", queue=raw_queue)
)
alerts = app.queue_handle(
    "alerts",
    str,
    config=NatsQueueConfig(connector_name="nats2", stream="ALERTS", subject="alerts", durable="x"),
)
