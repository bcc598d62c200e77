"""The delivery tags of one channel and how to acknowledge the finished ones: pure bookkeeping,
no I/O, so it is tested on its own."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class AckWindow:
    """The unacknowledged delivery tags of one AMQP channel, in the order the broker delivered
    them (ascending), and which of them are finished.

    ``finish(tags)`` says how to acknowledge finished tags without ever covering one that is
    not finished (still handled, waiting for a delayed resend, or fetched but not handed out): a
    ``multiple`` ack up to the last finished tag of the finished prefix, and single acks for
    the finished tags after the first unfinished one. A multiple ack's own tag is always one
    not acknowledged yet (the broker closes the channel for an unknown tag).
    """

    __slots__ = ("_acked", "_finished", "_pending")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()  # delivered, not yet passed by a multiple ack
        self._finished: set[int] = set()  # of _pending: finished, not acknowledged yet
        self._acked: set[int] = set()  # of _pending: acknowledged on their own

    def delivered(self, tag: int) -> None:
        """The broker delivered ``tag`` on this channel (tags ascend)."""
        self._pending.append(tag)

    def finish(self, tags: Iterable[int]) -> tuple[int | None, list[int]]:
        """These delivered tags are finished: ``(multiple, singles)``, the tag to ack with
        ``multiple=True`` (or None) and the tags to ack one by one, ascending."""
        finished = self._finished
        finished.update(tags)
        pending, acked = self._pending, self._acked
        multiple: int | None = None
        while pending:
            head = pending[0]
            if head in finished:
                finished.discard(head)
                multiple = head
            elif head in acked:
                acked.discard(head)
            else:
                break
            pending.popleft()
        if not finished:
            return multiple, []
        singles = sorted(finished)
        acked.update(singles)
        finished.clear()
        return multiple, singles

    def last_unacked(self) -> int | None:
        """The highest tag not acknowledged: a ``multiple`` nack of it gives back exactly the
        unfinished deliveries, in order."""
        acked = self._acked
        for tag in reversed(self._pending):
            if tag not in acked:
                return tag
        return None

    def unacked(self) -> int:
        """How many delivered tags are not acknowledged."""
        return len(self._pending) - len(self._acked)
