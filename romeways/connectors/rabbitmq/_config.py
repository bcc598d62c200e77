"""The RabbitMQ configs: how to reach the broker (``RabbitMQConnectorConfig``) and how one queue
is declared and consumed (``RabbitMQQueueConfig``)."""

from __future__ import annotations

import math
import ssl
from collections.abc import Iterator
from typing import Any, ClassVar, Final, Literal, cast

import msgspec
from yarl import URL

from ..._config import GenericConnectorConfig, GenericQueueConfig, require, shown
from ..._errors import ConfigError

QueueType = Literal["quorum", "classic"]
ExchangeType = Literal["direct", "topic", "fanout", "headers"]

_PREFETCH_MAX: Final = 65_535  # AMQP's prefetch-count is a short; 0 would mean no limit
_NAME_MAX: Final = 255  # bytes, AMQP's shortstr
ArgumentValue = str | int | bool


def mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for reprs, logs and errors."""
    try:
        parsed = URL(url)
    except (TypeError, ValueError):
        return "<an unparsable URL>"
    if parsed.password is None:
        return url
    return str(parsed.with_password("***"))


def url_password(url: str) -> str | None:
    """The password in ``url``, for log redaction only."""
    try:
        return URL(url).password
    except (TypeError, ValueError):
        return None


class RabbitMQConnectorConfig(GenericConnectorConfig, frozen=True, kw_only=True):
    """How to reach a RabbitMQ broker.

    ``url`` is ``amqp://user:password@host:port/vhost`` or ``amqps://...`` (TLS); its password
    is masked in ``repr()``, logs and errors. With ``amqps``, ``ssl_cafile`` (the CA that signed
    the broker's certificate; the system's CAs when None), ``ssl_certfile`` and ``ssl_keyfile``
    (a client certificate, ``ssl_password`` for an encrypted key) or a ready ``ssl_context``.
    ``startup_timeout`` is how long a worker retries, with backoff, to reach the broker at
    start-up; ``connect_timeout`` bounds one attempt; ``heartbeat`` (seconds, 0 for none) is the
    AMQP heartbeat, which also decides how soon a silent network cut is noticed (about three
    heartbeats); ``publish_timeout`` bounds the wait for the broker's confirm of one publish or
    resend. ``connection_name`` is shown by ``rabbitmqctl list_connections`` and the management
    UI (with the queue and process id after it).
    """

    secret_fields: ClassVar[tuple[str, ...]] = ("url", "ssl_password")

    url: str
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    connection_name: str | None = None
    startup_timeout: float = 60.0
    connect_timeout: float = 10.0
    heartbeat: int = 60
    publish_timeout: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_url()
        tls = self.scheme == "amqps"
        files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
        for name in (*files, "ssl_context"):
            require(
                self,
                name,
                getattr(self, name) is None or (tls and getattr(self, name) != ""),
                "set it only with an amqps:// url (and not to an empty string)",
            )
        if self.ssl_context is not None:
            require(
                self,
                "ssl_context",
                all(getattr(self, name) is None for name in files),
                "give either ssl_context or the ssl_* files, not both",
            )
        require(
            self,
            "ssl_keyfile",
            self.ssl_keyfile is None or self.ssl_certfile is not None,
            "give ssl_certfile with it (the client certificate the key belongs to)",
        )
        for name in ("startup_timeout", "connect_timeout", "publish_timeout"):
            value = getattr(self, name)
            require(self, name, math.isfinite(value) and value > 0, "give seconds > 0")
        require(
            self,
            "heartbeat",
            0 <= self.heartbeat <= _PREFETCH_MAX,
            "give whole seconds from 0 (no heartbeat) to 65535",
        )
        require(
            self,
            "connection_name",
            self.connection_name is None or bool(self.connection_name.strip()),
            "give a non-empty name, or None",
        )

    def _check_url(self) -> None:
        # Errors show the URL with its password masked, never the password.
        try:
            parsed = URL(self.url)
        except (TypeError, ValueError):
            parsed = None
        ok = (
            parsed is not None
            and parsed.scheme in ("amqp", "amqps")
            and bool(parsed.host)
            and (parsed.port is None or 0 < parsed.port < 65536)
        )
        if not ok:
            raise ConfigError(
                f"{type(self).__name__}.url={mask_url(self.url)!r} is invalid: give "
                "'amqp://user:password@host:port/vhost' (or amqps:// for TLS)"
            )

    @property
    def scheme(self) -> str:
        """``amqp`` or ``amqps``."""
        return URL(self.url).scheme

    @property
    def where(self) -> str:
        """The broker as logs and errors name it: ``host:port/vhost``, no credentials."""
        parsed = URL(self.url)
        port = parsed.port or (5671 if parsed.scheme == "amqps" else 5672)
        vhost = parsed.path[1:] if len(parsed.path) > 1 else "/"
        return f"{parsed.host}:{port} (vhost {vhost!r})"

    def tls(self) -> ssl.SSLContext | None:
        """The TLS context for an amqps url (None for amqp). Raises OSError or ssl.SSLError
        for files that do not load."""
        if self.scheme != "amqps":
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        from ..support import tls_context

        return tls_context(
            cafile=self.ssl_cafile,
            certfile=self.ssl_certfile,
            keyfile=self.ssl_keyfile,
            password=self.ssl_password,
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._masked_fields())
        return f"{type(self).__name__}({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(self._masked_fields())

    def _masked_fields(self) -> Iterator[tuple[str, object]]:
        for name in self.__struct_fields__:
            yield name, mask_url(self.url) if name == "url" else shown(self, name)


def _name_ok(name: str) -> bool:
    return len(name.encode()) <= _NAME_MAX and not name.startswith("amq.")


class RabbitMQQueueConfig(GenericQueueConfig, frozen=True, kw_only=True):
    """One RabbitMQ queue, declared durable (``queue_type`` "quorum", the default, or
    "classic") with ``arguments`` (``x-dead-letter-exchange``, ``x-delivery-limit``,
    ``x-max-length``, ...) unless ``declare=False`` (then it must exist).

    ``prefetch`` is how many unacknowledged messages the broker may push to this consumer
    (default ``4 * max_chunk_size``, at least ``max_concurrency + max_chunk_size``: the next
    chunks arrive while one is handled, with room for messages that wait for a delayed resend;
    never unbounded). ``delivery_limit`` (quorum
    queues, which count deliveries): a message the broker delivers more times than this without
    its being acknowledged (it keeps killing its worker) is dead-lettered unhandled; default
    ``retries + 2``. ``exchange`` (default: the default
    exchange, which routes by queue name) is where ``send_messages`` and ``romeways.publish``
    publish, with ``routing_key`` (default: the queue name) or the publish's ``key``; with an
    exchange the queue is bound to it with ``binding_keys`` (default: the routing key).
    Resends always go straight back to this queue.
    """

    queue: str
    queue_type: QueueType = "quorum"
    declare: bool = True
    arguments: dict[str, ArgumentValue] = msgspec.field(default_factory=dict[str, ArgumentValue])
    prefetch: int | None = None
    delivery_limit: int | None = None
    exchange: str = ""
    exchange_type: ExchangeType = "direct"
    routing_key: str | None = None
    binding_keys: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self,
            "queue",
            bool(self.queue.strip()) and _name_ok(self.queue),
            "give a queue name of at most 255 bytes, not starting with 'amq.' (reserved)",
        )
        require(
            self,
            "queue_type",
            self.queue_type in ("quorum", "classic"),
            "give 'quorum' or 'classic'",
        )
        require(
            self,
            "arguments",
            all(isinstance(cast(object, key), str) and key for key in self.arguments)
            and "x-queue-type" not in self.arguments,
            "give argument names as strings; set the queue type with queue_type",
        )
        require(
            self,
            "prefetch",
            self.prefetch is None or 1 <= self.prefetch <= _PREFETCH_MAX,
            f"give a count from 1 to {_PREFETCH_MAX} (an unbounded prefetch is not offered)",
        )
        require(
            self,
            "delivery_limit",
            self.delivery_limit is None
            or (self.queue_type == "quorum" and self.delivery_limit >= 1),
            "give a count >= 1, on a quorum queue (classic queues do not count deliveries)",
        )
        broker_limit = self.arguments.get("x-delivery-limit")
        if (
            isinstance(broker_limit, int)
            and not isinstance(broker_limit, bool)
            and broker_limit >= 0
        ):
            require(
                self,
                "delivery_limit",
                self.effective_delivery_limit is None
                or self.effective_delivery_limit <= broker_limit,
                f"must not exceed the queue's own x-delivery-limit={broker_limit} (the broker "
                "would drop or dead-letter the message before romeways sees it again); "
                "lower it or raise x-delivery-limit",
            )
        require(
            self,
            "exchange",
            self.exchange == "" or _name_ok(self.exchange),
            "give an exchange name of at most 255 bytes, not starting with 'amq.', or '' for "
            "the default exchange",
        )
        require(
            self,
            "exchange_type",
            self.exchange_type in ("direct", "topic", "fanout", "headers"),
            "give 'direct', 'topic', 'fanout' or 'headers'",
        )
        require(
            self,
            "routing_key",
            self.routing_key is None
            or (self.exchange != "" and len(self.routing_key.encode()) <= _NAME_MAX),
            "set it only with an exchange (the default exchange routes by queue name), at most "
            "255 bytes",
        )
        require(
            self,
            "binding_keys",
            self.binding_keys is None
            or (
                self.exchange != "" and all(len(k.encode()) <= _NAME_MAX for k in self.binding_keys)
            ),
            "set it only with an exchange, each key at most 255 bytes",
        )

    @property
    def effective_prefetch(self) -> int:
        """The prefetch in use: ``prefetch``, or four times ``max_chunk_size`` (at most
        65535); with ``max_concurrency``, at least that plus ``max_chunk_size``, so that the
        prefetch never caps the handlers in flight below it."""
        if self.prefetch is not None:
            return self.prefetch
        wanted = 4 * self.max_chunk_size
        if self.max_concurrency is not None:
            wanted = max(wanted, self.max_concurrency + self.max_chunk_size)
        return min(_PREFETCH_MAX, wanted)

    @property
    def effective_delivery_limit(self) -> int | None:
        """The deliveries a message may have before it is dead-lettered unhandled: the given
        ``delivery_limit``, or ``retries + 2`` on a quorum queue (as many attempts as a resent
        message gets, plus the one redelivery the other messages of a chunk get when one of
        them kills the worker); None on a classic queue."""
        if self.queue_type != "quorum":
            return None
        return self.delivery_limit if self.delivery_limit is not None else self.retries + 2

    @property
    def publish_routing_key(self) -> str:
        """The routing key of a publish without a key: the queue name on the default
        exchange, else ``routing_key`` or the queue name."""
        return self.routing_key or self.queue

    def queue_arguments(self) -> dict[str, ArgumentValue]:
        """The arguments the queue is declared with."""
        return {"x-queue-type": self.queue_type, **self.arguments}
