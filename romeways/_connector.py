"""The connector protocol every backend implements, and ``AQueueConnector``, its base class."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Sequence
from typing import Any, Generic, Protocol, runtime_checkable

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
    (resend sends, ack and close do nothing) that a backend with acknowledgements overrides."""

    def __init__(
        self, *, connector_config: ConnectorConfigT, queue_name: str, config: QueueConfigT
    ) -> None:
        self._connector_config = connector_config
        self._queue_name = queue_name
        self._config = config

    @property
    def connector_config(self) -> ConnectorConfigT:
        return self._connector_config

    @property
    def config(self) -> QueueConfigT:
        return self._config

    @property
    def queue_name(self) -> str:
        """The name of the queue this instance consumes."""
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
