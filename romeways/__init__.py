"""romeways: a strictly typed framework for queue consumers.

Register ``async def`` handlers per queue with ``queue_consumer``, a connector per backend with
``connector_register``, and run them with ``start()``; or do the same on an explicit ``App``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._app import App as App
from ._app import AsyncHandler as AsyncHandler
from ._asyncapi import asyncapi_document as asyncapi_document
from ._batch import AsyncBatchHandler as AsyncBatchHandler
from ._batch import Batch as Batch
from ._config import GenericConnectorConfig as GenericConnectorConfig
from ._config import GenericQueueConfig as GenericQueueConfig
from ._connector import AQueueConnector as AQueueConnector
from ._connector import Connector as Connector
from ._connector import ConnectorConfigT, QueueConfigT
from ._connector import ConnectorFactory as ConnectorFactory
from ._connector import CountsDeliveries as CountsDeliveries
from ._connector import HoldsResends as HoldsResends
from ._connector import MessageMetadata as MessageMetadata
from ._connector import ProvidesMetadata as ProvidesMetadata
from ._connector import Publisher as Publisher
from ._connector import ReportsLag as ReportsLag
from ._context import ContextFilter as ContextFilter
from ._context import MessageContext as MessageContext
from ._context import State as State
from ._context import context as context
from ._dead_letters import DeadLetterEnvelope as DeadLetterEnvelope
from ._dead_letters import DeadLetterInfo as DeadLetterInfo
from ._dead_letters import DeadLetterQueue as DeadLetterQueue
from ._dead_letters import ReplayResult as ReplayResult
from ._dead_letters import dead_letter_info as dead_letter_info
from ._dead_letters import replay_dead_letters as replay_dead_letters
from ._errors import ConfigError as ConfigError
from ._errors import ConfigFieldError as ConfigFieldError
from ._errors import ConnectorError as ConnectorError
from ._errors import RegistrationError as RegistrationError
from ._errors import ResendException as ResendException
from ._errors import RomewaysError as RomewaysError
from ._errors import WorkerCrashedError as WorkerCrashedError
from ._message import Message as Message
from ._message import PayloadT
from ._middleware import CallNext as CallNext
from ._middleware import HandlingResult as HandlingResult
from ._middleware import Middleware as Middleware
from ._middleware import Outcome as Outcome
from ._publish import Headers as Headers
from ._publish import QueueHandle as QueueHandle
from ._publish import publish as publish
from ._retry import RetryBackoff as RetryBackoff
from ._route import DeadLetter as DeadLetter
from ._route import DeadLetterHook as DeadLetterHook
from ._route import DeadLetterTarget as DeadLetterTarget
from .connectors.memory import MemoryConnectorConfig as MemoryConnectorConfig
from .connectors.memory import MemoryQueueConfig as MemoryQueueConfig
from .connectors.memory import MemoryQueueConnector as MemoryQueueConnector

if TYPE_CHECKING:
    from typing_extensions import TypeForm

    from ._app import QueueConsumerDecorator
    from ._batch import BatchConsumerDecorator
    from .connectors.kafka import KafkaConnectorConfig as KafkaConnectorConfig
    from .connectors.kafka import KafkaQueueConfig as KafkaQueueConfig
    from .connectors.kafka import KafkaQueueConnector as KafkaQueueConnector
    from .connectors.nats import NatsConnectorConfig as NatsConnectorConfig
    from .connectors.nats import NatsQueueConfig as NatsQueueConfig
    from .connectors.nats import NatsQueueConnector as NatsQueueConnector
    from .connectors.rabbitmq import RabbitMQConnectorConfig as RabbitMQConnectorConfig
    from .connectors.rabbitmq import RabbitMQQueueConfig as RabbitMQQueueConfig
    from .connectors.rabbitmq import RabbitMQQueueConnector as RabbitMQQueueConnector
    from .connectors.redis import RedisConnectorConfig as RedisConnectorConfig
    from .connectors.redis import RedisQueueConfig as RedisQueueConfig
    from .connectors.redis import RedisQueueConnector as RedisQueueConnector

__version__ = "0.3.0"

__all__ = [
    "AQueueConnector",
    "App",
    "AsyncBatchHandler",
    "AsyncHandler",
    "Batch",
    "CallNext",
    "ConfigError",
    "ConfigFieldError",
    "Connector",
    "ConnectorError",
    "ConnectorFactory",
    "ContextFilter",
    "CountsDeliveries",
    "DeadLetter",
    "DeadLetterEnvelope",
    "DeadLetterHook",
    "DeadLetterInfo",
    "DeadLetterQueue",
    "DeadLetterTarget",
    "GenericConnectorConfig",
    "GenericQueueConfig",
    "HandlingResult",
    "Headers",
    "HoldsResends",
    "KafkaConnectorConfig",
    "KafkaQueueConfig",
    "KafkaQueueConnector",
    "MemoryConnectorConfig",
    "MemoryQueueConfig",
    "MemoryQueueConnector",
    "Message",
    "MessageContext",
    "MessageMetadata",
    "Middleware",
    "NatsConnectorConfig",
    "NatsQueueConfig",
    "NatsQueueConnector",
    "Outcome",
    "ProvidesMetadata",
    "Publisher",
    "QueueHandle",
    "RabbitMQConnectorConfig",
    "RabbitMQQueueConfig",
    "RabbitMQQueueConnector",
    "RedisConnectorConfig",
    "RedisQueueConfig",
    "RedisQueueConnector",
    "RegistrationError",
    "ReplayResult",
    "ReportsLag",
    "ResendException",
    "RetryBackoff",
    "RomewaysError",
    "State",
    "WorkerCrashedError",
    "asyncapi_document",
    "batch_consumer",
    "connector_register",
    "context",
    "dead_letter_info",
    "default_app",
    "publish",
    "publisher",
    "queue_consumer",
    "queue_handle",
    "replay_dead_letters",
    "start",
]

_KAFKA_NAMES = ("KafkaConnectorConfig", "KafkaQueueConfig", "KafkaQueueConnector")
_RABBITMQ_NAMES = ("RabbitMQConnectorConfig", "RabbitMQQueueConfig", "RabbitMQQueueConnector")
_NATS_NAMES = ("NatsConnectorConfig", "NatsQueueConfig", "NatsQueueConnector")
_REDIS_NAMES = ("RedisConnectorConfig", "RedisQueueConfig", "RedisQueueConnector")


def __getattr__(name: str) -> Any:
    """Each connector's names load its client library on first touch, so ``import romeways``
    never needs it."""
    if name in _KAFKA_NAMES:
        from .connectors import kafka

        return getattr(kafka, name)
    if name in _NATS_NAMES:
        from .connectors import nats

        return getattr(nats, name)
    if name in _RABBITMQ_NAMES:
        from .connectors import rabbitmq

        return getattr(rabbitmq, name)
    if name in _REDIS_NAMES:
        from .connectors import redis

        return getattr(redis, name)
    raise AttributeError(f"module 'romeways' has no attribute {name!r}")


default_app: App[State] = App()
"""The App the module-level functions act on."""


def queue_consumer(
    *,
    queue_name: str,
    config: GenericQueueConfig,
    dead_letter: DeadLetterTarget | None = None,
) -> QueueConsumerDecorator:
    """Register a handler for a queue on the default app (see ``App.queue_consumer``)."""
    return default_app.queue_consumer(queue_name=queue_name, config=config, dead_letter=dead_letter)


def batch_consumer(
    *,
    queue_name: str,
    config: GenericQueueConfig,
    dead_letter: DeadLetterTarget | None = None,
) -> BatchConsumerDecorator:
    """Register a batch handler for a queue on the default app (see ``App.batch_consumer``)."""
    return default_app.batch_consumer(queue_name=queue_name, config=config, dead_letter=dead_letter)


def connector_register(
    *,
    connector: ConnectorFactory[ConnectorConfigT, QueueConfigT],
    config: ConnectorConfigT,
    spawn_process: bool = False,
) -> None:
    """Register a connector on the default app (see ``App.connector_register``)."""
    default_app.connector_register(connector=connector, config=config, spawn_process=spawn_process)


async def start() -> None:
    """Run the default app until SIGTERM/SIGINT or cancellation (see ``App.start``)."""
    await default_app.start()


def queue_handle(
    queue_name: str,
    payload_type: TypeForm[PayloadT],
    *,
    config: GenericQueueConfig | None = None,
) -> QueueHandle[PayloadT]:
    """A typed handle to publish to a queue of the default app (see ``App.queue_handle``)."""
    return default_app.queue_handle(queue_name, payload_type, config=config)


def publisher(handler: Callable[[Message[PayloadT]], Awaitable[object]]) -> QueueHandle[PayloadT]:
    """The typed handle of the queue a consumer of the default app consumes (``App.publisher``)."""
    return default_app.publisher(handler)
