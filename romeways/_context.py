"""Per-message context reachable without globals: ``romeways.context()`` and ``App.state``.

The worker keeps the context of the message it handles (decoding, the handler, resending or
dead-lettering) in a context variable, so the handler, code it calls, middleware and log records
can see which app, connector, queue and attempt the message belongs to, and what the connector
tells about it (key, headers, timestamp, position: ``MessageMetadata``, looked up once, when first
asked for): a ``MessageContext``, or on the inline fast path a ``ChunkCursor`` that makes one
when asked.
"""

from __future__ import annotations

import logging
import types
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from ._connector import Locate, MessageMetadata
from ._errors import RomewaysError

if TYPE_CHECKING:
    from ._app import App
    from ._config import GenericQueueConfig
    from ._connector import Connector
    from ._message import Message
    from ._middleware import Outcome

_T = TypeVar("_T")
_QueueConfigT = TypeVar("_QueueConfigT", bound="GenericQueueConfig")


class State(types.SimpleNamespace):
    """``App.state``: a namespace for what start-up hooks open (a DB pool, an HTTP client) and
    handlers use. Set in each worker process by its own start-up hooks."""


logger = logging.getLogger("romeways")

_KEY_IN_LOGS = 128  # characters of a message key a log field shows at most


class _Unresolved:
    """The metadata of a MessageContext not looked up yet (None means: the connector has none)."""


_UNRESOLVED = _Unresolved()


class ContextSource(Protocol):
    """What a worker tells every message context about itself (one object per worker)."""

    app: App
    connector_name: str
    queue_name: str
    handler: str


class MessageContext(msgspec.Struct, eq=False):
    """What romeways knows about the message being handled right now.

    ``attempt`` is 1 for a first delivery and rises by one with every resend; it is None only
    while the message is not decoded yet (a message that cannot be decoded never gets one; in
    a handler, ``message.attempt`` is the same number, typed ``int``). ``metadata`` is what
    the connector tells about the message (``romeways.ProvidesMetadata``; None when it tells
    nothing): ``key``, ``headers``, ``timestamp`` and ``position`` read
    it, and ``topic``, ``partition`` and ``offset`` are the position's pairs of those names
    (Kafka). ``connector`` is the connector instance consuming the queue; ``delivery`` its
    delivery number of this message. ``message`` is the decoded message once decoded (its
    payload type is the handler's: the handler's own ``message`` parameter is the typed one).
    After the handler, ``outcome`` and ``reason`` say how handling ended and ``resend_delay``
    how long a resend waits before it goes back on the queue.
    """

    # Made per message with middleware, and on demand from a ChunkCursor otherwise: a Struct is
    # built in C (half the cost of a slotted class's __init__), names are read through the
    # source, and the metadata is looked up only when asked for (most handlers never ask).
    _source: ContextSource
    connector: Connector
    delivery: int
    # The connector's ``message_metadata``; called once, on first use.
    _locate: Locate | None = None
    message: Message[object] | None = None
    _metadata: MessageMetadata | _Unresolved | None = _UNRESOLVED
    # Filled in as the worker goes: how handling ended, why, what the handler raised, and the
    # delay of a resend.
    outcome: Outcome | None = None
    reason: str | None = None
    exception: Exception | None = None
    # Seconds until a resend goes back on the queue (retry_backoff or the ResendException's).
    resend_delay: float | None = None
    # In a batch handler (``batch_consumer``) and its middleware: how many messages its batch
    # holds (this context is then its first message's), and the context of every message of
    # the chunk, each with its own outcome once handled. None and () for one message.
    batch_size: int | None = None
    batch_contexts: tuple[MessageContext, ...] = ()

    @property
    def metadata(self) -> MessageMetadata | None:
        """What the connector tells about the message, or None. Looked up once, while the
        message is handled (the connector forgets it once the message is acknowledged)."""
        metadata = self._metadata
        if isinstance(metadata, _Unresolved):
            locate = self._locate
            metadata = self._metadata = None
            if locate is not None:
                try:
                    metadata = self._metadata = locate(self.delivery)
                except Exception as exc:  # a connector's bug must not break a handler or a log
                    logger.warning(
                        "%s: message_metadata(%d) of connector %r failed: %s: %s",
                        self._where(),
                        self.delivery,
                        self.connector_name,
                        type(exc).__name__,
                        exc,
                    )
        return metadata

    @property
    def key(self) -> bytes | None:
        """The key the message was published with, where the backend carries one."""
        metadata = self.metadata
        return None if metadata is None else metadata.key

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """The headers the message was published with, in order (empty without any)."""
        metadata = self.metadata
        return () if metadata is None else metadata.headers

    def header(self, name: str) -> bytes | None:
        """The first header called ``name``, or None."""
        metadata = self.metadata
        return None if metadata is None else metadata.header(name)

    @property
    def timestamp(self) -> float | None:
        """When the backend recorded the message (seconds since the epoch), where it tells."""
        metadata = self.metadata
        return None if metadata is None else metadata.timestamp

    @property
    def position(self) -> tuple[tuple[str, str | int], ...]:
        """Where the message is in the backend, as (name, value) pairs (Kafka: topic,
        partition, offset); empty when the connector does not tell."""
        metadata = self.metadata
        return () if metadata is None else metadata.position

    def _at(self, name: str) -> str | int | None:
        metadata = self.metadata
        if metadata is not None:
            for found, value in metadata.position:
                if found == name:
                    return value
        return None

    @property
    def topic(self) -> str | None:
        """The position's ``topic`` (Kafka), else None."""
        value = self._at("topic")
        return value if isinstance(value, str) else None

    @property
    def partition(self) -> int | None:
        """The position's ``partition`` (Kafka), else None."""
        value = self._at("partition")
        return value if isinstance(value, int) else None

    @property
    def offset(self) -> int | None:
        """The position's ``offset`` (Kafka), else None."""
        value = self._at("offset")
        return value if isinstance(value, int) else None

    @property
    def app(self) -> App:
        return self._source.app

    @property
    def state(self) -> Any:
        """The app's ``state`` (what its start-up hooks set up in this process), untyped:
        ``state_as(AppState)`` gives it typed."""
        return self._source.app.state

    def state_as(self, state_type: type[_T]) -> _T:
        """The app's ``state``, checked to be a ``state_type`` (``App(state=AppState())``);
        raises RomewaysError naming both types otherwise."""
        state: object = self._source.app.state
        if not isinstance(state, state_type):
            raise RomewaysError(
                f"{self._where()}: the app's state is of type {type(state).__name__}, not "
                f"{state_type.__name__}; make the app with App(state={state_type.__name__}(...))"
            )
        return state

    @property
    def config(self) -> GenericQueueConfig:
        """The config of the queue the message came from (``config_as`` gives its own class)."""
        return self.connector.config

    def config_as(self, config_type: type[_QueueConfigT]) -> _QueueConfigT:
        """The queue's config, checked to be a ``config_type`` (say your ``RegionQueueConfig``)
        so its own fields are typed; raises RomewaysError naming both classes otherwise."""
        config: object = self.connector.config
        if not isinstance(config, config_type):
            raise RomewaysError(
                f"{self._where()}: its config is of type {type(config).__name__}, not "
                f"{config_type.__name__}"
            )
        return config

    def _where(self) -> str:
        return f"handler {self.handler} of queue {self.queue_name!r}"

    @property
    def connector_name(self) -> str:
        return self._source.connector_name

    @property
    def queue_name(self) -> str:
        return self._source.queue_name

    @property
    def handler(self) -> str:
        """The handler's ``module.qualname``."""
        return self._source.handler

    @property
    def attempt(self) -> int | None:
        """1 on the first delivery, one more per resend; None until the message is decoded."""
        message = self.message
        return None if message is None else message.rw_resend_times + 1

    def log_fields(self) -> dict[str, object]:
        """The fields log records about this message carry (None ones left out): connector,
        queue, handler, attempt, ``position`` (``topic=orders partition=2 offset=41``), ``key``
        (as text) and, where the position has them (Kafka), topic, partition and offset.
        Headers are not logged (they may carry credentials)."""
        fields: dict[str, object] = {
            "connector": self.connector_name,
            "queue": self.queue_name,
            "handler": self.handler,
        }
        attempt = self.attempt
        if attempt is not None:
            fields["attempt"] = attempt
        metadata = self.metadata
        if metadata is None:
            return fields
        if metadata.position:
            fields["position"] = metadata.where()
        if metadata.key is not None:
            text = metadata.key.decode("utf-8", "backslashreplace")
            fields["key"] = text if len(text) <= _KEY_IN_LOGS else text[:_KEY_IN_LOGS] + "..."
        for name, value in (
            ("topic", self.topic),
            ("partition", self.partition),
            ("offset", self.offset),
        ):
            if value is not None:
                fields[name] = value
        return fields

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.log_fields().items())
        return f"MessageContext({fields})"


class ChunkCursor:
    """The context of whichever message the worker's chunk loop handles inline right now.

    One cursor serves a run of messages whose handlers schedule nothing: the worker moves it
    from message to message rather than setting a new MessageContext in the context variable
    for each (the two cost a tenth of a Kafka drain). A handler that schedules something (a
    task, a callback), which may read the context after the handler returns, keeps its cursor:
    the worker leaves it at that message and goes on with a new one. The MessageContext itself
    is made only when asked for (``romeways.context()``, a log record, a failure)."""

    __slots__ = ("_connector", "_ctx", "_locate", "_source", "delivery", "message")

    def __init__(
        self,
        source: ContextSource,
        connector: Connector[Any, Any],
        locate: Locate | None,
    ) -> None:
        self._source = source
        self._connector = connector
        self._locate = locate
        self._ctx: MessageContext | None = None
        self.delivery = -1
        self.message: Message[object] | None = None

    def context(self) -> MessageContext:
        """The MessageContext of the message the cursor is at: one object per message."""
        ctx = self._ctx
        if ctx is None or ctx.delivery != self.delivery:
            ctx = self._ctx = MessageContext(
                self._source, self._connector, self.delivery, self._locate, self.message
            )
        return ctx


CURRENT_MESSAGE: ContextVar[MessageContext | ChunkCursor | None] = ContextVar(
    "romeways_message", default=None
)


def _current() -> MessageContext | None:
    value = CURRENT_MESSAGE.get()
    return value.context() if isinstance(value, ChunkCursor) else value


def context() -> MessageContext:
    """The context of the message being handled by the calling handler (or code it calls).

    Raises RomewaysError outside the handling of a message."""
    ctx = _current()
    if ctx is None:
        raise RomewaysError(
            "romeways.context() is only available while a message is handled (in a handler, "
            "code it calls, or middleware); use app.state for the rest"
        )
    _ = ctx.metadata  # pinned now, while the connector still knows the message
    return ctx


def current_context() -> MessageContext | None:
    """The context of the message being handled, or None outside handling."""
    ctx = _current()
    if ctx is not None:
        _ = ctx.metadata  # pinned now, as in context()
    return ctx


class ContextFilter(logging.Filter):
    """Adds the current message's ``connector``, ``queue``, ``handler``, ``attempt`` and, where
    the connector tells them, ``position`` and ``key`` (and from Kafka ``topic``, ``partition``
    and ``offset``) to every log record made while it is handled (fields the record already has
    are kept). Installed on the ``romeways`` logger and on the
    handler ``romeways run`` sets up; add it to your own handlers to get the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _current()
        if ctx is None:
            return True
        attrs = record.__dict__
        for name, value in ctx.log_fields().items():
            if attrs.get(name) is None:
                attrs[name] = value
        return True


def install_log_filter(logger: logging.Logger | logging.Handler) -> None:
    """Add a ContextFilter to ``logger`` unless it has one."""
    if not any(isinstance(f, ContextFilter) for f in logger.filters):
        logger.addFilter(ContextFilter())


install_log_filter(logging.getLogger("romeways"))
