"""The NATS JetStream connector's configs: how to reach the servers, and one queue's stream,
subject and durable pull consumer."""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Iterator
from typing import Any, ClassVar, Final, Literal, cast
from urllib.parse import urlsplit

from ..._config import GenericConnectorConfig, GenericQueueConfig, require, shown
from ..._errors import ConfigError
from ..support import tls_context

Storage = Literal["file", "memory"]
Retention = Literal["limits", "workqueue", "interest"]
DeliverPolicy = Literal["all", "new"]

_SCHEMES: Final = ("nats", "tls", "ws", "wss")
# Stream and consumer names: no whitespace, and none of . * > / \ (JetStream's rules).
_NAME = re.compile(r"[^\s.*>/\\]{1,255}")
_TOKEN = re.compile(r"[^\s.*>]+")
_USERINFO = re.compile(r"(?<=://)([^/@]*)@")
# The longest ack_wait the in-progress signals keep up with, and the shortest ack_wait.
_MIN_ACK_WAIT: Final = 1.0
DEFAULT_MAX_ACK_PENDING: Final = 1000


def server_urls(value: str | list[str]) -> list[str]:
    """``servers`` as a list of URLs (``host:port`` gets ``nats://``)."""
    # A list from untyped input (a decoded config file) may hold anything: keep the strings.
    items: list[object] = list(value.split(",") if isinstance(value, str) else value)
    urls = [item.strip() for item in items if isinstance(item, str) and item.strip()]
    return [url if "://" in url else f"nats://{url}" for url in urls]


def mask_url(url: str) -> str:
    """``url`` with the password (or token) in its user part shown as ``***``."""

    def masked(match: re.Match[str]) -> str:
        user, sep, _ = match.group(1).partition(":")
        return f"{user}:***@" if sep else "***@"

    return _USERINFO.sub(masked, url)


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number
        return False
    return parts.scheme in _SCHEMES and bool(parts.hostname) and (port is None or 0 < port)


class NatsConnectorConfig(GenericConnectorConfig, frozen=True, kw_only=True):
    """How to reach a NATS server (or cluster) with JetStream.

    ``servers``: ``"nats://host:4222"``, a comma-separated list or a list of URLs (``tls://``
    for TLS; ``host:port`` means ``nats://host:port``). Log in with one of ``user`` and
    ``password``, ``token``, or ``credentials`` (a ``.creds`` file, needs the ``nkeys``
    package), or with the user part of the URLs. TLS: ``tls=True`` (or a ``tls://`` URL) with
    the system's CAs, or ``tls_cafile`` (and ``tls_certfile``/``tls_keyfile``, with
    ``tls_key_password`` for an encrypted key) for mutual TLS; ``tls_hostname`` overrides the
    name the server's certificate is checked against.

    ``startup_timeout``: seconds a worker keeps retrying to connect before it fails with a
    ConnectorError; ``request_timeout``: seconds a JetStream request (a PubAck included) may
    take; ``connect_timeout``: seconds one connection attempt may take;
    ``reconnect_time_wait``: seconds between reconnection attempts once connected (it keeps
    trying for as long as the server is away); ``ping_interval`` and
    ``max_outstanding_pings``: a silent network cut is noticed after about their product.

    Passwords, tokens and the key's password (and a password or token inside a URL) never
    appear in ``repr()``, logs or error messages.
    """

    secret_fields: ClassVar[tuple[str, ...]] = ("password", "token", "tls_key_password")

    servers: str | list[str] = "nats://127.0.0.1:4222"
    name: str = "romeways"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    credentials: str | None = None
    tls: bool = False
    tls_cafile: str | None = None
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    tls_key_password: str | None = None
    tls_hostname: str | None = None
    startup_timeout: float = 60.0
    request_timeout: float = 5.0
    connect_timeout: float = 2.0
    reconnect_time_wait: float = 2.0
    ping_interval: float = 20.0
    max_outstanding_pings: int = 2

    def __post_init__(self) -> None:
        servers = cast(object, self.servers)  # untyped callers may give anything
        kind = type(servers).__name__
        items = cast("list[object]", servers) if isinstance(servers, list) else [servers]
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(
                f"{type(self).__name__}.servers is invalid: give a str or a list of str, not a "
                f"{kind} (its value is not shown: it may hold a password)"
            )
        super().__post_init__()
        urls = server_urls(self.servers)
        if not urls or not all(_valid_url(url) for url in urls):
            # Not require(): the URLs may hold a password, shown masked here.
            shown_urls = ", ".join(mask_url(url) for url in urls)
            raise ConfigError(
                f"{type(self).__name__}.servers={shown_urls!r} is invalid: give "
                '"nats://host:port" (or tls://, ws://, wss://), a comma-separated list of '
                "them, or a list of them"
            )
        require(self, "name", bool(self.name.strip()), "give a non-empty connection name")
        for name in ("user", "password", "token", "credentials", "tls_hostname"):
            require(
                self,
                name,
                getattr(self, name) is None or getattr(self, name) != "",
                "give a non-empty value or None",
            )
        require(
            self,
            "password",
            (self.user is None) == (self.password is None),
            "give user and password together (or neither)",
        )
        logins = sum(x is not None for x in (self.user, self.token, self.credentials))
        require(
            self,
            "token",
            logins <= 1,
            "log in with one of user/password, token or credentials, not several",
        )
        uses_tls = self.uses_tls
        for name in ("tls_cafile", "tls_certfile", "tls_keyfile", "tls_key_password"):
            require(
                self,
                name,
                getattr(self, name) is None or uses_tls,
                "set it only with tls=True or tls:// servers",
            )
        require(
            self,
            "tls_keyfile",
            self.tls_keyfile is None or self.tls_certfile is not None,
            "give tls_certfile with it (the client certificate of this key)",
        )
        require(
            self,
            "tls_key_password",
            self.tls_key_password is None or self.tls_keyfile is not None,
            "give tls_keyfile with it",
        )
        for name in (
            "startup_timeout",
            "request_timeout",
            "connect_timeout",
            "reconnect_time_wait",
            "ping_interval",
        ):
            value = getattr(self, name)
            require(
                self,
                name,
                math.isfinite(value) and value > 0,
                "give a finite number of seconds > 0",
            )
        require(self, "max_outstanding_pings", self.max_outstanding_pings >= 1, "give >= 1")

    @property
    def uses_tls(self) -> bool:
        """Whether connections use TLS (``tls=True`` or a ``tls://``/``wss://`` URL)."""
        return self.tls or any(
            url.startswith(("tls://", "wss://")) for url in server_urls(self.servers)
        )

    def shown_servers(self) -> str:
        """The server URLs as logs and errors show them (passwords masked)."""
        return ",".join(mask_url(url) for url in server_urls(self.servers))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._masked_fields())
        return f"{type(self).__name__}({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(self._masked_fields())

    def _masked_fields(self) -> Iterator[tuple[str, object]]:
        for name in self.__struct_fields__:
            if name == "servers":
                urls = self.servers
                yield (
                    name,
                    (mask_url(urls) if isinstance(urls, str) else [mask_url(u) for u in urls]),
                )
            else:
                yield name, shown(self, name)

    def url_secrets(self) -> list[str]:
        """The passwords and tokens inside the server URLs (to keep out of log records)."""
        found: list[str] = []
        for url in server_urls(self.servers):
            match = _USERINFO.search(url)
            if match is not None:
                user, sep, password = match.group(1).partition(":")
                found.append(password if sep else user)
        return [secret for secret in found if secret]

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for the connections, or None without TLS. Raises OSError or
        ssl.SSLError for files that do not load."""
        if not self.uses_tls:
            return None
        return tls_context(
            cafile=self.tls_cafile,
            certfile=self.tls_certfile,
            keyfile=self.tls_keyfile,
            password=self.tls_key_password,
        )

    def connect_options(self) -> dict[str, Any]:
        """nats-py ``connect()`` keyword arguments for servers, login and TLS, without the
        reconnection settings. Holds the secrets: never log it."""
        options: dict[str, Any] = {
            "servers": server_urls(self.servers),
            "name": self.name,
            "connect_timeout": self.connect_timeout,
            "ping_interval": self.ping_interval,
            "max_outstanding_pings": self.max_outstanding_pings,
        }
        if self.user is not None:
            options["user"] = self.user
            options["password"] = self.password
        if self.token is not None:
            options["token"] = self.token
        if self.credentials is not None:
            options["user_credentials"] = self.credentials
        context = self.ssl_context()
        if context is not None:
            options["tls"] = context
        if self.tls_hostname is not None:
            options["tls_hostname"] = self.tls_hostname
        return options


class NatsQueueConfig(GenericQueueConfig, frozen=True, kw_only=True):
    """A queue on a JetStream ``stream``: messages are published to ``subject`` and consumed by
    the durable pull consumer ``durable`` (every process with the same durable shares it).

    ``create``: create the stream (with ``subject``) and the consumer when missing, and bring
    the consumer's ``ack_wait``/``max_ack_pending`` to this config's; False requires both to
    exist and uses them as they are. ``ack_wait`` (seconds): how long the server waits for an
    ack before it delivers a message again (after a worker died); messages a worker holds are
    kept with in-progress signals every quarter of it (``in_progress=False`` turns those off: then
    ``ack_wait`` must outlast the handler). ``max_ack_pending``: the most messages delivered and
    not acked, across all processes (default: 1000, or twice ``max_chunk_size`` if more).
    ``max_deliveries``: a message delivered that many times without being finished (its workers
    crashed or were stopped while it was in flight) is dead-lettered at its next delivery.
    ``deliver_policy``: where a new consumer starts ("all": the whole stream; "new").
    ``storage``, ``retention``, ``max_age`` (seconds, None: no limit) and ``duplicate_window``
    (seconds a message id is remembered for deduplication) are used when the stream is created.
    """

    stream: str
    subject: str
    durable: str
    create: bool = True
    ack_wait: float = 30.0
    max_ack_pending: int | None = None
    in_progress: bool = True
    max_deliveries: int = 5
    deliver_policy: DeliverPolicy = "all"
    storage: Storage = "file"
    retention: Retention = "limits"
    max_age: float | None = None
    duplicate_window: float = 120.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("stream", "durable"):
            require(
                self,
                name,
                bool(_NAME.fullmatch(getattr(self, name))),
                "give a JetStream name: 1 to 255 characters, no whitespace and none of . * > / \\",
            )
        require(
            self,
            "subject",
            all(_TOKEN.fullmatch(token) for token in self.subject.split(".")),
            "give a literal subject such as 'orders.created' (no wildcards * or >, no empty "
            "tokens, no whitespace): romeways publishes and resends to it",
        )
        require(
            self,
            "ack_wait",
            math.isfinite(self.ack_wait) and self.ack_wait >= _MIN_ACK_WAIT,
            f"give a finite number of seconds >= {_MIN_ACK_WAIT:g}",
        )
        pending = self.max_ack_pending
        require(
            self,
            "max_ack_pending",
            pending is None or pending >= self.max_chunk_size,
            f"must be at least max_chunk_size={self.max_chunk_size}, or fetches could never be "
            "filled (the server stops delivering at max_ack_pending unacked messages); raise it "
            "or lower max_chunk_size",
        )
        if not self.in_progress:
            # Without in-progress signals a held message is redelivered once ack_wait passes.
            timeout = self.handler_timeout
            held = self.longest_hold()
            require(
                self,
                "ack_wait",
                timeout is not None and held is not None and self.ack_wait > held,
                "with in_progress=False, ack_wait must outlast the longest a message can be "
                f"held: set handler_timeout (now {timeout}) so that handler_timeout"
                f"{' x max_chunk_size' if self.sequential else ''} + dead_letter_timeout "
                f"({held if held is not None else 'unbounded'}s) is below ack_wait, or leave "
                "in_progress=True",
            )
        require(self, "max_deliveries", self.max_deliveries >= 1, "give a count >= 1")
        for name, allowed in (
            ("deliver_policy", ("all", "new")),
            ("storage", ("file", "memory")),
            ("retention", ("limits", "workqueue", "interest")),
        ):
            require(
                self,
                name,
                getattr(self, name) in allowed,
                f"give one of {', '.join(map(repr, allowed))}",
            )
        require(
            self,
            "max_age",
            self.max_age is None or (math.isfinite(self.max_age) and self.max_age > 0),
            "give a finite number of seconds > 0, or None for no limit",
        )
        require(
            self,
            "duplicate_window",
            math.isfinite(self.duplicate_window) and self.duplicate_window > 0,
            "give a finite number of seconds > 0",
        )

    @property
    def effective_max_ack_pending(self) -> int:
        """``max_ack_pending``, or its default: 1000, or twice ``max_chunk_size`` if more."""
        if self.max_ack_pending is not None:
            return self.max_ack_pending
        return max(DEFAULT_MAX_ACK_PENDING, 2 * self.max_chunk_size)

    def longest_hold(self) -> float | None:
        """The longest a worker can hold one message unfinished without in-progress signals,
        in seconds: its handler (the chunk's handlers before it, when sequential) and its
        dead-letter hook; None without a handler_timeout (unbounded)."""
        if self.handler_timeout is None:
            return None
        handlers = self.handler_timeout * (self.max_chunk_size if self.sequential else 1)
        return handlers + self.dead_letter_timeout
