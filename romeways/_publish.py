"""Typed publishing: ``QueueHandle[T]`` and ``publish(handle, payload)``.

A handle names one queue and the payload type its consumer expects, so mypy rejects publishing
anything else. The payload is encoded with msgspec as the consumer decodes it (text for ``str``,
the bytes for ``bytes``, JSON otherwise) and sent through the queue's connector: ``publish()``
when the connector has it (Kafka: a produce with key and headers, awaited; memory: a queue put),
else ``send_messages()`` (a connector that carries bytes only), as found once per connector
instance. Connector instances used for publishing are made per event loop and process, are
never started for consuming, and are closed by ``app.close_publishers()`` (``start()`` does it
in every worker process on shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import typing
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeAlias, cast

import msgspec

from ._config import GenericQueueConfig
from ._connector import Connector, Publisher
from ._errors import RegistrationError, RomewaysError
from ._message import Codec, PayloadT
from ._route import Route, describe

if TYPE_CHECKING:
    from typing_extensions import TypeForm

    from ._app import App

logger = logging.getLogger("romeways")

Headers: TypeAlias = Mapping[str, bytes] | Sequence[tuple[str, bytes]]
"""Message headers, as a mapping or as (name, value) pairs; for connectors that carry them."""


Sink = Callable[
    [str, str, bytes, bytes | None, Sequence[tuple[str, bytes]] | None], Awaitable[None]
]
"""Where an app's publishes go instead of its connectors (the test kit): called with
connector name, queue name, data, key and headers."""

_SINKS: weakref.WeakKeyDictionary[App, Sink] = weakref.WeakKeyDictionary()

Deliver = Callable[[list[tuple[str, bytes]] | None], Awaitable[None]]
"""Sends the message being published, with the headers given (the publish hook's last step)."""


class PublishHook(Protocol):
    """Wraps every publish of an app (``app.publish_hook``; ``romeways.otel.instrument(app)``
    sets one that makes a producer span and puts its trace context in the headers). It calls
    ``deliver(headers)`` once; ``carries_headers`` is False for a connector that cannot carry
    headers (deliver then refuses any)."""

    async def __call__(
        self,
        app: App,
        config: GenericQueueConfig,
        queue_name: str,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        carries_headers: bool,
        deliver: Deliver,
    ) -> None: ...


_PublisherKey = tuple[str, str]


class _Outlet:
    """A connector instance made for publishing, and the same as a Publisher when it is one
    (checked once, when it is made)."""

    __slots__ = ("connector", "publisher")

    def __init__(self, connector: Connector[Any, Any]) -> None:
        self.connector = connector
        self.publisher = connector if isinstance(connector, Publisher) else None


_PUBLISHERS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[App, dict[_PublisherKey, _Outlet]]
] = weakref.WeakKeyDictionary()


class QueueHandle(Generic[PayloadT]):
    """A queue to publish ``PayloadT`` payloads to, made by ``app.queue_handle(...)`` or
    ``app.publisher(handler)``. ``await handle.publish(payload)`` or
    ``await romeways.publish(handle, payload)``."""

    __slots__ = ("_app", "_codec", "_config", "_instance_of", "payload_type", "queue_name")

    def __init__(
        self,
        *,
        app: App,
        queue_name: str,
        payload_type: TypeForm[PayloadT],
        config: GenericQueueConfig | None = None,
    ) -> None:
        where = f"queue handle for {queue_name!r}"
        if not isinstance(cast(object, queue_name), str) or not queue_name:
            raise RegistrationError(f"{where}: queue_name must be a non-empty str")
        if config is not None and not isinstance(cast(object, config), GenericQueueConfig):
            raise RegistrationError(
                f"{where}: config is a {type(config).__name__}, but it must be a "
                "GenericQueueConfig (for example romeways.MemoryQueueConfig)"
            )
        try:
            self._codec: Codec[PayloadT] = Codec(payload_type)
        except TypeError as exc:
            raise RegistrationError(
                f"{where}: msgspec cannot encode and decode the payload type {payload_type!r} "
                f"({exc})"
            ) from exc
        self._app = app
        self.queue_name = queue_name
        self.payload_type = payload_type
        self._config = config
        # Plain classes are checked with isinstance; anything else by decoding what was encoded.
        plain = isinstance(cast(object, payload_type), type) and not typing.is_typeddict(
            payload_type
        )
        self._instance_of: type[Any] | None = cast("type[Any]", payload_type) if plain else None

    @property
    def config(self) -> GenericQueueConfig:
        """The queue's config: the one given, else that of the app's consumer of the queue."""
        if self._config is not None:
            return self._config
        routes = [r for r in self._app.routes if r.queue_name == self.queue_name]
        if len(routes) == 1:
            return routes[0].config
        if not routes:
            raise RomewaysError(
                f"cannot publish to queue {self.queue_name!r}: this app has no consumer of it; "
                "give its config: app.queue_handle(queue_name, PayloadType, config=...)"
            )
        names = ", ".join(repr(r.connector_name) for r in routes)
        raise RomewaysError(
            f"cannot publish to queue {self.queue_name!r}: consumers of it on connectors "
            f"{names}; give the config of the one to publish to"
        )

    @property
    def connector_name(self) -> str:
        return self.config.connector_name

    def same_target(self, other: QueueHandle[Any]) -> bool:
        """Whether ``other`` publishes the same payload type to the same queue and config."""
        return (
            self.queue_name == other.queue_name
            and self._config == other._config
            and self.payload_type == other.payload_type
        )

    def encode(self, payload: PayloadT) -> bytes:
        """The bytes a consumer of this queue decodes back into ``payload``; a TypeError names
        the queue when ``payload`` is not of the handle's payload type (what mypy reports)."""
        expected = self._instance_of
        if expected is not None:
            if isinstance(payload, expected) or (expected is float and type(payload) is int):
                return self._codec.encode_payload(payload)
            raise self._wrong(payload, "")
        try:
            data = self._codec.encode_payload(payload)
            self._codec.decode(data)
        except (TypeError, msgspec.ValidationError, msgspec.EncodeError) as exc:
            raise self._wrong(payload, f" ({exc})") from exc
        return data

    def _wrong(self, payload: object, detail: str) -> TypeError:
        type_name = getattr(self.payload_type, "__name__", repr(self.payload_type))
        return TypeError(
            f"cannot publish a {type(payload).__name__} to queue {self.queue_name!r}: its handle "
            f"takes {type_name}{detail}"
        )

    async def publish(
        self,
        payload: PayloadT,
        *,
        key: bytes | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Encode ``payload`` and put it on the queue; returns once the connector has it."""
        config = self.config
        await send(
            self._app,
            config,
            self.queue_name,
            self.encode(payload),
            key=key,
            headers=headers,
        )

    def __repr__(self) -> str:
        type_name = getattr(self.payload_type, "__name__", repr(self.payload_type))
        return f"QueueHandle[{type_name}](queue_name={self.queue_name!r})"


_P = ParamSpec("_P")


class Publishable(Protocol[_P]):
    @property
    def publish(self) -> Callable[_P, Awaitable[None]]: ...


async def publish(handle: Publishable[_P], /, *args: _P.args, **kwargs: _P.kwargs) -> None:
    """``publish(handle, payload, *, key=None, headers=None)``: publish ``payload`` to the
    handle's queue (see ``QueueHandle.publish``). Typed by the handle's ``publish``, so mypy
    reports a payload of the wrong type as an ``arg-type`` error on it."""
    await handle.publish(*args, **kwargs)


def handle_for_handler(app: App, handler: Callable[..., Awaitable[object]]) -> QueueHandle[Any]:
    """The handle of the queue ``handler`` consumes in ``app``, typed as the handler's payload."""
    # By equality: ``service.handle`` makes a new bound-method object at each access, equal
    # to the one registered (same function, same instance) but never the same object.
    routes: list[Route[Any]] = [r for r in app.routes if r.handler == handler]
    if not routes:
        raise RegistrationError(
            f"{describe(handler)} is not a registered consumer of this app; decorate it with "
            "@app.queue_consumer(...) first"
        )
    route = routes[0]
    return QueueHandle(
        app=app,
        queue_name=route.queue_name,
        payload_type=route.codec.payload_type,
        config=route.config,
    )


def normalise_headers(headers: Headers | None) -> list[tuple[str, bytes]] | None:
    if headers is None:
        return None
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    for pair in pairs:
        given = cast(object, pair)  # checked at runtime: callers may not be type-checked
        if not (
            isinstance(given, tuple)
            and len(cast(tuple[object, ...], given)) == 2
            and isinstance(cast(object, pair[0]), str)
            and isinstance(cast(object, pair[1]), bytes)
        ):
            raise TypeError(f"headers: give (str, bytes) pairs, got {pair!r}")
    return pairs


async def send(
    app: App,
    config: GenericQueueConfig,
    queue_name: str,
    data: bytes,
    *,
    key: bytes | None = None,
    headers: Headers | None = None,
) -> None:
    """Send encoded bytes to a queue of ``app`` through its connector (or the app's sink)."""
    pairs = normalise_headers(headers)
    if key is not None and not isinstance(cast(object, key), bytes):
        raise TypeError(f"key: give bytes or None, got {type(key).__name__}")
    hook = app.publish_hook
    if hook is None:
        await _deliver(app, config, queue_name, data, key, pairs)
        return
    carries = carries_headers(app, config, queue_name)

    async def deliver(headers: list[tuple[str, bytes]] | None) -> None:
        await _deliver(app, config, queue_name, data, key, headers)

    await hook(app, config, queue_name, key, pairs, carries, deliver)


async def _deliver(
    app: App,
    config: GenericQueueConfig,
    queue_name: str,
    data: bytes,
    key: bytes | None,
    pairs: list[tuple[str, bytes]] | None,
) -> None:
    connector_name = config.connector_name
    sink = _SINKS.get(app)
    if sink is not None:
        await sink(connector_name, queue_name, data, key, pairs)
        return
    outlet = _publisher_for(app, config, queue_name)
    if outlet.publisher is not None:
        await outlet.publisher.publish(data, key=key, headers=pairs)
        return
    if key is not None or pairs:
        raise RomewaysError(
            f"connector {connector_name!r} ({type(outlet.connector).__name__}) cannot carry a "
            "key or headers; publish without them"
        )
    await outlet.connector.send_messages(data)


def carries_headers(app: App, config: GenericQueueConfig, queue_name: str) -> bool:
    """Whether a publish to this queue can carry headers (its connector is a Publisher, or the
    app's publishes go to a sink)."""
    if app in _SINKS:
        return True
    return _publisher_for(app, config, queue_name).publisher is not None


def _publisher_for(app: App, config: GenericQueueConfig, queue_name: str) -> _Outlet:
    connector_name = config.connector_name
    registration = app.connectors.get(connector_name)
    if registration is None:
        known = ", ".join(repr(n) for n in sorted(app.connectors)) or "none"
        raise RomewaysError(
            f"cannot publish to queue {queue_name!r}: connector {connector_name!r} is not "
            f"registered in this app (registered connectors: {known})"
        )
    loop = asyncio.get_running_loop()
    per_app = _PUBLISHERS.setdefault(loop, weakref.WeakKeyDictionary())
    cache = per_app.setdefault(app, {})
    key = (connector_name, queue_name)
    outlet = cache.get(key)
    if outlet is None:
        outlet = cache[key] = _Outlet(
            registration.connector(
                connector_config=registration.config, queue_name=queue_name, config=config
            )
        )
    return outlet


async def close_publishers(app: App) -> None:
    """Close the connectors ``app`` made in this event loop for publishing."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    per_app = _PUBLISHERS.get(loop)
    cache = per_app.pop(app, None) if per_app is not None else None
    for connector in (outlet.connector for outlet in (cache or {}).values()):
        try:
            await connector.close()
        except Exception as exc:  # closing is best effort; the process is going away
            logger.warning(
                "closing the publisher of %s failed: %s: %s",
                type(connector).__name__,
                type(exc).__name__,
                exc,
            )


def set_sink(app: App, sink: Sink | None) -> None:
    """Route ``app``'s publishes to ``sink`` instead of its connectors (None: undo)."""
    if sink is None:
        _SINKS.pop(app, None)
    else:
        _SINKS[app] = sink
