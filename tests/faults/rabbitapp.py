"""A RabbitMQ scenario app for the fault tests: ``python -m faults.rabbitapp --ledger PATH --url
URL --queue Q [options]`` (PYTHONPATH=tests), or ``build_app()`` in the test's own process.

The handler (typed ``Message[Item]``) records ``start`` and ``done`` in the ledger; the
recording connector records ``fetched`` (extra: the broker's delivery count, ``?`` when it has
none), ``ack``, ``resend`` and the chunk sizes it returned (``chunk``, attempt = size).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import romeways
from romeways.connectors.rabbitmq import (
    RabbitMQConnectorConfig,
    RabbitMQQueueConfig,
    RabbitMQQueueConnector,
)
from romeways.testing import Acked, Fetched, Resent

from .ledger import Item, Ledger, id_of
from .recording import LedgerRecorder, setup_logging


class RecordingRabbitMQQueueConfig(RabbitMQQueueConfig, frozen=True, kw_only=True):
    """A RabbitMQ queue whose connector records into the ledger at ``ledger``."""

    ledger: str


class RecordingRabbitMQConnector(RabbitMQQueueConnector):
    """RabbitMQQueueConnector plus ledger records of what the worker asks of it.
    ``instances``: every one made in this process, for tests that inspect them."""

    instances: ClassVar[list[RecordingRabbitMQConnector]] = []

    def __init__(
        self,
        *,
        connector_config: RabbitMQConnectorConfig,
        queue_name: str,
        config: RabbitMQQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        path = config.ledger if isinstance(config, RecordingRabbitMQQueueConfig) else None
        self.record = LedgerRecorder(path, self._count)
        self._next = 0
        self.ledger = self.record.ledger
        RecordingRabbitMQConnector.instances.append(self)

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        chunk = await super().get_messages(max_chunk_size)
        self.record.write(Fetched(max_chunk_size, self._next, tuple(chunk)))
        self._next += len(chunk)
        if chunk and self.ledger is not None:
            self.ledger.write("chunk", "-", len(chunk))
        return chunk

    def _count(self, delivery: int) -> str:
        metadata = self.message_metadata(delivery)
        count = metadata.delivery_count if metadata is not None else None
        return "?" if count is None else str(count)

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
    url: str
    queue: str
    spawn: bool = False
    chunk: int = 10
    sequential: bool = False
    frequency: float = 0.3
    shutdown_timeout: float = 5.0
    startup_timeout: float = 20.0
    heartbeat: int = 60
    retries: int = 3
    delivery_limit: int = 0  # 0: the default (retries + 2)
    prefetch: int = 0  # 0: the default (4 * chunk)
    queue_type: str = "quorum"
    max_restarts: int = 5
    connection_name: str = "romeways-faults"
    handler_seconds: float = 0.0
    poison_id: str = ""  # SIGKILLs its own worker process every time it is handled
    resend_id: str = ""  # raises ResendException on its first attempt
    delay_id: str = ""  # its first attempt (in any process) raises ResendException(delay=...)
    delay_seconds: float = 0.0
    error_id: str = ""  # always raises RuntimeError (dead-lettered)
    hang_id: str = ""  # its handler never returns
    max_length: int = 0  # > 0: the queue's x-max-length, with x-overflow reject-publish
    log_level: str = "INFO"


def build_app(
    settings: Settings,
    on_dead_letter: Callable[[romeways.DeadLetter], None] | None = None,
    before_resend: Callable[[str], Any] | None = None,
) -> romeways.App:
    """The scenario's App: one recording RabbitMQ queue with the ledger-writing handler;
    ``on_dead_letter`` also gets every dead letter, and ``before_resend(id)`` is awaited just
    before the handler raises ResendException for ``resend_id`` (in-process tests)."""
    ledger = Ledger(settings.ledger)
    app = romeways.App(
        shutdown_timeout=settings.shutdown_timeout, max_restarts=settings.max_restarts
    )
    queue_type: Any = settings.queue_type
    queue = RecordingRabbitMQQueueConfig(
        connector_name="rabbit-faults",
        queue=settings.queue,
        queue_type=queue_type,
        ledger=settings.ledger,
        frequency=settings.frequency,
        max_chunk_size=settings.chunk,
        sequential=settings.sequential,
        retries=settings.retries,
        delivery_limit=settings.delivery_limit or None,
        prefetch=settings.prefetch or None,
        arguments=(
            {"x-max-length": settings.max_length, "x-overflow": "reject-publish"}
            if settings.max_length
            else {}
        ),
    )
    connector = RabbitMQConnectorConfig(
        connector_name="rabbit-faults",
        url=settings.url,
        connection_name=settings.connection_name,
        startup_timeout=settings.startup_timeout,
        heartbeat=settings.heartbeat,
        connect_timeout=5.0,
    )

    def first_attempt(item_id: str) -> bool:
        return sum(1 for r in ledger.records("start") if r.id == item_id) <= 1

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        ledger.write("dead", id_of(letter.data), letter.resend_times, letter.reason[:160])
        if on_dead_letter is not None:
            on_dead_letter(letter)

    @app.queue_consumer(queue_name="faults", config=queue, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        item_id = message.payload.id
        ledger.write("start", item_id, message.rw_resend_times)
        if item_id == settings.poison_id:
            os.kill(os.getpid(), signal.SIGKILL)
        if item_id == settings.hang_id:
            await asyncio.Event().wait()
        if item_id == settings.resend_id and message.rw_resend_times == 0:
            if before_resend is not None:
                await before_resend(item_id)
            raise romeways.ResendException("once more")
        if item_id == settings.delay_id and first_attempt(item_id):
            raise romeways.ResendException("later", delay=settings.delay_seconds)
        if item_id == settings.error_id:
            raise RuntimeError(f"handler failed on {item_id}")
        if settings.handler_seconds:
            await asyncio.sleep(settings.handler_seconds)
        ledger.write("done", item_id, message.rw_resend_times)

    app.connector_register(
        connector=RecordingRabbitMQConnector, config=connector, spawn_process=settings.spawn
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


_REQUIRED = ("ledger", "url", "queue")


def scenario_args(url: str, queue: str, **options: object) -> list[str]:
    """Command-line arguments of ``faults.rabbitapp`` (``True`` options become bare flags)."""
    args = ["--url", url, "--queue", queue]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False:
            args += [flag, str(value)]
    return args


def main() -> None:
    settings = parse()
    setup_logging(getattr(logging, settings.log_level))
    if settings.log_level != "DEBUG":
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
        logging.getLogger("aio_pika").setLevel(logging.WARNING)
    asyncio.run(build_app(settings).start())
    print(f"parent {os.getpid()} exits normally", flush=True)


if __name__ == "__main__":
    main()
