"""A memory connector that writes what the worker asks of it to the ledger: every message it
hands out (``fetched``), every ``resend`` and every ``ack``, by message id. It is the real
MemoryQueueConnector otherwise, so the tests see the real worker's calls on a real queue."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

import romeways

from .ledger import Ledger, id_of

LOG_FORMAT = "%(created).3f %(levelname)s %(name)s[%(process)d]: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Scenario apps log to stderr, each line starting with its time.time() stamp."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class RecordingQueueConfig(romeways.MemoryQueueConfig, frozen=True, kw_only=True):
    """A memory queue whose connector records into the ledger at ``ledger``."""

    ledger: str


class DeliveryLedger:
    """What a recording connector writes: each message it hands out (``fetched``, with where it
    came from), each ``resend`` and each ``ack``, by message id (found by delivery number)."""

    def __init__(self, path: str | None) -> None:
        self.ledger = Ledger(path) if path is not None else None
        self.delivered: dict[int, str] = {}
        self._next = 0

    def fetched(self, chunk: Sequence[bytes], where: Callable[[int], str] = str) -> None:
        for data in chunk:
            message_id = id_of(data)
            self.delivered[self._next] = message_id
            if self.ledger is not None:
                self.ledger.write("fetched", message_id, extra=where(self._next))
            self._next += 1

    def resent(self, delivery: int) -> None:
        if self.ledger is not None:
            self.ledger.write("resend", self.delivered.get(delivery, "?"), extra=str(delivery))

    def acked(self, deliveries: Sequence[int]) -> None:
        if self.ledger is not None:
            for delivery in deliveries:
                self.ledger.write("ack", self.delivered.get(delivery, "?"), extra=str(delivery))


class RecordingMemoryConnector(romeways.MemoryQueueConnector):
    """MemoryQueueConnector plus ledger records of ``fetched``, ``resend`` and ``ack``."""

    def __init__(
        self,
        *,
        connector_config: romeways.MemoryConnectorConfig,
        queue_name: str,
        config: romeways.MemoryQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        path = config.ledger if isinstance(config, RecordingQueueConfig) else None
        self.record = DeliveryLedger(path)

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        chunk = await super().get_messages(max_chunk_size)
        self.record.fetched(chunk)
        return chunk

    async def resend(self, delivery: int, message: bytes) -> None:
        await super().resend(delivery, message)
        self.record.resent(delivery)

    async def ack(self, deliveries: Sequence[int]) -> None:
        self.record.acked(deliveries)
        await super().ack(deliveries)
