"""The Kafka connector's offset commits and rebalances: what ``Offsets`` says is finished is
committed in the background after acks (one commit in flight), and before a revocation, never
after the group moved on without this member."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from ..support import SingleFlight, describe_exception
from .offsets import Offsets, offsets_text, partitions_text

logger = logging.getLogger("romeways")


class Commits:
    """Commits the finished prefix of each assigned partition of ``consumer`` (set while it
    runs), each commit bounded by ``timeout`` seconds. ``lost`` is told of a commit that failed
    for want of the cluster, ``reached`` of one that succeeded."""

    def __init__(
        self,
        offsets: Offsets[ConsumerRecord[bytes, bytes]],
        *,
        timeout: float,
        where: str,
        lost: Callable[[BaseException], None],
        reached: Callable[[], None],
    ) -> None:
        self.consumer: AIOKafkaConsumer | None = None
        self._offsets = offsets
        self._timeout = timeout
        self._where = where
        self._lost = lost
        self._reached = reached
        self._lock = asyncio.Lock()
        # Set when a commit failed because the group moved on without this member: any commit
        # before the next assignment (the revocation's included) would land stale.
        self._fenced = False
        self._background = SingleFlight(self.commit, where=where, what="commit")

    def request(self) -> None:
        """Commit what is finished without waiting for the broker: at most one commit is in
        flight, and one asked for meanwhile is made when it ends, covering all finished by then."""
        self._background.request()

    async def wait(self) -> None:
        """Wait for the background commits in flight (close bounds this with its deadline)."""
        await self._background.wait()

    def cancel(self) -> None:
        """Cancel a background commit still in flight (close, past its deadline)."""
        self._background.cancel()

    async def commit(self, *, only: Iterable[TopicPartition] | None = None) -> None:
        """Commit the finished prefixes of assigned partitions (of ``only``, when given);
        failures are logged and the offsets kept for the next commit (a revocation drops them)."""
        consumer = self.consumer
        if consumer is None:
            return
        wanted = set(only) if only is not None else None
        async with self._lock:
            if self._fenced:
                return
            to_commit = self._offsets.to_commit
            offsets = {
                tp: offset
                for tp, offset in to_commit.items()
                if tp in self._offsets and (wanted is None or tp in wanted)
            }
            if not offsets:
                return
            try:
                await asyncio.wait_for(consumer.commit(offsets), self._timeout)
            except CommitFailedError as exc:
                self._fenced = True
                logger.warning(
                    "%s could not commit offsets %s: the group is rebalancing (%s); the "
                    "partitions' next owner may deliver those messages again",
                    self._where,
                    offsets_text(offsets),
                    describe_exception(exc),
                )
                return
            except IllegalStateError as exc:
                logger.warning(
                    "%s did not commit offsets %s: %s",
                    self._where,
                    offsets_text(offsets),
                    describe_exception(exc),
                )
                for tp in offsets:
                    to_commit.pop(tp, None)
                return
            except (KafkaError, TimeoutError, OSError) as exc:
                logger.warning(
                    "%s could not commit offsets %s: %s; retrying with the next commit",
                    self._where,
                    offsets_text(offsets),
                    describe_exception(exc),
                )
                self._lost(exc)
                return
            self._reached()
            for tp, offset in offsets.items():
                if to_commit.get(tp) == offset:
                    del to_commit[tp]
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("%s committed offsets %s", self._where, offsets_text(offsets))

    def listener(self) -> ConsumerRebalanceListener:
        """The rebalance listener of the consumer: see ``assigned`` and ``revoked``."""
        return _Rebalance(self)

    def assigned(self, assigned: set[TopicPartition]) -> None:
        """Partitions were assigned: a fresh start for commits."""
        self._fenced = False
        for tp in assigned:
            self._offsets.assign(tp)
        logger.info("%s was assigned partitions %s", self._where, partitions_text(assigned))

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is finished on the revoked partitions, then forget them, so no stale
        commit lands once another consumer owns them; their in-flight messages go uncommitted
        and the new owner delivers them again."""
        if not revoked:
            return
        await self.commit(only=revoked)
        unfinished = self._offsets.forget(revoked)
        logger.info(
            "%s had partitions %s revoked%s",
            self._where,
            partitions_text(revoked),
            f"; {unfinished} message(s) still being handled will be delivered again"
            if unfinished
            else "",
        )


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, commits: Commits) -> None:
        self._commits = commits

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._commits.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._commits.assigned(assigned)
