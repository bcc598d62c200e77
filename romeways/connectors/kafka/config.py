"""The Kafka connector's configs: how to reach the cluster (addresses, TLS, SASL) and how one
topic is consumed; each field is checked when the config is built, secrets masked."""

# No ``from __future__ import annotations`` here: the field annotations are objects, so the
# configs' field checks resolve them wherever the classes say they live (the package).

import math
import re
import ssl
from typing import Any, ClassVar, Final, Literal

from ..._config import GenericConnectorConfig, GenericQueueConfig, require
from ..support import tls_context

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
"""``KafkaConnectorConfig.security_protocol``: how the connection to the brokers is secured."""
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
"""``KafkaConnectorConfig.sasl_mechanism``: the SASL login the brokers accept."""

_SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_INT32_MAX: Final = 2**31 - 1


class KafkaConnectorConfig(GenericConnectorConfig, frozen=True, kw_only=True):
    """How to reach a Kafka cluster.

    ``bootstrap_server`` is ``"host:port"``, a comma-separated list of them, or a list of them.
    ``security_protocol`` is one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL; SASL takes
    ``sasl_mechanism`` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512) with ``sasl_plain_username`` and
    ``sasl_plain_password``; SSL takes either ``ssl_context`` or the ``ssl_cafile``,
    ``ssl_certfile``, ``ssl_keyfile`` (and ``ssl_password`` for an encrypted key) files, or
    neither for the system's trusted CAs. ``startup_timeout`` (seconds) is how long a worker keeps
    retrying, with backoff, to reach the cluster before it fails with a ConnectorError;
    ``request_timeout_ms`` and ``retry_backoff_ms`` go to the aiokafka clients (the backoff also
    paces reconnection attempts while the broker is away).

    The ``secret_fields`` (the passwords) never appear in ``repr()``, logs or error messages.
    """

    secret_fields: ClassVar[tuple[str, ...]] = ("sasl_plain_password", "ssl_password")

    bootstrap_server: str | list[str]
    client_id: str = "romeways"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: str | None = None
    ssl_context: ssl.SSLContext | None = None
    startup_timeout: float = 60.0
    request_timeout_ms: int = 40_000
    retry_backoff_ms: int = 500

    def __post_init__(self) -> None:
        super().__post_init__()
        servers = bootstrap_servers(self.bootstrap_server)
        require(
            self,
            "bootstrap_server",
            bool(servers) and all(_looks_like_host_port(s) for s in servers),
            'give "host:port", a comma-separated list of them, or a list of them',
        )
        require(self, "client_id", bool(self.client_id.strip()), "give a non-empty client id")
        require(
            self,
            "security_protocol",
            self.security_protocol in _SECURITY_PROTOCOLS,
            f"give one of {', '.join(_SECURITY_PROTOCOLS)}",
        )
        sasl = self.security_protocol.startswith("SASL_")
        require(
            self,
            "sasl_mechanism",
            (self.sasl_mechanism in _SASL_MECHANISMS) if sasl else self.sasl_mechanism is None,
            f"give one of {', '.join(_SASL_MECHANISMS)} with a SASL_* security_protocol, "
            "and None otherwise",
        )
        # No local holds a field's value below: error trackers record the locals of a traceback.
        for name in ("sasl_plain_username", "sasl_plain_password"):
            require(
                self,
                name,
                bool(getattr(self, name)) if sasl else getattr(self, name) is None,
                "give a non-empty one with a SASL_* security_protocol, and None otherwise",
            )
        uses_ssl = self.security_protocol in ("SSL", "SASL_SSL")
        ssl_files = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
        for name in (*ssl_files, "ssl_context"):
            require(
                self,
                name,
                getattr(self, name) is None or (uses_ssl and getattr(self, name) != ""),
                "set it only with security_protocol SSL or SASL_SSL (and not to an empty string)",
            )
        if self.ssl_context is not None:
            require(
                self,
                "ssl_context",
                all(getattr(self, name) is None for name in ssl_files),
                "give either ssl_context or the ssl_* files, not both",
            )
        require(
            self,
            "startup_timeout",
            math.isfinite(self.startup_timeout) and self.startup_timeout > 0,
            "give a finite number of seconds > 0",
        )
        for name in ("request_timeout_ms", "retry_backoff_ms"):
            require(
                self,
                name,
                isinstance(getattr(self, name), int) and 1 <= getattr(self, name) <= _INT32_MAX,
                "give an integer number of milliseconds >= 1",
            )

    def client_options(self) -> dict[str, Any]:
        """The aiokafka client keyword arguments for connection and security. Holds the
        password: never log it."""
        options: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers(self.bootstrap_server),
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "retry_backoff_ms": self.retry_backoff_ms,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context or tls_context(
                cafile=self.ssl_cafile,
                certfile=self.ssl_certfile,
                keyfile=self.ssl_keyfile,
                password=self.ssl_password,
            )
        if self.sasl_mechanism is not None:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_plain_username
            options["sasl_plain_password"] = self.sasl_plain_password
        return options


def bootstrap_servers(value: str | list[str]) -> list[str]:
    """``bootstrap_server`` as a list of ``host:port`` strings."""
    # A list from untyped input (a decoded config file) may hold anything: keep the strings.
    items: list[object] = list(value.split(",") if isinstance(value, str) else value)
    return [item.strip() for item in items if isinstance(item, str) and item.strip()]


def _looks_like_host_port(server: str) -> bool:
    host, sep, port = server.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536) and " " not in host


class KafkaQueueConfig(GenericQueueConfig, frozen=True, kw_only=True):
    """A queue backed by a Kafka ``topic``, consumed by the consumer group ``group_id``.

    ``auto_offset_reset`` is where a group with no committed offset starts: "earliest" (the
    default, so nothing published before the group first joined is dropped) or "latest".
    The ``*_ms`` and ``*_bytes`` fields are passed to aiokafka's consumer as they are, except
    that fetches wait ``idle_fetch_max_wait_ms`` instead of ``fetch_max_wait_ms`` once a fetch
    found nothing for ``frequency`` seconds, until messages come again: a short wait while
    messages flow (brokers such as Tansu answer an empty fetch only after the wait), a longer
    one while idle (each empty fetch costs CPU). Equal values turn this off.
    ``commit_timeout`` (seconds) bounds each offset commit; a commit that times out is retried
    with the next one, and what it covered may be delivered again.
    """

    topic: str
    group_id: str
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    fetch_max_wait_ms: int = 10
    idle_fetch_max_wait_ms: int = 60
    fetch_min_bytes: int = 1
    fetch_max_bytes: int = 52_428_800
    max_partition_fetch_bytes: int = 1_048_576
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    max_poll_interval_ms: int = 300_000
    commit_timeout: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(
            self,
            "topic",
            bool(_TOPIC_NAME.fullmatch(self.topic)) and self.topic not in (".", ".."),
            "give a Kafka topic name: 1 to 249 of the characters a-z A-Z 0-9 . _ -",
        )
        require(self, "group_id", bool(self.group_id.strip()), "give a non-empty group id")
        require(
            self,
            "auto_offset_reset",
            self.auto_offset_reset in ("earliest", "latest"),
            'give "earliest" or "latest"',
        )
        for name, low in (
            ("fetch_max_wait_ms", 0),
            ("idle_fetch_max_wait_ms", 0),
            ("fetch_min_bytes", 1),
            ("fetch_max_bytes", 1),
            ("max_partition_fetch_bytes", 1),
            ("session_timeout_ms", 1),
            ("heartbeat_interval_ms", 1),
            ("max_poll_interval_ms", 1),
        ):
            value = getattr(self, name)
            require(
                self,
                name,
                isinstance(value, int) and low <= value <= _INT32_MAX,
                f"give an integer >= {low}",
            )
        require(
            self,
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms < self.session_timeout_ms,
            f"must be below session_timeout_ms={self.session_timeout_ms} (a third of it is usual)",
        )
        require(
            self,
            "fetch_min_bytes",
            self.fetch_min_bytes <= self.fetch_max_bytes,
            f"must not exceed fetch_max_bytes={self.fetch_max_bytes}",
        )
        require(
            self,
            "commit_timeout",
            math.isfinite(self.commit_timeout) and self.commit_timeout > 0,
            "give a finite number of seconds > 0",
        )
