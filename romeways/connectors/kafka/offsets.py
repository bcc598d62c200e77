"""The Kafka connector's offset bookkeeping: which fetched records are finished, per partition,
and so the offset each partition may commit. Pure bookkeeping, no I/O."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from aiokafka import TopicPartition


class HasOffset(Protocol):
    """What the bookkeeping needs of a record (aiokafka's ConsumerRecord has it)."""

    @property
    def offset(self) -> int: ...


R = TypeVar("R", bound=HasOffset)


@dataclass(slots=True, eq=False)
class Batch(Generic[R]):
    """One partition's records from one fetch, handed out as deliveries ``first``,
    ``first + 1``, ... in offset order: state per fetch rather than per record, which a drain
    would pay for every message. ``start``/``end``: the offsets fetched (``end`` one past the
    last, tombstones included). ``done`` (one flag per record) is made only when the batch
    finishes in parts; once all of it is finished, ``records`` is emptied (the batch is then
    complete: only its ``end`` still matters)."""

    tp: TopicPartition
    first: int
    records: list[R]
    start: int
    end: int
    done: bytearray | None = None
    finished: int = 0


def _first_of(batch: Batch[Any]) -> int:
    return batch.first


def _offset_of(record: HasOffset) -> int:
    return record.offset


class Offsets(Generic[R]):
    """Which fetched records are finished, per assigned partition, and so the offset each
    partition may commit: never past a record that is not finished (at-least-once). Pure
    bookkeeping, no I/O: the connector calls it and commits ``to_commit``."""

    def __init__(self) -> None:
        # Per assigned partition (a key exactly while assigned): its uncommitted batches, in
        # offset order; complete ones wait here until every batch before them is complete.
        self._queues: dict[TopicPartition, deque[Batch[R]]] = {}
        # The batches not complete yet, of all partitions, by ascending ``first``: a delivery's
        # batch is found by bisection.
        self._open: list[Batch[R]] = []
        # Per partition: the highest offset decided for commit, so an unchanged one is not
        # committed again; and the offset to commit next (removed once committed).
        self._decided: dict[TopicPartition, int] = {}
        self.to_commit: dict[TopicPartition, int] = {}

    def __contains__(self, tp: object) -> bool:
        return tp in self._queues

    def assign(self, tp: TopicPartition) -> None:
        self._queues.setdefault(tp, deque())

    def forget(self, tps: Collection[TopicPartition]) -> int:
        """Drop revoked partitions; how many of their records were handed out and not finished."""
        unfinished = 0
        for tp in tps:
            for batch in self._queues.pop(tp, ()):
                unfinished += len(batch.records) - batch.finished
            self._decided.pop(tp, None)
            self.to_commit.pop(tp, None)
        self._open = [b for b in self._open if b.tp not in tps]
        return unfinished

    def clear(self) -> None:
        self._queues.clear()
        self._open.clear()
        self._decided.clear()
        self.to_commit.clear()

    def add(self, tp: TopicPartition, first: int, records: list[R], start: int, end: int) -> None:
        """A fetch of ``tp``'s offsets ``start`` to ``end - 1``, whose ``records`` (those with a
        value, in offset order) are handed out as deliveries ``first``, ``first + 1``, ..."""
        queue = self._queues.get(tp)
        if queue is None:  # aiokafka returns records of assigned partitions only: never drop one
            queue = self._queues[tp] = deque()
        # The first fetch starts where the group's commit is: no need to commit that again.
        self._decided.setdefault(tp, start)
        if queue and start < queue[-1].end:
            # Not after what is pending (never seen; a seek could do it): keep offset order.
            self.truncate(tp, start)
        batch = Batch(tp, first, records, start, end)
        queue.append(batch)
        if records:
            self._open.append(batch)  # handed out in order, so ``first`` ascends

    def find(self, delivery: int) -> tuple[TopicPartition, R] | None:
        """The partition and record of a delivery not revoked, rewound nor complete yet."""
        batches = self._open
        i = bisect_right(batches, delivery, key=_first_of) - 1
        if i < 0:
            return None
        batch = batches[i]
        index = delivery - batch.first
        return (batch.tp, batch.records[index]) if index < len(batch.records) else None

    def finish(self, deliveries: Sequence[int]) -> set[TopicPartition]:
        """Mark these deliveries finished; unknown ones (revoked or rewound meanwhile) are
        ignored. Returns the partitions touched. A step-1 ``range`` (a whole chunk) costs per
        batch, not per delivery; other sequences are split into runs of consecutive numbers."""
        touched: set[TopicPartition] = set()
        if isinstance(deliveries, range) and deliveries.step == 1:
            self._finish_run(deliveries.start, deliveries.stop, touched)
            return touched
        start = stop = 0
        for delivery in deliveries:
            if delivery != stop:
                if start != stop:
                    self._finish_run(start, stop, touched)
                start = delivery
            stop = delivery + 1
        if start != stop:
            self._finish_run(start, stop, touched)
        return touched

    def _finish_run(self, start: int, stop: int, touched: set[TopicPartition]) -> None:
        batches = self._open
        lo = i = max(0, bisect_right(batches, start, key=_first_of) - 1)
        completed = False
        while i < len(batches):
            batch = batches[i]
            if batch.first >= stop:
                break
            i += 1
            count = len(batch.records)
            a = max(start - batch.first, 0)
            b = min(stop - batch.first, count)
            if a >= b:  # ends before the run
                continue
            touched.add(batch.tp)
            if a == 0 and b == count:
                batch.finished = count
            else:
                done = batch.done
                if done is None:
                    done = batch.done = bytearray(count)
                batch.finished += b - a - done.count(1, a, b)
                done[a:b] = b"\x01" * (b - a)
            if batch.finished == count:
                batch.records, batch.done, batch.finished = [], None, 0
                completed = True
        if completed:
            batches[lo:i] = [b for b in batches[lo:i] if b.records]

    def advance(self, tps: Iterable[TopicPartition]) -> bool:
        """Move each partition's next commit to its first record not finished (or past the
        last batch when all are); True when one moved."""
        moved = False
        for tp in tps:
            queue = self._queues.get(tp)
            if not queue:
                continue
            offset = -1
            while queue and not queue[0].records:
                offset = queue.popleft().end
            if queue:
                front = queue[0]
                done = front.done
                offset = front.records[0 if done is None else done.find(0)].offset
            if offset > self._decided.get(tp, -1):
                self._decided[tp] = self.to_commit[tp] = offset
                moved = True
        return moved

    def truncate(self, tp: TopicPartition, offset: int) -> None:
        """Forget ``tp``'s records from ``offset`` on (they are to be fetched again); their
        deliveries become unknown. Records before it stay as they are."""
        queue = self._queues.get(tp)
        if not queue:
            return
        while queue and queue[-1].start >= offset:
            queue.pop()
        if queue and queue[-1].end > offset:
            batch = queue[-1]
            batch.end = offset
            keep = bisect_left(batch.records, offset, key=_offset_of)
            if keep < len(batch.records):
                batch.records = batch.records[:keep]
                if batch.done is not None:
                    batch.done = batch.done[:keep]
                    batch.finished = batch.done.count(1)
                if batch.finished == keep:
                    batch.records, batch.done, batch.finished = [], None, 0
        self._open = [b for b in self._open if b.tp != tp or (b.records and b.start < offset)]


def partitions_text(tps: Iterable[TopicPartition]) -> str:
    """``[topic:0, topic:2]``, for log lines."""
    parts = sorted(tps)
    return "[" + ", ".join(f"{tp.topic}:{tp.partition}" for tp in parts) + "]" if parts else "[]"


def offsets_text(offsets: dict[TopicPartition, int]) -> str:
    """``topic:0@41, topic:2@7``, for log lines."""
    return ", ".join(
        f"{tp.topic}:{tp.partition}@{offset}" for tp, offset in sorted(offsets.items())
    )
