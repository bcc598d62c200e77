"""Starting a consumer: the TLS context, one consumer name per process, one connection attempt
(version check, group creation) and what a failed attempt means; the group created again when
it is deleted under a running consumer."""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from ..._errors import ConfigError, ConnectorError
from ..support import describe_exception, tls_context, worker_identity, worker_slot
from ._client import UNREACHABLE, close_quietly, new_client, refusal, server_version
from ._config import RedisConnectorConfig, RedisQueueConfig

logger = logging.getLogger("romeways")

_MIN_VERSION: Final = (6, 2)  # XPENDING IDLE

ConsumerKey = tuple[str, str, str, str]
"""Where a consumer reads: (server, stream, group, consumer)."""

# The consumers of the instances started in this process, with their queues: two queues of one
# process reading as one consumer would take each other's pending entries.
_ACTIVE: Final[dict[ConsumerKey, str]] = {}


def consumer_name(connector_config: RedisConnectorConfig, config: RedisQueueConfig) -> str:
    """The queue's consumer name in its group: the worker's identity, or ``consumer`` filled
    in with the connector, host and worker slot."""
    name = connector_config.connector_name
    if config.consumer is None:
        return worker_identity(name)
    host = socket.gethostname() or "localhost"
    return config.format_consumer(name, host, worker_slot())


def check_consumer(key: ConsumerKey, queue_name: str) -> None:
    """A ConfigError when another queue of this process reads as this consumer already."""
    other = _ACTIVE.get(key)
    if other is not None:
        _, stream, group, consumer = key
        raise ConfigError(
            f"RedisQueueConfig.consumer: queue {queue_name!r} would read stream "
            f"{stream!r} of group {group!r} as consumer {consumer!r}, "
            f"which queue {other!r} of this process reads as already; give one of them "
            "another group or consumer"
        )


def take_consumer(key: ConsumerKey, queue_name: str) -> None:
    """Record that ``queue_name`` reads as this consumer (started), until ``release_consumer``."""
    _ACTIVE[key] = queue_name


def release_consumer(key: ConsumerKey) -> None:
    _ACTIVE.pop(key, None)


def tls_of(config: RedisConnectorConfig, where: str) -> ssl.SSLContext | None:
    """The kit's TLS context for a ``rediss://`` url (None otherwise); ConnectorError for
    files that do not load."""
    if not config.address.tls:
        return None
    try:
        return tls_context(
            cafile=config.ssl_cafile,
            certfile=config.ssl_certfile,
            keyfile=config.ssl_keyfile,
            password=config.ssl_password,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConnectorError(
            f"{where} could not load its TLS files (ssl_cafile, ssl_certfile, ssl_keyfile): "
            f"{describe_exception(exc)}; check the paths and the key's ssl_password"
        ) from None


async def create_group(client: Redis, config: RedisQueueConfig) -> bool:
    """XGROUP CREATE at id 0 with MKSTREAM: nothing added before the group existed is
    skipped. False when the group existed already."""
    try:
        await client.xgroup_create(config.stream, config.group, id="0", mkstream=True)
    except ResponseError as exc:
        if str(exc).startswith("BUSYGROUP"):
            return False
        raise
    return True


async def connect(
    connector_config: RedisConnectorConfig,
    config: RedisQueueConfig,
    tls: ssl.SSLContext | None,
    consumer: str,
    where: str,
) -> Redis:
    """One attempt: a client that reached a Redis >= 6.2, with the group created. An
    unreachable server raises as redis-py does (worth retrying); anything the server refused
    is a ConnectorError that says so (not worth it)."""
    client = new_client(connector_config, tls, consumer)
    try:
        text = await server_version(client)
        version = tuple(int(part) for part in text.split(".")[:2] if part.isdigit())
        if version < _MIN_VERSION:
            raise ConnectorError(
                f"{where}: the server at {connector_config.target} is Redis {text}; the "
                "connector needs 6.2 or newer (XPENDING with IDLE)"
            )
        await create_group(client, config)
    except BaseException as exc:
        await close_quietly(client)
        if isinstance(exc, ConnectorError):
            raise
        if isinstance(exc, Exception) and not isinstance(exc, UNREACHABLE):
            raise _refused(connector_config, where, exc) from exc
        why = refusal(exc)
        if why is not None:
            raise _refused(connector_config, where, exc, why) from exc
        raise
    return client


def _refused(
    config: RedisConnectorConfig, where: str, exc: BaseException, why: str | None = None
) -> ConnectorError:
    user = config.address.username
    login = f" as user {user!r}" if user else ""
    return ConnectorError(
        f"{where} could not start against {config.target}{login}: "
        f"{why or 'the server answered with an error'} ({describe_exception(exc)}); "
        "not retried: check the url, username, password, TLS files and the user's permissions"
    )


async def recreate_group(
    client: Redis, config: RedisQueueConfig, where: str, gone: ResponseError
) -> None:
    """The stream or the group was deleted under a running consumer (``gone``): create the
    group again at the start of the stream. An unreachable server raises as redis-py does."""
    try:
        created = await create_group(client, config)
        length = await client.xlen(config.stream)
    except UNREACHABLE:
        raise
    except RedisError as error:
        raise ConnectorError(
            f"{where}: its stream or group is gone ({describe_exception(gone)}) and "
            f"creating the group again failed: {describe_exception(error)}"
        ) from error
    logger.warning(
        "%s: the stream or its consumer group was deleted (%s); %s the group at the start "
        "of the stream, so the %d entr%s it holds %s delivered (again); consuming goes on",
        where,
        describe_exception(gone),
        "created" if created else "another consumer created",
        length,
        "y" if length == 1 else "ies",
        "is" if length == 1 else "are",
    )
