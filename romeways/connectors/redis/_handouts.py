"""What the connector has handed to the worker and not had acknowledged: each delivery's entry,
how many times the group delivered it (when not once), and those delivered more often than
``max_deliveries`` allows (for the worker's ``spent_deliveries``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final

from ..support import DeliveryLedger
from ._config import RedisQueueConfig
from ._entries import DATA, Entry, foreign_message

logger = logging.getLogger("romeways")

_NOTHING_SPENT: Final[Mapping[int, str]] = MappingProxyType({})


class Handouts:
    """Deliveries numbered as the worker numbers them, with their entries until finished."""

    def __init__(self, config: RedisQueueConfig, where: str) -> None:
        self._config = config
        self._where = where
        self._ledger: DeliveryLedger[Entry] = DeliveryLedger()
        # Per delivery, when not 1: how many times the group has delivered its entry; and the
        # deliveries past max_deliveries, with why.
        self._counts: dict[int, int] = {}
        self._spent: dict[int, str] = {}
        self._warned_fields = False

    def hand_out(self, entries: list[Entry]) -> list[bytes]:
        """The messages of fetched entries, numbered as deliveries in order."""
        try:
            chunk = [fields[DATA] for _, fields in entries]
        except KeyError:
            chunk = [self._message_of(entry) for entry in entries]
        self._ledger.add_all(entries)
        return chunk

    def hand_out_counted(self, entries: list[Entry], counts: list[int]) -> list[bytes]:
        """Like ``hand_out``, for entries delivered ``counts`` times (redeliveries): those past
        the budget are reported by ``spent`` for the worker to dead-letter."""
        first = self._ledger.next_delivery
        chunk = self.hand_out(entries)
        limit = self._config.delivery_limit
        for delivery, count in enumerate(counts, first):
            self._counts[delivery] = count
            if count > limit:
                self._spent[delivery] = (
                    f"its entry was delivered {count} times without being finished (the "
                    "worker handling it stopped or died each time), more than the "
                    f"{limit} allowed (max_deliveries, else retries + 1)"
                )
        return chunk

    def _message_of(self, entry: Entry) -> bytes:
        entry_id, fields = entry
        data = fields.get(DATA)
        if data is not None:
            return data
        if not self._warned_fields:
            self._warned_fields = True
            logger.warning(
                "%s: entry %s has no %r field (not added by romeways?); such entries are "
                "handed over as a JSON object of their fields",
                self._where,
                entry_id.decode(),
                DATA.decode(),
            )
        return foreign_message(fields)

    def spent(self, first: int, count: int) -> Mapping[int, str]:
        """The deliveries of ``first`` to ``first + count - 1`` past ``max_deliveries``, with
        why."""
        spent = self._spent
        if not spent:
            return _NOTHING_SPENT
        return {d: why for d, why in spent.items() if first <= d < first + count}

    def get(self, delivery: int) -> Entry | None:
        return self._ledger.get(delivery)

    def count_of(self, delivery: int) -> int:
        """How many times the group has delivered the entry of ``delivery``."""
        return self._counts.get(delivery, 1)

    def ids(self) -> set[bytes]:
        """The ids of the entries handed out and not finished."""
        return {entry[0] for _, entry in self._ledger.items()}

    def finish(self, deliveries: Sequence[int]) -> list[Entry]:
        """Forget these deliveries; returns the entries of those that were known, in order."""
        entries = self._ledger.pop_all(deliveries)
        if self._counts:
            for delivery in deliveries:
                self._counts.pop(delivery, None)
                self._spent.pop(delivery, None)
        return entries

    def forget(self, delivery: int) -> None:
        self._ledger.pop(delivery)
        self._counts.pop(delivery, None)
        self._spent.pop(delivery, None)

    def clear(self) -> None:
        self._ledger.clear()
        self._counts.clear()
        self._spent.clear()
