"""The memory connector passes the connector contract (as an at-most-once connector)."""

from __future__ import annotations

import asyncio
import multiprocessing

import pytest

import romeways
from romeways.testing import ConnectorContract, ContractError, check_connector


class TestMemoryConnectorContract(
    ConnectorContract[romeways.MemoryConnectorConfig, romeways.MemoryQueueConfig]
):
    connector = romeways.MemoryQueueConnector
    # A message is off the multiprocessing.Queue once fetched: at most once.
    redelivers_unacked = False
    timeout = 30.0
    delivery_timeout = 10.0

    async def make_configs(
        self, queue_name: str
    ) -> tuple[romeways.MemoryConnectorConfig, romeways.MemoryQueueConfig]:
        return (
            romeways.MemoryConnectorConfig(connector_name="memory-contract"),
            romeways.MemoryQueueConfig(
                connector_name="memory-contract", queue=multiprocessing.Queue()
            ),
        )


async def _memory_configs(
    queue_name: str,
) -> tuple[romeways.MemoryConnectorConfig, romeways.MemoryQueueConfig]:
    return (
        romeways.MemoryConnectorConfig(connector_name="memory-contract"),
        romeways.MemoryQueueConfig(connector_name="memory-contract", queue=multiprocessing.Queue()),
    )


def test_check_connector_function_runs_the_same_checks() -> None:
    asyncio.run(
        check_connector(
            romeways.MemoryQueueConnector,
            _memory_configs,
            redelivers_unacked=False,
            checks=("protocol", "fifo_and_chunk_limit", "ack_and_redelivery"),
            timeout=20.0,
        )
    )


def test_memory_connector_is_not_at_least_once() -> None:
    """The contract tells the two delivery guarantees apart: claiming at-least-once for the
    memory connector fails, naming the guarantee."""
    with pytest.raises(ContractError, match="unacked messages are delivered again"):
        asyncio.run(
            check_connector(
                romeways.MemoryQueueConnector,
                _memory_configs,
                redelivers_unacked=True,
                checks=("ack_and_redelivery",),
                timeout=20.0,
                delivery_timeout=5.0,
            )
        )
