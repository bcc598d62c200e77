"""A Kafka scenario app for the fault tests: ``python -m faults.kafkaapp --ledger PATH
--bootstrap HOST:PORT --topic T --group G [options]`` (PYTHONPATH=tests), or ``build_app()`` in
the test's own process.

The handler (typed ``Message[Item]``) records ``start`` and ``done`` in the ledger; the
recording connector records ``fetched`` (with partition:offset), ``ack``, ``resend`` and every
offset commit the broker accepted (``commit``, id ``p<partition>``, attempt = offset, extra
``STALE`` when the partition was not assigned to this consumer when it committed).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from aiokafka import TopicPartition

import romeways
from romeways._connector import capabilities
from romeways.connectors.kafka import (
    KafkaConnectorConfig,
    KafkaQueueConfig,
    KafkaQueueConnector,
)
from romeways.testing import Acked, Fetched, Resent

from .ledger import Item, Ledger, id_of
from .recording import LedgerRecorder, setup_logging

CANARY_USER = "romeways-canary"


class RecordingKafkaQueueConfig(KafkaQueueConfig, frozen=True, kw_only=True):
    """A Kafka queue whose connector records into the ledger at ``ledger``."""

    ledger: str


class RecordingKafkaConnector(KafkaQueueConnector):
    """KafkaQueueConnector plus ledger records of what the worker asks of it and of commits.
    ``instances``: every one made in this process, for tests that inspect them."""

    instances: ClassVar[list[RecordingKafkaConnector]] = []

    def __init__(
        self,
        *,
        connector_config: KafkaConnectorConfig,
        queue_name: str,
        config: KafkaQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        path = config.ledger if isinstance(config, RecordingKafkaQueueConfig) else None
        self.record = LedgerRecorder(path, self._partition_offset)
        self.ledger = self.record.ledger
        self._locate = capabilities(self).metadata  # as the worker sees it
        self._next = 0
        RecordingKafkaConnector.instances.append(self)

    async def on_start(self) -> None:
        await super().on_start()
        consumer = self._consumer
        ledger = self.ledger
        if consumer is None or ledger is None:
            return
        commit = consumer.commit

        async def recorded_commit(offsets: dict[TopicPartition, int] | None = None) -> None:
            assigned = consumer.assignment()
            try:
                await commit(offsets)
            except BaseException as exc:
                ledger.write("commitfail", type(exc).__name__)
                raise
            for tp, offset in (offsets or {}).items():
                ledger.write(
                    "commit", f"p{tp.partition}", offset, "" if tp in assigned else "STALE"
                )

        object.__setattr__(consumer, "commit", recorded_commit)

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        chunk = await super().get_messages(max_chunk_size)
        self.record.write(Fetched(max_chunk_size, self._next, tuple(chunk)))
        self._next += len(chunk)
        return chunk

    def _partition_offset(self, delivery: int) -> str:
        metadata = self._locate(delivery) if self._locate is not None else None
        where = dict(metadata.position) if metadata is not None else {}
        return f"{where['partition']}:{where['offset']}" if "offset" in where else "?"

    async def resend(self, delivery: int, message: bytes) -> None:
        await super().resend(delivery, message)
        self.record.write(Resent(delivery, None, message))

    async def ack(self, deliveries: Sequence[int]) -> None:
        self.record.write(Acked(tuple(deliveries), (None,) * len(deliveries)))
        await super().ack(deliveries)


@dataclass
class Settings:
    """What a scenario varies; the command line has one ``--option`` per field."""

    ledger: str
    bootstrap: str
    topic: str
    group: str
    spawn: bool = False
    chunk: int = 10
    sequential: bool = False
    concurrency: int = 0  # max_concurrency (0: None, a chunk at a time)
    frequency: float = 0.5
    shutdown_timeout: float = 5.0
    session_timeout_ms: int = 3000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 300_000
    request_timeout_ms: int = 40_000
    retry_backoff_ms: int = 500
    startup_timeout: float = 60.0
    retries: int = 3
    handler_seconds: float = 0.0
    slow_id: str = ""  # its first attempt (in any process) sleeps slow_seconds, asynchronously
    slow_seconds: float = 0.0
    block_id: str = ""  # its first attempt blocks the event loop for block_seconds
    block_seconds: float = 0.0
    resend_id: str = ""  # raises ResendException on its first attempt
    delay_id: str = ""  # its first attempt (in any process) raises ResendException(delay=...)
    delay_seconds: float = 0.0
    error_id: str = ""  # always raises RuntimeError (dead-lettered)
    password: str = ""  # SASL password (of username) when given
    username: str = CANARY_USER
    mechanism: str = "PLAIN"  # or SCRAM-SHA-256, SCRAM-SHA-512
    log_level: str = "INFO"


def build_app(
    settings: Settings, on_dead_letter: Callable[[romeways.DeadLetter], None] | None = None
) -> romeways.App:
    """The scenario's App: one recording Kafka queue with the ledger-writing handler;
    ``on_dead_letter`` also gets every dead letter (in-process tests)."""
    ledger = Ledger(settings.ledger)
    app = romeways.App(shutdown_timeout=settings.shutdown_timeout, max_restarts=5)
    queue = RecordingKafkaQueueConfig(
        connector_name="kafka-faults",
        topic=settings.topic,
        group_id=settings.group,
        ledger=settings.ledger,
        frequency=settings.frequency,
        max_chunk_size=settings.chunk,
        sequential=settings.sequential,
        max_concurrency=settings.concurrency or None,
        retries=settings.retries,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
    )
    security: dict[str, Any] = {}
    if settings.password:
        security = {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": settings.mechanism,
            "sasl_plain_username": settings.username,
            "sasl_plain_password": settings.password,
        }
    connector = KafkaConnectorConfig(
        connector_name="kafka-faults",
        bootstrap_server=settings.bootstrap,
        client_id="romeways-faults",
        startup_timeout=settings.startup_timeout,
        request_timeout_ms=settings.request_timeout_ms,
        retry_backoff_ms=settings.retry_backoff_ms,
        **security,
    )

    def first_attempt(item_id: str) -> bool:
        return sum(1 for r in ledger.records("start") if r.id == item_id) <= 1

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        ledger.write("dead", id_of(letter.data), letter.resend_times, letter.reason[:80])
        if on_dead_letter is not None:
            on_dead_letter(letter)

    @app.queue_consumer(queue_name="faults", config=queue, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        item_id = message.payload.id
        ledger.write("start", item_id, message.rw_resend_times)
        if item_id == settings.slow_id and first_attempt(item_id):
            await asyncio.sleep(settings.slow_seconds)
        if item_id == settings.block_id and first_attempt(item_id):
            time.sleep(settings.block_seconds)  # noqa: ASYNC251  # blocks the loop on purpose
        if item_id == settings.delay_id and first_attempt(item_id):
            raise romeways.ResendException("later", delay=settings.delay_seconds)
        if item_id == settings.resend_id and message.rw_resend_times == 0:
            raise romeways.ResendException("once more")
        if item_id == settings.error_id:
            raise RuntimeError(f"handler failed on {item_id}")
        if settings.handler_seconds:
            await asyncio.sleep(settings.handler_seconds)
        ledger.write("done", item_id, message.rw_resend_times)

    app.connector_register(
        connector=RecordingKafkaConnector, config=connector, spawn_process=settings.spawn
    )
    return app


def parse(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true")
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, dest=f.name, type=kind, required=f.name in _REQUIRED)
    values = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return Settings(**values)


_REQUIRED = ("ledger", "bootstrap", "topic", "group")


def main() -> None:
    settings = parse()
    setup_logging(getattr(logging, settings.log_level))
    if settings.log_level != "DEBUG":
        logging.getLogger("aiokafka").setLevel(logging.WARNING)
    asyncio.run(build_app(settings).start())
    print(f"parent {os.getpid()} exits normally", flush=True)


if __name__ == "__main__":
    main()
