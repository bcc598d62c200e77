"""Publishing: a connection of its own (a broker blocking publishers never holds up the
consumer's acks), publisher confirms and ``mandatory``, and what RabbitMQ's refusals mean."""

from __future__ import annotations

import asyncio

import aio_pika.abc
import aiormq.abc
from aiormq import spec
from aiormq.exceptions import DeliveryError, PublishError

from ..._errors import ConnectorError
from ._broker import CALL_ERRORS, Names, Refused, close_quietly, connect, declare
from ._config import RabbitMQConnectorConfig, RabbitMQQueueConfig


class Publisher:
    """Publishes with confirms over a connection opened on first use (and again after it is
    lost). ``declare``: declare the queue first, for an instance whose ``on_start`` never ran
    (``romeways.publish``), so its first publish is not unroutable."""

    def __init__(
        self,
        config: RabbitMQConnectorConfig,
        queue_config: RabbitMQQueueConfig,
        names: Names,
        *,
        declare: bool,
    ) -> None:
        self._config = config
        self._queue_config = queue_config
        self._names = names
        self._declare = declare
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._lock: asyncio.Lock | None = None

    async def _channel(self) -> aiormq.abc.AbstractChannel:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._raw is not None and not self._raw.is_closed:
                return self._raw
            await self.close()
            names = self._names
            try:
                connection = await connect(self._config, self._queue_config, "publisher", names)
            except (Refused, *CALL_ERRORS) as exc:
                raise ConnectorError(
                    f"{names.where} could not connect to publish: {names.text(exc)}; check that "
                    "the broker is running and that url is right"
                ) from exc
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                if self._declare:
                    await declare(channel, self._queue_config, names)
                    self._declare = False
                raw = await channel.get_underlay_channel()
            except BaseException as exc:
                await close_quietly(connection)
                if isinstance(exc, Exception) and not isinstance(exc, ConnectorError):
                    raise ConnectorError(
                        f"{names.where} could not open a channel to publish: {names.text(exc)}"
                    ) from exc
                raise
            self._connection, self._raw = connection, raw
            return raw

    async def publish(
        self,
        body: bytes,
        *,
        exchange: str,
        routing_key: str,
        properties: spec.Basic.Properties,
        what: str,
    ) -> None:
        """Publish once the broker confirms it stored the message; a ConnectorError saying why
        when it did not (unroutable, refused, no confirm in time, unreachable)."""
        raw = await self._channel()
        names, timeout = self._names, self._config.publish_timeout
        try:
            await raw.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                timeout=timeout,
            )
        except PublishError as exc:
            reply = getattr(exc.frame, "reply_text", "returned")
            raise ConnectorError(
                f"{names.where} could not {what}: RabbitMQ returned it unroutable ({reply}): no "
                f"queue is bound to exchange {exchange!r} with routing key {routing_key!r} "
                "(deleted, or not bound); nothing was stored"
            ) from exc
        except DeliveryError as exc:
            raise ConnectorError(
                f"{names.where} could not {what}: RabbitMQ refused to store it (nack): the queue "
                "may be full (x-max-length with x-overflow reject-publish) or the broker short "
                "of resources"
            ) from exc
        except TimeoutError as exc:
            raise ConnectorError(
                f"{names.where} could not {what}: RabbitMQ did not confirm it within "
                f"publish_timeout={timeout:g}s (blocked by a resource alarm, or unreachable); it "
                "may or may not be stored"
            ) from exc
        except CALL_ERRORS as exc:
            raise ConnectorError(
                f"{names.where} could not {what}: {names.text(exc)}; check that the broker is "
                "reachable"
            ) from exc

    async def close(self) -> None:
        connection, self._connection, self._raw = self._connection, None, None
        if connection is not None:
            await close_quietly(connection)
