"""The redis-py client the connector uses: made from the config (TLS through the kit's
``tls_context``), no retries of its own (the connector reconnects with the kit's backoff), and
what its errors mean."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.asyncio.connection import Connection, ConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..support import describe_exception
from ._config import RedisConnectorConfig

logger = logging.getLogger("romeways")

# A lost or unreachable server: reconnect (with backoff), never give up on a message.
UNREACHABLE: Final = (RedisConnectionError, RedisTimeoutError, OSError)

# Keeps this consumer's entries alive: XCLAIM (to itself, resetting their idle time without
# counting a delivery) the ids it still owns; an entry another consumer has claimed meanwhile
# stays with that one. ARGV: group, consumer, ids...; returns the ids another consumer owns.
KEEP_ALIVE: Final = """
local taken = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 then
    if p[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      taken[#taken + 1] = ARGV[i]
    end
  end
end
return taken
"""

# Removes a consumer from the group only if nothing is pending at it (XGROUP DELCONSUMER would
# drop its pending entries from the group for good). ARGV: group, consumer; 1 when removed.
REMOVE_IF_EMPTY: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


class TlsConnection(Connection):
    """A TCP connection wrapped in the connector's ``ssl.SSLContext`` (made by the kit's
    ``tls_context``, so the server is checked against ``ssl_cafile`` and its host name, and the
    client certificate is presented), instead of the one redis-py would make itself."""

    def __init__(self, *, tls: ssl.SSLContext, **kwargs: Any) -> None:
        self.tls = tls
        cast(Any, super()).__init__(**kwargs)  # redis-py leaves **kwargs untyped

    # redis-py's own SSLConnection overrides the same method to add its context.
    def _connection_arguments(self) -> Mapping[str, Any]:
        base: Mapping[str, Any] = cast(Any, super())._connection_arguments()
        return {**base, "ssl": self.tls}


def new_client(
    config: RedisConnectorConfig, tls: ssl.SSLContext | None, client_name: str | None
) -> Redis:
    """A client over a pool of its own, its connections named ``client_name`` (CLIENT LIST
    shows it). Holds the password: never log its arguments."""
    address = config.address
    options: dict[str, Any] = {
        "host": address.host,
        "port": address.port,
        "db": address.db,
        "username": address.username,
        "password": address.password,
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.socket_connect_timeout,
        "retry": Retry(NoBackoff(), 0),
        "protocol": 2,
        "client_name": client_name,
    }
    if tls is not None:
        options |= {"connection_class": TlsConnection, "tls": tls}
    return Redis.from_pool(ConnectionPool(**options))


async def server_version(client: Redis) -> str:
    """PING, then the server's version (INFO server); redis-py leaves both calls untyped."""
    untyped: Any = client
    await untyped.ping()
    info: dict[str, Any] = await untyped.info("server")
    return str(info.get("redis_version", "0"))


async def close_quietly(client: Redis) -> None:
    """Close a client's connections within a second; errors are not ours to raise here."""
    try:
        await asyncio.wait_for(client.aclose(), 1.0)
    except Exception as exc:
        logger.debug("closing a Redis client failed: %s", describe_exception(exc))


async def group_lag(client: Redis, stream: str, group: str, timeout: float) -> dict[str, int]:
    """``{stream: entries the group has not read yet}`` (XINFO GROUPS; Redis 7 tells, older
    servers leave it empty)."""
    lag: dict[str, int] = {}
    groups = await asyncio.wait_for(client.xinfo_groups(stream), timeout)
    for info in groups:
        if info.get("name") == group.encode() and info.get("lag") is not None:
            lag[stream] = int(info["lag"])
    return lag


def is_nogroup(exc: BaseException) -> bool:
    """The stream or its group does not exist (deleted under a running consumer)."""
    return isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP")


def refusal(exc: BaseException) -> str | None:
    """Why the server refused us for good (a login, a permission, a certificate it does not
    trust), or None for errors worth retrying (an unreachable server)."""
    if isinstance(exc, AuthenticationError):
        return "the server refused the login"
    if isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith(("NOPERM", "WRONGPASS", "NOAUTH"))
    ):
        return "the server refused a command (check the user's ACL permissions)"
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return "the server's TLS certificate is not trusted (check ssl_cafile)"
        if any(alert in str(cause) for alert in _CERTIFICATE_ALERTS):
            return (
                "the server refused the client's TLS certificate (check ssl_certfile and "
                "ssl_keyfile, and that the server's CA signed them)"
            )
        cause = cause.__cause__ or cause.__context__
    return None


# TLS alerts a server sends when it does not accept the client's certificate (or its lack of
# one); redis-py reports them as a ConnectionError whose text holds the alert.
_CERTIFICATE_ALERTS: Final = (
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_CERTIFICATE_UNKNOWN",
)
