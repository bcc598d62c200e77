"""Talking to the broker: connecting (a refused login, vhost or certificate told apart from an
unreachable broker), declaring the queue, closing quietly, and naming it all in messages."""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from typing import Final

import aio_pika
import aio_pika.abc
from aiormq.exceptions import (
    AMQPConnectionError,
    AMQPError,
    AuthenticationError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ConnectionClosed,
    InvalidFrameError,
    ProbableAuthenticationError,
)
from yarl import URL

from ..._errors import ConnectorError
from ..support import describe_exception
from ._config import RabbitMQConnectorConfig, RabbitMQQueueConfig, url_password

# Where aio-pika and aiormq log (a filter acts only on the logger it is attached to).
CLIENT_LOGGERS: Final = (
    "aiormq.connection",
    "aiormq.channel",
    "aio_pika",
    "aio_pika.connection",
    "aio_pika.channel",
    "aio_pika.exchange",
    "aio_pika.queue",
    "aio_pika.message",
)
# What a failing broker call raises besides AMQP errors: a closed socket, a closed channel.
CALL_ERRORS: Final = (AMQPError, ChannelInvalidStateError, ConnectionError, OSError, TimeoutError)
RPC_TIMEOUT: Final = 5.0  # a basic.get, consume, qos or declare that takes longer fails
STOP_TIMEOUT: Final = 3.0  # the most a connection's close may take
# The broker's refusal of the connection for good: a login, a vhost, access to it.
_REFUSED_CODES: Final = frozenset({403, 530})


class Refused(ConnectorError):
    """The broker refused the connection or the queue for a reason a retry does not mend."""


@dataclass(frozen=True, slots=True)
class Names:
    """How messages name a connector and its broker, and keep the url's password out."""

    where: str  # "RabbitMQ connector 'x' (queue 'q', RabbitMQ queue 'orders')"
    broker: str  # "RabbitMQ at host:5672 (vhost '/')"
    password: str | None

    @classmethod
    def of(
        cls, config: RabbitMQConnectorConfig, queue_config: RabbitMQQueueConfig, queue_name: str
    ) -> Names:
        return cls(
            where=(
                f"RabbitMQ connector {config.connector_name!r} (queue {queue_name!r}, RabbitMQ "
                f"queue {queue_config.queue!r})"
            ),
            broker=f"RabbitMQ at {config.where}",
            password=url_password(config.url),
        )

    def text(self, exc: BaseException) -> str:
        """An exception as text with the url's password masked, should a client put it in."""
        text = describe_exception(exc)
        password = self.password
        return text.replace(password, "***") if password and len(password) >= 3 else text


def connection_name(
    config: RabbitMQConnectorConfig, queue_config: RabbitMQQueueConfig, role: str
) -> str:
    """What ``rabbitmqctl list_connections`` shows for a connection of this process."""
    base = config.connection_name or f"romeways {config.connector_name}"
    return f"{base}: {role} of queue {queue_config.queue} (pid {os.getpid()})"


async def connect(
    config: RabbitMQConnectorConfig,
    queue_config: RabbitMQQueueConfig,
    role: str,
    names: Names,
) -> aio_pika.abc.AbstractConnection:
    """A connection to the broker; a refused login, vhost or TLS handshake raises Refused (no
    retry mends it), an unreachable broker the client's error."""
    try:
        context = config.tls()
    except (OSError, ssl.SSLError) as exc:
        raise Refused(
            f"{names.where} could not load its TLS files (ssl_cafile, ssl_certfile, "
            f"ssl_keyfile): {describe_exception(exc)}; check the paths and ssl_password"
        ) from exc
    url = URL(config.url).update_query(heartbeat=str(config.heartbeat))
    try:
        async with asyncio.timeout(config.connect_timeout):
            return await aio_pika.connect(
                url,
                ssl_context=context,
                client_properties={"connection_name": connection_name(config, queue_config, role)},
            )
    except (ProbableAuthenticationError, AuthenticationError) as exc:
        raise Refused(
            f"{names.where} could not log in to {names.broker}: the broker refused the login of "
            f"user {URL(config.url).user!r} ({names.text(exc)}); check the user and password in "
            "url (not retried: a wrong login stays wrong)"
        ) from exc
    except (ConnectionClosed, InvalidFrameError) as exc:
        # aiormq 7 reports the broker closing the connection at Connection.Open (vhost not
        # found, access to it refused) as an unexpected frame.
        if isinstance(exc, ConnectionClosed) and (
            not exc.args or exc.args[0] not in _REFUSED_CODES
        ):
            raise
        raise Refused(
            f"{names.where} could not open {names.broker}: the broker closed the connection as "
            f"it opened the vhost ({names.text(exc)}); check that the vhost in url exists and "
            "that the user may use it (not retried)"
        ) from exc
    except (ssl.SSLError, AMQPConnectionError) as exc:
        failure = tls_failure(exc)
        if failure is None:
            raise  # unreachable, or the connection ended mid-handshake: worth a retry
        raise Refused(
            f"{names.where} could not make a TLS connection to {names.broker}: "
            f"{describe_exception(failure)}; check ssl_cafile (the CA of the broker's "
            "certificate), the host name in url, the client certificate, and that the port "
            "speaks TLS (not retried)"
        ) from exc


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind a failed connect (aiormq wraps it), unless it is one a retry may
    mend (the connection closed mid-handshake)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            if isinstance(seen, ssl.SSLEOFError | ssl.SSLZeroReturnError):
                return None
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def declare(
    channel: aio_pika.abc.AbstractChannel, config: RabbitMQQueueConfig, names: Names
) -> None:
    """Declare the exchange, the queue (durable, its type and arguments) and the bindings; with
    ``declare=False``, check that the queue exists. A queue the broker will not have so raises
    Refused."""
    try:
        if not config.declare:
            await channel.declare_queue(config.queue, passive=True, timeout=RPC_TIMEOUT)
            return
        exchange = None
        if config.exchange:
            exchange = await channel.declare_exchange(
                config.exchange, config.exchange_type, durable=True, timeout=RPC_TIMEOUT
            )
        queue = await channel.declare_queue(
            config.queue,
            durable=True,
            arguments=dict(config.queue_arguments()),
            timeout=RPC_TIMEOUT,
        )
        if exchange is not None:
            for key in config.binding_keys or [config.publish_routing_key]:
                await queue.bind(exchange, routing_key=key, timeout=RPC_TIMEOUT)
    except ChannelPreconditionFailed as exc:
        raise Refused(
            f"{names.where} could not declare the queue: it exists with other settings "
            f"({names.text(exc)}); give queue_type and arguments as the queue has them, or set "
            "declare=False to use it as it is"
        ) from exc
    except ChannelNotFoundEntity as exc:
        raise Refused(
            f"{names.where}: the queue does not exist ({names.text(exc)}); create it, or leave "
            "declare=True so that romeways declares it"
        ) from exc
    except ChannelAccessRefused as exc:
        raise Refused(
            f"{names.where}: the broker refused access ({names.text(exc)}); check the user's "
            "permissions on the vhost"
        ) from exc


async def close_quietly(connection: aio_pika.abc.AbstractConnection) -> None:
    """Close a connection within STOP_TIMEOUT; its errors are its own business."""
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await connection.close()
    except (*CALL_ERRORS, RuntimeError):
        pass
