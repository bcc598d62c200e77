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

    __slots__ = ("_finished", "_unacked")

    def __init__(self) -> None:
        # Delivered and not acknowledged, ascending: at most the prefetch plus what is handed
        # out and not finished, however long one of them stays unfinished.
        self._unacked: deque[int] = deque()
        self._finished: set[int] = set()  # finish() called for them, not acknowledged yet

    def delivered(self, tag: int) -> None:
        """The broker delivered ``tag`` on this channel (tags ascend)."""
        self._unacked.append(tag)

    def finish(self, tags: Iterable[int]) -> tuple[int | None, list[int]]:
        """These delivered tags are finished: ``(multiple, singles)``, the tag to ack with
        ``multiple=True`` (or None) and the tags to ack one by one, ascending. A tag not
        delivered, or already acknowledged, is left out: acking it would close the channel."""
        finished = self._finished
        finished.update(tags)
        unacked = self._unacked
        multiple: int | None = None
        while unacked and unacked[0] in finished:
            multiple = unacked.popleft()
            finished.discard(multiple)
        if not finished:
            return multiple, []
        singles: list[int] = []
        for tag in sorted(finished):
            try:
                unacked.remove(tag)  # near the front: the window is about the prefetch long
            except ValueError:
                continue
            singles.append(tag)
        finished.clear()
        return multiple, singles

    def last_unacked(self) -> int | None:
        """The highest tag not acknowledged: a ``multiple`` nack of it gives back exactly the
        unfinished deliveries, in order."""
        return self._unacked[-1] if self._unacked else None

    def unacked(self) -> int:
        """How many delivered tags are not acknowledged."""
        return len(self._unacked)
