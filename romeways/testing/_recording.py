"""``RecordingConnector``: a connector that wraps another and records, as typed events, every call
made on it (what a worker, or ``romeways.publish``, asked of the connector, in order).

The contract suite checks a worker's calls with it, and the fault suite writes them to its ledger;
use it to see what romeways does with your own connector::

    events: list[ConnectorEvent] = []
    app.connector_register(connector=RecordingConnector.wrap(MyConnector, events=events), ...)
    ...
    assert [e for e in events if isinstance(e, Acked)] == [...]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeAlias, TypeVar, cast

import msgspec

from .._config import GenericConnectorConfig, GenericQueueConfig
from .._connector import (
    Connector,
    ConnectorConfigT,
    ConnectorFactory,
    HoldsResends,
    MessageMetadata,
    ProvidesMetadata,
    Publisher,
    QueueConfigT,
    ReportsLag,
    config_types,
    in_process_only,
)

_C = TypeVar("_C", bound=GenericConnectorConfig)
_Q = TypeVar("_Q", bound=GenericQueueConfig)


class Started(msgspec.Struct, frozen=True):
    """``on_start()`` was called (recorded before the wrapped connector's runs)."""


class Fetched(msgspec.Struct, frozen=True):
    """``get_messages(max_chunk_size)`` returned ``messages``, deliveries ``first`` on."""

    max_chunk_size: int
    first: int
    messages: tuple[bytes, ...]

    @property
    def deliveries(self) -> range:
        """The delivery numbers of ``messages``."""
        return range(self.first, self.first + len(self.messages))


class Sent(msgspec.Struct, frozen=True):
    """``send_messages(message)`` returned."""

    message: bytes


class Published(msgspec.Struct, frozen=True):
    """``publish(message, key=..., headers=...)`` returned (connectors that are Publishers)."""

    message: bytes
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class Resent(msgspec.Struct, frozen=True):
    """``resend(delivery, message)`` returned; ``original`` is what that delivery was fetched
    as (None for a delivery this connector never handed out)."""

    delivery: int
    original: bytes | None
    message: bytes


class Acked(msgspec.Struct, frozen=True):
    """``ack(deliveries)`` was called (recorded before the wrapped connector's runs);
    ``messages`` are what they were fetched as (None for one never handed out)."""

    deliveries: tuple[int, ...]
    messages: tuple[bytes | None, ...]


class Closed(msgspec.Struct, frozen=True):
    """``close()`` was called (recorded before the wrapped connector's runs)."""


ConnectorEvent: TypeAlias = Started | Fetched | Sent | Published | Resent | Acked | Closed
"""What a RecordingConnector records, one per call."""

OnEvent: TypeAlias = Callable[["RecordingConnector[Any, Any]", ConnectorEvent], None]
"""Called with the recording connector and each event it records."""


class RecordingConnector(Generic[ConnectorConfigT, QueueConfigT]):
    """Wraps the connector ``inner``: every protocol call is passed on, and recorded as a typed
    event in ``events`` (and given to ``on_event``). Deliveries are numbered as the worker
    numbers them; ``message(delivery)`` is what a delivery was fetched as (kept for the life of
    the recorder: a test tool, not for production).

    ``RecordingConnector.wrap(MyConnector)`` is a connector class to register in place of
    ``MyConnector``: each instance it makes wraps a new ``MyConnector`` and keeps the optional
    capabilities the class has (``message_metadata``, ``consumer_lag``, ``publish``, held
    resends, ``in_process_only``)."""

    def __init__(
        self,
        inner: Connector[ConnectorConfigT, QueueConfigT],
        *,
        events: list[ConnectorEvent] | None = None,
        on_event: OnEvent | None = None,
    ) -> None:
        self.inner = inner
        self.events: list[ConnectorEvent] = events if events is not None else []
        self._on_event = on_event
        self._fetched: list[bytes] = []

    @classmethod
    def wrap(
        cls,
        connector: ConnectorFactory[_C, _Q],
        *,
        events: list[ConnectorEvent] | None = None,
        on_event: OnEvent | None = None,
    ) -> ConnectorFactory[_C, _Q]:
        """A connector class whose instances wrap a new ``connector`` each, all recording into
        ``events`` (one list for every instance) and calling ``on_event``; it takes the configs
        ``connector`` takes and has its optional capabilities."""
        mixins = tuple(
            mixin
            for protocol, mixin in _CAPABILITIES
            if isinstance(connector, type) and issubclass(connector, protocol)
        )

        def __init__(
            self: RecordingConnector[Any, Any],
            *,
            connector_config: _C,
            queue_name: str,
            config: _Q,
        ) -> None:
            inner = connector(
                connector_config=connector_config, queue_name=queue_name, config=config
            )
            RecordingConnector.__init__(self, inner, events=events, on_event=on_event)

        connector_type, queue_type = (
            config_types(connector) if isinstance(connector, type) else (Any, Any)
        )
        __init__.__annotations__ = {
            "connector_config": connector_type,
            "queue_name": str,
            "config": queue_type,
            "return": None,
        }
        name = getattr(connector, "__name__", type(connector).__name__)
        namespace: dict[str, object] = {
            "__init__": __init__,
            "__doc__": f"{name}, recorded by romeways.testing.RecordingConnector.",
            "__module__": cls.__module__,
            "in_process_only": in_process_only(connector),
        }
        return cast(
            "ConnectorFactory[_C, _Q]",
            type(f"Recording{name}", (*mixins, cls), namespace),
        )

    def record(self, event: ConnectorEvent) -> None:
        """Append ``event`` to ``events`` and give it to ``on_event``."""
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(self, event)

    def message(self, delivery: int) -> bytes | None:
        """What delivery ``delivery`` was fetched as, or None if it never was."""
        return self._fetched[delivery] if 0 <= delivery < len(self._fetched) else None

    @property
    def connector_config(self) -> ConnectorConfigT:
        return self.inner.connector_config

    @property
    def config(self) -> QueueConfigT:
        return self.inner.config

    async def on_start(self) -> None:
        self.record(Started())
        await self.inner.on_start()

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        chunk = await self.inner.get_messages(max_chunk_size)
        first = len(self._fetched)
        self._fetched.extend(chunk)
        self.record(Fetched(max_chunk_size, first, tuple(chunk)))
        return chunk

    async def send_messages(self, message: bytes) -> None:
        await self.inner.send_messages(message)
        self.record(Sent(message))

    async def resend(self, delivery: int, message: bytes) -> None:
        await self.inner.resend(delivery, message)
        self.record(Resent(delivery, self.message(delivery), message))

    async def ack(self, deliveries: Sequence[int]) -> None:
        numbers = tuple(deliveries)
        self.record(Acked(numbers, tuple(self.message(d) for d in numbers)))
        await self.inner.ack(deliveries)

    async def close(self) -> None:
        self.record(Closed())
        await self.inner.close()

    def __repr__(self) -> str:
        return f"RecordingConnector({self.inner!r})"


class _WithMetadata(RecordingConnector[Any, Any]):
    def message_metadata(self, delivery: int) -> MessageMetadata | None:
        return cast(ProvidesMetadata, self.inner).message_metadata(delivery)


class _WithLag(RecordingConnector[Any, Any]):
    async def consumer_lag(self) -> Mapping[str, int]:
        return await cast(ReportsLag, self.inner).consumer_lag()


class _WithPublish(RecordingConnector[Any, Any]):
    async def publish(
        self,
        message: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        await cast(Publisher, self.inner).publish(message, key=key, headers=headers)
        self.record(Published(message, key, tuple(headers or ())))


class _WithHeld(RecordingConnector[Any, Any]):
    async def return_held(self, within: float) -> Sequence[bytes]:
        return await cast(HoldsResends, self.inner).return_held(within)


_CAPABILITIES: tuple[tuple[type[Any], type[RecordingConnector[Any, Any]]], ...] = (
    (ProvidesMetadata, _WithMetadata),
    (ReportsLag, _WithLag),
    (Publisher, _WithPublish),
    (HoldsResends, _WithHeld),
)
