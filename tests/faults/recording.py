"""The fault suite's recording connector: romeways' own ``RecordingConnector`` around the real
MemoryQueueConnector, writing what the worker asks of it to the ledger: every message it hands
out (``fetched``), every ``resend`` and every ``ack``, by message id. The tests see the real
worker's calls on a real queue."""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Callable
from typing import Any

import romeways
from romeways.testing import Acked, ConnectorEvent, Fetched, RecordingConnector, Resent

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


class LedgerRecorder:
    """Writes a recording connector's events to a ledger: each message handed out (``fetched``,
    with ``where`` it came from), each ``resend`` and each ``ack``, by message id (found by
    delivery number: events that carry no message use the ids of earlier ``Fetched``)."""

    def __init__(self, path: str | None, where: Callable[[int], str] = str) -> None:
        self.ledger = Ledger(path) if path is not None else None
        self.where = where
        self.delivered: dict[int, str] = {}

    def write(self, event: ConnectorEvent) -> None:
        ledger = self.ledger
        if isinstance(event, Fetched):
            for delivery, data in zip(event.deliveries, event.messages, strict=True):
                self.delivered[delivery] = id_of(data)
                if ledger is not None:
                    ledger.write("fetched", self.delivered[delivery], extra=self.where(delivery))
        elif ledger is None:
            return
        elif isinstance(event, Resent):
            message_id = id_of(event.original) if event.original is not None else None
            ledger.write(
                "resend",
                message_id or self.delivered.get(event.delivery, "?"),
                extra=str(event.delivery),
            )
        elif isinstance(event, Acked):
            for delivery, message in zip(event.deliveries, event.messages, strict=True):
                message_id = id_of(message) if message is not None else None
                ledger.write(
                    "ack", message_id or self.delivered.get(delivery, "?"), extra=str(delivery)
                )


_RECORDERS: weakref.WeakKeyDictionary[RecordingConnector[Any, Any], LedgerRecorder] = (
    weakref.WeakKeyDictionary()
)


def _to_ledger(connector: RecordingConnector[Any, Any], event: ConnectorEvent) -> None:
    """Each recording connector writes to the ledger its queue config names (if any)."""
    recorder = _RECORDERS.get(connector)
    if recorder is None:
        config = connector.config
        path = config.ledger if isinstance(config, RecordingQueueConfig) else None
        recorder = _RECORDERS[connector] = LedgerRecorder(path)
    recorder.write(event)


RecordingMemoryConnector = RecordingConnector.wrap(
    romeways.MemoryQueueConnector, on_event=_to_ledger
)
"""MemoryQueueConnector plus ledger records of ``fetched``, ``resend`` and ``ack``."""
