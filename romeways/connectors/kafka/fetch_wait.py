"""The Kafka connector's adaptive fetch wait: a short wait while messages flow (brokers such as
Tansu answer an empty fetch only after the wait), a longer one while idle (each empty fetch
costs CPU)."""

from __future__ import annotations

import logging

from ..._private import fetcher_with_wait, set_fetch_wait

logger = logging.getLogger("romeways")


class FetchWait:
    """Switches a running consumer's fetch wait between ``busy_ms`` (``fetch_max_wait_ms``,
    while fetches find messages) and ``idle_ms`` (``idle_fetch_max_wait_ms``, once one found
    nothing). aiokafka has no public way to change it: its fetcher's private attribute is set
    (see ``romeways._private``), and without such a fetcher the wait stays ``busy_ms``."""

    __slots__ = ("busy_ms", "current_ms", "fetcher", "idle_ms")

    def __init__(self, busy_ms: int, idle_ms: int) -> None:
        self.busy_ms = busy_ms
        self.idle_ms = idle_ms
        self.current_ms = busy_ms  # what the consumer's fetches use now
        self.fetcher: object | None = None  # set while adapting a started consumer's fetches

    def adapt(self, consumer: object, where: str) -> None:
        """Find the started consumer's fetcher (not looked for when the waits are equal);
        without one, warn once that the wait stays ``busy_ms``."""
        if self.idle_ms == self.busy_ms:
            return
        fetcher = fetcher_with_wait(consumer)
        if fetcher is not None:
            self.fetcher = fetcher
            return
        logger.warning(
            "%s cannot change the fetch wait of this aiokafka version's consumer: fetches wait "
            "fetch_max_wait_ms=%d ms, idle or not (idle_fetch_max_wait_ms=%d is not used)",
            where,
            self.busy_ms,
            self.idle_ms,
        )

    def use(self, wait_ms: int) -> None:
        """Have the consumer's next fetches wait ``wait_ms`` at most (only when adapting)."""
        if wait_ms != self.current_ms and self.fetcher is not None:
            set_fetch_wait(self.fetcher, wait_ms)
            self.current_ms = wait_ms

    def reset(self) -> None:
        """The consumer is gone (closed): forget its fetcher."""
        self.fetcher = None
        self.current_ms = self.busy_ms
