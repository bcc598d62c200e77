"""The contract suite fails a connector that breaks a guarantee, and says which: each case is the
SQLite example connector with one bug put in."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlite_connector import SQLiteConnectorConfig, SQLiteQueueConfig, SQLiteQueueConnector

import romeways
from romeways.testing import ContractError, check_connector


class IgnoresChunkLimit(SQLiteQueueConnector):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return await super().get_messages(max_chunk_size + 2)


class ReversesChunks(SQLiteQueueConnector):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return list(reversed(await super().get_messages(max_chunk_size)))


class BlocksTheLoop(SQLiteQueueConnector):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        time.sleep(self.config.frequency)  # noqa: ASYNC251  # the bug: a blocking wait
        return await self._call(lambda db: [body for _, body in self._claim(db, max_chunk_size)])


class WaitsTooLong(SQLiteQueueConnector):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        chunk = await super().get_messages(max_chunk_size)
        if not chunk:
            await asyncio.sleep(self.config.frequency + 1.5)
        return chunk


class SleepsThroughArrivals(SQLiteQueueConnector):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        await asyncio.sleep(self.config.frequency)
        return await super().get_messages(max_chunk_size)


class OneAtATime(SQLiteQueueConnector):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return await super().get_messages(1)


class ForgetsAcks(SQLiteQueueConnector):
    async def ack(self, deliveries: Sequence[int]) -> None:
        return None


class DropsResends(SQLiteQueueConnector):
    async def resend(self, delivery: int, message: bytes) -> None:
        return None


class KeepsClaimsOnClose(SQLiteQueueConnector):
    async def close(self) -> None:
        self._db = None  # skips giving claims back


class ForgetsMetadata(SQLiteQueueConnector):
    def message_metadata(self, delivery: int) -> romeways.MessageMetadata | None:
        return None


class DropsHeaders(SQLiteQueueConnector):
    def message_metadata(self, delivery: int) -> romeways.MessageMetadata | None:
        found = super().message_metadata(delivery)
        return None if found is None else msgspec.structs.replace(found, headers=())


class HeadersAsList(SQLiteQueueConnector):
    def message_metadata(self, delivery: int) -> romeways.MessageMetadata | None:
        found = super().message_metadata(delivery)
        broken: Any = [list(pair) for pair in found.headers] if found is not None else []
        return None if found is None else msgspec.structs.replace(found, headers=broken)


class AcksInOrderOnly(SQLiteQueueConnector):
    """Assumes acks come in delivery order: an ack past the next delivery expected is dropped
    (right for a chunk at a time, wrong with max_concurrency)."""

    _expected = 0

    async def ack(self, deliveries: Sequence[int]) -> None:
        if deliveries and deliveries[0] == self._expected:
            self._expected = deliveries[-1] + 1
            await super().ack(deliveries)


class NegativeLag(SQLiteQueueConnector):
    async def consumer_lag(self) -> Mapping[str, int]:
        return {self.queue_name: -1}


CASES = [
    (IgnoresChunkLimit, "fifo_and_chunk_limit", "at most max_chunk_size"),
    (ReversesChunks, "fifo_and_chunk_limit", "FIFO within a queue"),
    (BlocksTheLoop, "waits_at_most_frequency", "does not block the event loop"),
    (WaitsTooLong, "waits_at_most_frequency", "waits at most frequency seconds"),
    (SleepsThroughArrivals, "wakes_for_new_message", "returns as soon as a message arrives"),
    (ForgetsAcks, "ack_and_redelivery", "an acked message is never delivered again"),
    (DropsResends, "resend_with_counter", "waiting for the resent message"),
    (ForgetsAcks, "app_run_with_resend_and_shutdown", "was acked (nothing is delivered again)"),
    (ForgetsAcks, "app_batch_handler", "a batch handler finished was acked"),
    (DropsResends, "app_batch_handler", "with a batch handler finishes every message"),
    (OneAtATime, "app_batch_handler", "gets chunks of more than one message"),
    (KeepsClaimsOnClose, "shutdown_leaves_unfinished_unacked", "delivered again"),
    (ForgetsMetadata, "message_metadata", "gives a romeways.MessageMetadata for a delivery"),
    (DropsHeaders, "message_metadata", "the headers the message was published with"),
    (HeadersAsList, "message_metadata", "headers is a tuple of (str, bytes) pairs"),
    (NegativeLag, "consumer_lag", "maps source names (str) to message counts (int >= 0)"),
    (
        AcksInOrderOnly,
        "app_max_concurrency",
        "finished out of order with max_concurrency was acked",
    ),
]


@pytest.mark.parametrize(
    ("connector", "check", "complaint"), CASES, ids=[f"{c.__name__}-{k}" for c, k, _ in CASES]
)
def test_contract_names_the_broken_guarantee(
    connector: type[SQLiteQueueConnector], check: str, complaint: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "queues.db")

    async def make_configs(queue_name: str) -> tuple[SQLiteConnectorConfig, SQLiteQueueConfig]:
        return (
            SQLiteConnectorConfig(connector_name="sqlite", path=path),
            SQLiteQueueConfig(connector_name="sqlite", visibility_timeout=60.0),
        )

    with pytest.raises(ContractError, match=re.escape(complaint)):
        asyncio.run(
            check_connector(
                connector,
                make_configs,
                checks=(check,),
                timeout=20.0,
                slack=0.5,
                delivery_timeout=3.0,
            )
        )


def test_the_unbroken_connector_passes_those_checks(tmp_path: Path) -> None:
    path = str(tmp_path / "queues.db")

    async def make_configs(queue_name: str) -> tuple[SQLiteConnectorConfig, SQLiteQueueConfig]:
        return (
            SQLiteConnectorConfig(connector_name="sqlite", path=path),
            SQLiteQueueConfig(connector_name="sqlite", visibility_timeout=60.0),
        )

    checks = sorted({check for _, check, _ in CASES})
    asyncio.run(check_connector(SQLiteQueueConnector, make_configs, checks=checks))


def test_unknown_check_is_refused() -> None:
    async def make_configs(queue_name: str) -> tuple[SQLiteConnectorConfig, SQLiteQueueConfig]:
        raise AssertionError("not reached")

    with pytest.raises(ValueError, match="unknown check 'fifo'"):
        asyncio.run(check_connector(SQLiteQueueConnector, make_configs, checks=["fifo"]))
