"""A connector author's contract test module, as mypy --strict and pyright strict see it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from multiprocessing import Queue
from typing import assert_type

import romeways
from romeways.testing import CONTRACT_CHECKS, ConnectorContract, ContractError, check_connector


class EchoConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    region: str


class EchoQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    stream: str


class EchoConnector(romeways.AQueueConnector[EchoConfig, EchoQueueConfig]):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        return None


class TestEchoConnector(ConnectorContract[EchoConfig, EchoQueueConfig]):
    connector = EchoConnector
    redelivers_unacked = False
    delivery_timeout = 5.0

    async def make_configs(self, queue_name: str) -> tuple[EchoConfig, EchoQueueConfig]:
        return (
            EchoConfig(connector_name="echo", region="eu"),
            EchoQueueConfig(connector_name="echo", stream=queue_name),
        )


class TestMemory(ConnectorContract[romeways.MemoryConnectorConfig, romeways.MemoryQueueConfig]):
    connector = romeways.MemoryQueueConnector

    async def make_configs(
        self, queue_name: str
    ) -> tuple[romeways.MemoryConnectorConfig, romeways.MemoryQueueConfig]:
        return (
            romeways.MemoryConnectorConfig(connector_name="m"),
            romeways.MemoryQueueConfig(connector_name="m", queue=Queue()),
        )


async def echo_configs(queue_name: str) -> tuple[EchoConfig, EchoQueueConfig]:
    return EchoConfig(connector_name="echo", region="eu"), EchoQueueConfig(
        connector_name="echo", stream=queue_name
    )


def main() -> None:
    assert_type(CONTRACT_CHECKS, tuple[str, ...])
    try:
        asyncio.run(check_connector(EchoConnector, echo_configs, checks=CONTRACT_CHECKS[:2]))
    except ContractError as exc:
        assert_type(str(exc), str)
