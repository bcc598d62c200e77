"""Starting a consumer: the TLS context, one connection attempt (version check, group
creation) and what a failed attempt means."""

from __future__ import annotations

import ssl
from typing import Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ..._errors import ConnectorError
from ..support import describe_exception, tls_context
from ._client import UNREACHABLE, close_quietly, new_client, refusal, server_version
from ._config import RedisConnectorConfig, RedisQueueConfig

_MIN_VERSION: Final = (6, 2)  # XPENDING IDLE


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
