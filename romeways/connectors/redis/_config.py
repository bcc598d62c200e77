"""The Redis connector's configs: where the server is (``RedisConnectorConfig``) and how one
stream is consumed (``RedisQueueConfig``)."""

from __future__ import annotations

import math
import string
from typing import Any, ClassVar, Final, NamedTuple, cast
from urllib.parse import unquote, urlsplit

from ..._config import GenericConnectorConfig, GenericQueueConfig, require, shown
from ..._errors import ConfigError

_SCHEMES: Final = ("redis", "rediss")
_CONSUMER_FIELDS: Final = frozenset({"host", "connector", "slot"})
# A blocking read must come back this long before the socket timeout would cut it off.
BLOCK_MARGIN: Final = 0.5
# The longest one XREADGROUP blocks when ``block`` is not given (get_messages loops for longer
# frequencies): short enough that a consumer never looks idle for long.
DEFAULT_MAX_BLOCK: Final = 5.0


class Address(NamedTuple):
    """A parsed ``url``: where to connect, and the login it names (if any)."""

    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None


def parse_url(url: str) -> Address:
    """``redis://[user[:password]@]host[:port][/db]`` (``rediss://`` for TLS); ValueError
    saying what is wrong, never quoting the URL (it may hold a password)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("it does not parse as a URL (is the port a number?)") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError("give redis://host:port/db, or rediss:// for TLS")
    if not parts.hostname:
        raise ValueError("it names no host")
    if parts.query or parts.fragment:
        raise ValueError("give options as RedisConnectorConfig fields, not in the URL's query")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("the path must be a database number (/0, /1, ...)")
    return Address(
        tls=parts.scheme == "rediss",
        host=parts.hostname,
        port=port or 6379,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def redact_url(url: object) -> str:
    """``url`` with the password in it replaced by ``***``, for reprs, logs and errors."""
    if not isinstance(url, str):
        return "<not a str>"
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "***" if "@" in url else url
    login, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = login.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


class _MaskedUrl:
    """The URL as reprs and errors show it: its password masked."""

    __slots__ = ("text",)

    def __init__(self, url: object) -> None:
        self.text = redact_url(url)

    def __repr__(self) -> str:
        return repr(self.text)


def _finite_positive(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


class RedisConnectorConfig(GenericConnectorConfig, frozen=True, kw_only=True):
    """How to reach a Redis server (6.2 or newer; 7 for the lag figure).

    ``url`` is ``redis://host:port/db`` or, for TLS, ``rediss://host:port/db``; a login (Redis 6
    ACL user and password, or the password alone) goes either in the URL
    (``redis://user:password@host``) or in ``username``/``password``. With ``rediss://``,
    ``ssl_cafile`` is the CA to check the server against (the system's CAs when None) and
    ``ssl_certfile``/``ssl_keyfile`` (``ssl_password`` for an encrypted key) a client
    certificate. ``socket_timeout`` bounds every reply (a lost connection is noticed within it;
    a blocking read always ends before it), ``socket_connect_timeout`` every connection attempt,
    and ``startup_timeout`` how long a worker keeps trying to reach the server at start-up
    before it fails with a ConnectorError.

    Passwords (``password``, ``ssl_password`` and one in ``url``) never appear in ``repr()``,
    logs or error messages.
    """

    secret_fields: ClassVar[tuple[str, ...]] = ("password", "ssl_password")

    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    socket_timeout: float = 10.0
    socket_connect_timeout: float = 5.0
    startup_timeout: float = 60.0

    def __post_init__(self) -> None:
        # Checked before the generic field checks, whose errors would show the URL unmasked.
        if not isinstance(cast(object, self.url), str):  # untyped callers
            raise ConfigError(f"{type(self).__name__}.url is invalid: give a str")
        super().__post_init__()
        try:
            address = parse_url(self.url)
        except ValueError as exc:
            raise ConfigError(
                f"{type(self).__name__}.url={redact_url(self.url)!r} is invalid: {exc}"
            ) from None
        for name in ("username", "password"):
            require(
                self,
                name,
                getattr(self, name) is None or getattr(self, name) != "",
                "give a non-empty one, or None",
            )
        require(
            self,
            "username",
            self.username is None or address.username is None,
            "the url names a user already; give it in one place",
        )
        require(
            self,
            "password",
            self.password is None or address.password is None,
            "the url holds a password already; give it in one place",
        )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password"):
            require(
                self,
                name,
                getattr(self, name) is None or (address.tls and getattr(self, name) != ""),
                "set it only with a rediss:// url (and not to an empty string)",
            )
        require(
            self,
            "ssl_keyfile",
            self.ssl_keyfile is None or self.ssl_certfile is not None,
            "give the certificate too (ssl_certfile)",
        )
        for name in ("socket_timeout", "socket_connect_timeout", "startup_timeout"):
            require(
                self,
                name,
                _finite_positive(getattr(self, name)),
                "give a finite number of seconds > 0",
            )
        require(
            self,
            "socket_timeout",
            self.socket_timeout > BLOCK_MARGIN,
            f"give more than {BLOCK_MARGIN} s: blocking reads must end before it",
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in self._masked_fields())
        return f"{type(self).__name__}({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(self._masked_fields())

    def _masked_fields(self) -> list[tuple[str, object]]:
        return [
            (name, _MaskedUrl(self.url) if name == "url" else shown(self, name))
            for name in self.__struct_fields__
        ]

    @property
    def address(self) -> Address:
        """The parsed ``url``, with ``username``/``password`` filled in from the fields.
        Holds the password: never log it."""
        address = parse_url(self.url)
        return address._replace(
            username=address.username or self.username,
            password=address.password if address.password is not None else self.password,
        )

    @property
    def target(self) -> str:
        """The server as logs and errors name it: ``redis://host:port/db``, no login."""
        address = parse_url(self.url)
        scheme = "rediss" if address.tls else "redis"
        return f"{scheme}://{address.host}:{address.port}/{address.db}"

    def secrets(self) -> tuple[str, ...]:
        """Every password this config holds, for log redaction."""
        found = (self.password, self.ssl_password, parse_url(self.url).password)
        return tuple(secret for secret in found if secret)


class RedisQueueConfig(GenericQueueConfig, frozen=True, kw_only=True):
    """A queue backed by the Redis stream ``stream``, consumed by the consumer group ``group``.

    ``consumer`` names this worker's consumer in the group; None (the default) takes
    ``worker_identity()``: ``<host>-<connector>-<slot>`` in a worker process (the same across
    its restarts, so a restarted worker first reads what it held), ``<host>-<connector>`` in
    process. A name of your own may hold ``{host}``, ``{connector}`` and ``{slot}`` (``main``
    in process); with ``App.workers > 1`` it must hold ``{slot}``.

    ``claim_idle`` (seconds): a message pending that long at a consumer that does not keep it
    alive (one that is gone) is claimed and handled by another; messages held on purpose
    (handlers running, delayed resends) are kept alive. ``block`` (seconds) is the longest one
    blocking read waits (default: ``frequency``, at most 5 s and below the socket timeout).
    ``max_deliveries`` is how often one entry may be delivered without being finished (its
    worker died each time) before it is dead-lettered unhandled; None: ``retries + 1``.
    ``maxlen`` trims the stream to about that many entries on every publish and resend: off by
    default, since trimming drops entries whether acknowledged or not. ``delete_acked`` deletes
    entries once acknowledged (XDEL), so the stream holds only unfinished ones.
    """

    stream: str
    group: str
    consumer: str | None = None
    claim_idle: float = 60.0
    block: float | None = None
    max_deliveries: int | None = None
    maxlen: int | None = None
    delete_acked: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self, "stream", bool(self.stream.strip()), "give a non-empty stream key")
        require(self, "group", bool(self.group.strip()), "give a non-empty group name")
        if self.consumer is not None:
            require(
                self,
                "consumer",
                bool(self.consumer.strip()) and _consumer_template_ok(self.consumer),
                "give a non-empty name; it may hold {host}, {connector} and {slot}, and no "
                "other braces (double them: {{ }})",
            )
        require(
            self, "claim_idle", _finite_positive(self.claim_idle), "give a number of seconds > 0"
        )
        require(
            self,
            "block",
            self.block is None or (_finite_positive(self.block) and self.block >= 0.001),
            "give a number of seconds >= 0.001, or None for frequency (at most 5 s)",
        )
        require(
            self,
            "max_deliveries",
            self.max_deliveries is None or self.max_deliveries >= 1,
            "give a count >= 1, or None for retries + 1",
        )
        require(
            self,
            "maxlen",
            self.maxlen is None or self.maxlen >= 1,
            "give a number of entries >= 1, or None for no trimming",
        )

    @property
    def delivery_limit(self) -> int:
        """How many deliveries of one entry are allowed: ``max_deliveries``, or ``retries + 1``."""
        return self.max_deliveries if self.max_deliveries is not None else self.retries + 1

    def block_seconds(self, socket_timeout: float) -> float:
        """How long one blocking read waits at most (0: a read that does not block)."""
        if self.block is not None:
            return min(self.block, self.frequency) if self.frequency > 0 else 0.0
        return min(self.frequency, DEFAULT_MAX_BLOCK, socket_timeout / 2)

    def check_against(self, connector: RedisConnectorConfig) -> None:
        """ConfigError for what this queue asks that its connector's settings cannot give."""
        limit = connector.socket_timeout - BLOCK_MARGIN
        if self.block is not None and self.block > limit:
            raise ConfigError(
                f"{type(self).__name__}.block={self.block!r} is invalid: a blocking read must "
                f"end before {type(connector).__name__}.socket_timeout="
                f"{connector.socket_timeout!r} takes it for a lost connection; give block <= "
                f"{limit:g} or raise socket_timeout"
            )

    def format_consumer(self, connector_name: str, host: str, slot: int | None) -> str:
        """``consumer`` with its fields filled in, for a worker process of ``slot`` (None: in
        process); ConfigError when several worker processes would share the name."""
        template = self.consumer
        if template is None:
            raise ValueError("consumer is None: the connector names it by worker_identity()")
        if slot is not None and slot > 0 and not _uses_slot(template):
            raise ConfigError(
                f"{type(self).__name__}.consumer={template!r} is invalid: this worker process "
                f"is slot {slot} of several (App.workers > 1), and each needs a consumer of "
                "its own; put {slot} in the name, or leave consumer=None"
            )
        return template.format(
            host=host, connector=connector_name, slot="main" if slot is None else slot
        )


def _consumer_template_ok(template: str) -> bool:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
        template.format(host="h", connector="c", slot=0)
    except (ValueError, KeyError, IndexError, AttributeError):
        return False
    return names <= _CONSUMER_FIELDS


def _uses_slot(template: str) -> bool:
    return any(name == "slot" for _, name, _, _ in string.Formatter().parse(template))
