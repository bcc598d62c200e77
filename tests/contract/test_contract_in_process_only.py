"""The contract suite honours ``in_process_only``: for a connector whose backend lives in this
process it checks that a worker process is refused, instead of failing the worker-process run
with a message about unhandled or unacked messages."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence

import pytest

import romeways
from romeways.testing import ConnectorContract, check_connector

_BACKEND: dict[str, deque[bytes]] = {}  # queue key -> messages, in this process only


class LocalQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    key: str


class LocalConnector(romeways.AQueueConnector[romeways.GenericConnectorConfig, LocalQueueConfig]):
    """At most once; the messages live in a dict of this process."""

    in_process_only = True

    def _queue(self) -> deque[bytes]:
        return _BACKEND.setdefault(self.config.key, deque())

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        queue = self._queue()
        deadline = time.monotonic() + self.config.frequency
        while not queue and time.monotonic() < deadline:  # noqa: ASYNC110  # a plain poll
            await asyncio.sleep(0.01)
        return [queue.popleft() for _ in range(min(max_chunk_size, len(queue)))]

    async def send_messages(self, message: bytes) -> None:
        self._queue().append(message)


async def local_configs(
    queue_name: str,
) -> tuple[romeways.GenericConnectorConfig, LocalQueueConfig]:
    return (
        romeways.GenericConnectorConfig(connector_name="local"),
        LocalQueueConfig(connector_name="local", key=queue_name),
    )


def test_check_connector_checks_the_refusal_instead_of_a_worker_process_run() -> None:
    asyncio.run(
        check_connector(
            LocalConnector,
            local_configs,
            redelivers_unacked=False,
            checks=("protocol", "fifo_and_chunk_limit", "app_run_in_worker_process"),
            timeout=20.0,
            delivery_timeout=5.0,
        )
    )


class LocalContract(ConnectorContract[romeways.GenericConnectorConfig, LocalQueueConfig]):
    connector = LocalConnector
    redelivers_unacked = False

    async def make_configs(
        self, queue_name: str
    ) -> tuple[romeways.GenericConnectorConfig, LocalQueueConfig]:
        return await local_configs(queue_name)


def test_the_pytest_entry_point_skips_the_worker_process_run_saying_why() -> None:
    with pytest.raises(pytest.skip.Exception, match="LocalConnector is in_process_only"):
        # Made from the check's name (romeways.testing.CONTRACT_CHECKS), not written out.
        getattr(LocalContract(), "test_app_run_in_worker_process")()  # noqa: B009
