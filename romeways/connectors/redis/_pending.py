"""Entries pending in the group: this consumer's own are read again (left by a run before, or
by a reply lost with a connection), the ones it holds are kept alive, the ones a consumer that
is gone left behind are claimed, and consumers gone for good are removed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.typing import KeyT, StreamIdT

from ._acks import AckQueue
from ._client import KEEP_ALIVE, REMOVE_IF_EMPTY, UNREACHABLE
from ._config import RedisQueueConfig
from ._entries import Entry

logger = logging.getLogger("romeways")

_KEEP_ALIVE_BATCH: Final = 200


async def delivery_count(client: Redis, config: RedisQueueConfig, entry_id: bytes) -> int:
    """How many times the group has delivered the entry (XPENDING), 1 if it is not pending."""
    pending = await client.xpending_range(
        config.stream, config.group, min=entry_id, max=entry_id, count=1
    )
    return int(pending[0]["times_delivered"]) if pending else 1


class PendingEntries:
    """One consumer's part in looking after the group's pending entries. ``held()`` gives the
    ids the consumer has handed out and not acknowledged yet."""

    def __init__(
        self,
        config: RedisQueueConfig,
        consumer: str,
        where: str,
        held: Callable[[], set[bytes]],
        acks: AckQueue,
    ) -> None:
        self._config = config
        self._consumer = consumer
        self._where = where
        self._held = held
        self._acks = acks
        self.claim_at = 0.0  # time.monotonic() of the next look for entries to claim
        # The id after which this consumer's own pending entries are read next (from a run
        # before, or lost with a connection), before new ones; None once none are left.
        self.history: bytes | None = b"0"

    async def next_own(self, client: Redis) -> tuple[Entry, int] | None:
        """The next of this consumer's pending entries it does not hold (left by a run before,
        or by a reply lost with a connection) and its delivery count, one at a time so that
        each one's delivery count only grows when it is itself in flight; None once there are
        no more."""
        config = self._config
        held: set[bytes] | None = None
        while self.history is not None:
            cursor: dict[KeyT, StreamIdT] = {config.stream: self.history}
            reply = await self._acks.read(client, self._consumer, cursor, 1, None)
            entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1] if reply else []
            if not entries:
                self.history = None
                break
            entry_id, fields = entries[0]
            self.history = entry_id
            if held is None:
                held = self._held()
            if entry_id in held:
                continue
            if fields is None:  # deleted from the stream while pending: nothing to deliver
                logger.info(
                    "%s: its pending entry %s was deleted from the stream; acknowledging it",
                    self._where,
                    entry_id.decode(),
                )
                self._acks.put_back([entry_id])
                continue
            count = await delivery_count(client, config, entry_id)
            return (entry_id, fields), count
        return None

    async def claim(self, client: Redis) -> tuple[Entry, int] | None:
        """Claim one entry idle for over ``claim_idle`` (its consumer is gone: a live one keeps
        its entries alive) and its delivery count; one per fetch while there are such entries.
        When none are left, remove the consumers that are gone, and look again ``claim_idle / 2``
        later. (XAUTOCLAIM's COUNT bounds both what it claims and what it scans: claiming one at
        a time would take a round trip per ten pending entries.)"""
        config = self._config
        idle_ms = int(config.claim_idle * 1000)
        pending = await client.xpending_range(
            config.stream, config.group, min="-", max="+", count=2, idle=idle_ms
        )
        held = self._held() if pending else set[bytes]()
        candidates = [p for p in pending if p["message_id"] not in held]
        if len(candidates) <= 1:
            self.claim_at = time.monotonic() + config.claim_idle / 2
        if not candidates:
            await self.remove_gone(client)
            return None
        entry_id = cast(bytes, candidates[0]["message_id"])
        owner = candidates[0]["consumer"]
        # Claimed only if still idle (no other consumer got it first); counts a delivery.
        claimed = cast(
            "list[tuple[bytes, dict[bytes, bytes] | None]]",
            await client.xclaim(config.stream, config.group, self._consumer, idle_ms, [entry_id]),
        )
        found = [(i, f) for i, f in claimed if f is not None]
        if not found:
            return None
        count = await delivery_count(client, config, entry_id)
        logger.warning(
            "%s claimed entry %s, idle for over claim_idle=%gs at consumer %r (gone?); "
            "delivered %d time(s) now",
            self._where,
            entry_id.decode(),
            config.claim_idle,
            owner.decode() if isinstance(owner, bytes) else owner,
            count,
        )
        return found[0], count

    async def remove_gone(self, client: Redis) -> None:
        """Remove from the group the consumers idle for over ``claim_idle`` with nothing pending
        (checked again atomically as they are removed, since XGROUP DELCONSUMER drops pending
        entries for good): gone, their entries claimed."""
        config = self._config
        idle_ms = config.claim_idle * 1000
        for consumer in await client.xinfo_consumers(config.stream, config.group):
            name = consumer.get("name")
            if not isinstance(name, bytes) or name.decode() == self._consumer:
                continue
            if consumer.get("pending") != 0 or int(consumer.get("idle", 0)) <= idle_ms:
                continue
            removed = await client.eval(REMOVE_IF_EMPTY, 1, config.stream, config.group, name)
            if removed == 1:
                logger.info(
                    "%s removed consumer %r from the group: idle for %.0fs with nothing pending",
                    self._where,
                    name.decode(),
                    int(consumer["idle"]) / 1000,
                )

    async def keep_alive(self, client_of: Callable[[], Redis | None]) -> None:
        """Every ``claim_idle / 3`` seconds, reset the idle time of the entries this consumer
        holds (handlers running, delayed resends, acknowledgements not sent yet), so that no
        other consumer claims them; ends once ``client_of()`` is None (closed)."""
        config = self._config
        interval = max(0.05, config.claim_idle / 3)
        while True:
            await asyncio.sleep(interval)
            client = client_of()
            if client is None:
                return
            held = sorted(self._held())
            if not held:
                continue
            taken: list[bytes] = []
            try:
                for at in range(0, len(held), _KEEP_ALIVE_BATCH):
                    batch = held[at : at + _KEEP_ALIVE_BATCH]
                    found: Any = await client.eval(
                        KEEP_ALIVE, 1, config.stream, config.group, self._consumer, *batch
                    )
                    taken += cast("list[bytes]", found)
            except (*UNREACHABLE, ResponseError) as exc:
                logger.debug("%s could not keep its entries alive: %s", self._where, exc)
                continue
            still = self._held()
            taken = [entry_id for entry_id in taken if entry_id in still]
            if taken:
                logger.warning(
                    "%s: %d entr%s it still holds were claimed by another consumer meanwhile "
                    "(were they idle for over claim_idle=%gs? a long outage or a blocked event "
                    "loop does that); they may be handled twice",
                    self._where,
                    len(taken),
                    "y" if len(taken) == 1 else "ies",
                    config.claim_idle,
                )
