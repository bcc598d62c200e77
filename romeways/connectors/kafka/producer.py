"""The Kafka connector's producer (acks="all"): resends, ``send_messages`` and ``publish``,
each confirmed by the broker; started with the consumer, or on first use when the connector
was never started (``romeways.publish``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from ..._errors import ConnectorError
from ..support import describe_exception
from .clients import stop_quietly


class Producer:
    """One topic's producer; ``client`` is None until started (by the connector's start or by
    the first message) and again after close."""

    __slots__ = ("_new", "_servers", "_topic", "_where", "client")

    def __init__(
        self, new: Callable[[], AIOKafkaProducer], *, topic: str, where: str, servers: str
    ) -> None:
        self._new = new
        self._topic = topic
        self._where = where
        self._servers = servers
        self.client: AIOKafkaProducer | None = None

    async def started(self) -> AIOKafkaProducer:
        """The producer, started now if it was not."""
        if self.client is None:
            producer = self._new()
            try:
                await producer.start()
            except KafkaError as exc:
                await stop_quietly(producer)
                raise ConnectorError(
                    f"{self._where} could not start its producer against {self._servers}: "
                    f"{describe_exception(exc)}; check that the broker is running"
                ) from exc
            self.client = producer
        return self.client

    async def produce(
        self,
        message: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        what: str,
    ) -> None:
        """Produce ``message`` once the broker confirms it; a ConnectorError saying ``what``
        failed otherwise."""
        producer = await self.started()
        try:
            await producer.send_and_wait(
                self._topic, message, key=key, headers=list(headers) or None
            )
        except KafkaError as exc:
            raise ConnectorError(
                f"{self._where} could not {what}: {describe_exception(exc)}; "
                "check that the broker is reachable and the topic exists"
            ) from exc
