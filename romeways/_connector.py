"""The connector protocol every backend implements, and ``AQueueConnector``, its base class."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Generic, Protocol, runtime_checkable

import msgspec
from typing_extensions import TypeVar

from ._config import GenericConnectorConfig, GenericQueueConfig

ConnectorConfigT = TypeVar(
    "ConnectorConfigT", bound=GenericConnectorConfig, default=GenericConnectorConfig
)
QueueConfigT = TypeVar("QueueConfigT", bound=GenericQueueConfig, default=GenericQueueConfig)
ConnectorConfigT_co = TypeVar(
    "ConnectorConfigT_co",
    bound=GenericConnectorConfig,
    covariant=True,
    default=GenericConnectorConfig,
)
QueueConfigT_co = TypeVar(
    "QueueConfigT_co", bound=GenericQueueConfig, covariant=True, default=GenericQueueConfig
)
ConnectorConfigT_contra = TypeVar(
    "ConnectorConfigT_contra", bound=GenericConnectorConfig, contravariant=True
)
QueueConfigT_contra = TypeVar("QueueConfigT_contra", bound=GenericQueueConfig, contravariant=True)


@runtime_checkable
class Connector(Protocol[ConnectorConfigT_co, QueueConfigT_co]):
    """One queue's link to a backend; romeways builds one per registered queue, in the process
    that consumes it, as ``cls(connector_config=..., queue_name=..., config=...)``.

    Messages are numbered in the order ``get_messages`` returns them, from 0 for the first one
    this instance ever returned; ``resend`` and ``ack`` name messages by that delivery number.
    """

    @property
    def connector_config(self) -> ConnectorConfigT_co:
        """The connector config this instance was built with."""
        ...

    @property
    def config(self) -> QueueConfigT_co:
        """The config of the queue this instance consumes."""
        ...

    async def on_start(self) -> None:
        """Connect; called once in the worker's own process and event loop before any fetch."""

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        """Up to ``max_chunk_size`` messages in queue order, waiting at most ``config.frequency``
        seconds for the first one (return an empty sequence then), without blocking the loop."""
        ...

    async def send_messages(self, message: bytes) -> None:
        """Put one message on this queue."""

    async def resend(self, delivery: int, message: bytes) -> None:
        """Put ``message`` (the envelope of delivery ``delivery``) back on the queue, durably,
        before ``ack`` marks the original finished."""

    async def ack(self, deliveries: Sequence[int]) -> None:
        """These deliveries are finished (handled, resent or dead-lettered); never called for
        one a shutdown interrupted. Commit what the backend can."""

    async def close(self) -> None:
        """Release the backend; called once on shutdown, after the last ``ack``."""


class MessageMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """What a backend tells about one delivered message besides its bytes, for
    ``romeways.context()``, middleware and log fields.

    ``key`` and ``headers`` are what the message was published with (where the backend carries
    them); ``timestamp`` is when the backend recorded it (seconds since the epoch, UTC);
    ``position`` names where it is in the backend, backend-neutral (Kafka: ``topic``,
    ``partition``, ``offset``; Redis Streams: ``stream``, ``id``; ...); ``delivery_count`` is how
    many times the backend has delivered it, this time included, where the backend counts.
    """

    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: float | None = None
    position: tuple[tuple[str, str | int], ...] = ()
    delivery_count: int | None = None

    def header(self, name: str) -> bytes | None:
        """The first header called ``name``, or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def where(self) -> str:
        """The position as ``name=value`` pairs (``topic=orders partition=2 offset=41``)."""
        return " ".join(f"{name}={value}" for name, value in self.position)


@runtime_checkable
class ProvidesMetadata(Protocol):
    """Optional connector capability: the metadata of an unfinished delivery (called while it
    is handled, before its ``ack``), or None when the backend has none for it."""

    def message_metadata(self, delivery: int) -> MessageMetadata | None: ...


@runtime_checkable
class ReportsLag(Protocol):
    """Optional connector capability: per source this consumer reads (a Kafka partition as
    ``"topic:partition"``, a stream, a queue), how many messages wait that it has not fetched;
    for the ``romeways_consumer_lag`` metric. Must be cheap: it is called at every report."""

    async def consumer_lag(self) -> Mapping[str, int]: ...


@runtime_checkable
class CountsDeliveries(Protocol):
    """Optional connector capability: the deliveries of the chunk ``get_messages`` just
    returned that the backend has delivered more often than the queue allows, each with the
    reason; the worker dead-letters them (hook, then ack) without handling them again. For a
    message that kills its worker every time: it is never acknowledged, and the backend counts
    each delivery (a RabbitMQ quorum queue's ``x-delivery-count``, a Redis pending entry's
    delivery count, a JetStream ``num_delivered``). Called once per chunk; must be cheap."""

    def exhausted_deliveries(self) -> Mapping[int, str]: ...


class ConnectorFactory(Protocol[ConnectorConfigT_contra, QueueConfigT_contra]):
    """What ``connector_register`` takes: a connector class, whose keyword arguments fix which
    connector config (checked against ``config``) and queue config it accepts."""

    def __call__(
        self,
        *,
        connector_config: ConnectorConfigT_contra,
        queue_name: str,
        config: QueueConfigT_contra,
    ) -> Connector[Any, Any]: ...


class AQueueConnector(Generic[ConnectorConfigT, QueueConfigT]):
    """Base class for connectors (the romeways 0.2 name): implement ``on_start``,
    ``get_messages`` and ``send_messages``; ``resend``, ``ack`` and ``close`` have defaults
    (resend sends, ack and close do nothing) that a backend with acknowledgements overrides.

    Set ``in_process_only = True`` on a connector whose backend lives in the registering
    process's memory (a worker process would never see its messages): ``spawn_process=True``
    and ``App.workers > 1`` are then refused with a RegistrationError.
    """

    in_process_only: ClassVar[bool] = False

    def __init__(
        self,
        connector_config: ConnectorConfigT,
        config: QueueConfigT,
        *,
        queue_name: str | None = None,
    ) -> None:
        # romeways always passes queue_name; 0.2 code builds connectors without it.
        self._connector_config = connector_config
        self._queue_name = queue_name if queue_name is not None else ""
        self._config = config

    @property
    def connector_config(self) -> ConnectorConfigT:
        return self._connector_config

    @property
    def config(self) -> QueueConfigT:
        return self._config

    @property
    def queue_name(self) -> str:
        """The name of the queue this instance consumes; "" for one built without it (as
        romeways 0.2 code does: ``Connector(connector_config=..., config=...)``)."""
        return self._queue_name

    async def on_start(self) -> None:
        """Connect to the backend."""

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        raise NotImplementedError(f"{type(self).__name__} must implement get_messages()")

    async def send_messages(self, message: bytes) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement send_messages()")

    async def resend(self, delivery: int, message: bytes) -> None:
        await self.send_messages(message)

    async def ack(self, deliveries: Sequence[int]) -> None:
        return None

    async def close(self) -> None:
        return None


_PROTOCOL_METHODS = ("on_start", "get_messages", "send_messages", "resend", "ack", "close")


def config_types(connector: type[Any]) -> tuple[type[Any], type[Any]]:
    """The (connector config, queue config) classes a connector class accepts, read from its
    ``AQueueConnector[...]`` base or its ``__init__`` annotations; the generic ones when unknown."""
    for klass in connector.__mro__:
        for base in klass.__dict__.get("__orig_bases__", ()):
            if typing.get_origin(base) in (AQueueConnector, Connector):
                args = typing.get_args(base)
                if len(args) == 2 and all(isinstance(a, type) for a in args):
                    return (
                        _or_generic(args[0], GenericConnectorConfig),
                        _or_generic(args[1], GenericQueueConfig),
                    )
    try:
        hints = typing.get_type_hints(connector.__init__)
    except Exception:  # unresolvable annotations: fall back to the generic configs
        hints = {}
    found_c = hints.get("connector_config", GenericConnectorConfig)
    found_q = hints.get("config", GenericQueueConfig)
    return _or_generic(found_c, GenericConnectorConfig), _or_generic(found_q, GenericQueueConfig)


def _or_generic(found: object, generic: type[Any]) -> type[Any]:
    """``found`` if it is a config class; typing.Any (a class since Python 3.11, but refused by
    isinstance()) and anything else that is not a class mean any config."""
    return found if isinstance(found, type) and found is not Any else generic


def in_process_only(connector: object) -> bool:
    """Whether the connector class says its backend lives only in the registering process
    (``in_process_only = True``, optional for classes not built on AQueueConnector)."""
    return getattr(connector, "in_process_only", False) is True


def takes_queue_name(connector: type[Any]) -> bool:
    """Whether ``connector(..., queue_name=...)`` is accepted, as romeways always builds it; a
    0.2 connector with its own ``__init__(connector_config, config)`` is not."""
    try:
        parameters = inspect.signature(connector).parameters.values()
    except (TypeError, ValueError):  # no signature to read: assume it does
        return True
    return any(
        p.kind is p.VAR_KEYWORD
        or (p.name == "queue_name" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        for p in parameters
    )


def missing_methods(connector: type[Any]) -> list[str]:
    """Protocol methods the connector class lacks or leaves abstract (not coroutine functions)."""
    missing: list[str] = []
    for name in _PROTOCOL_METHODS:
        method = getattr(connector, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            missing.append(name)
            continue
        if name in ("get_messages", "send_messages") and method is getattr(AQueueConnector, name):
            missing.append(name)
    return missing
