"""A Redis Streams scenario app for the fault tests: ``python -m faults.redisapp --ledger PATH
--url URL --stream S --group G [options]`` (PYTHONPATH=tests).

The handler (typed ``Message[Item]``) records ``start`` and ``done`` in the ledger; the
recording connector records ``fetched`` (extra: the entry id and its delivery count), ``ack``
and ``resend``; the dead-letter hook records ``dead`` (extra: the start of the reason).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import romeways
from romeways.connectors.redis import RedisConnectorConfig, RedisQueueConfig, RedisQueueConnector
from romeways.testing import Acked, Fetched, Resent

from .ledger import Item, Ledger, id_of
from .recording import LedgerRecorder, setup_logging


class RecordingRedisQueueConfig(RedisQueueConfig, frozen=True, kw_only=True):
    """A Redis queue whose connector records into the ledger at ``ledger``."""

    ledger: str


class RecordingRedisConnector(RedisQueueConnector):
    """RedisQueueConnector plus ledger records of what the worker asks of it."""

    def __init__(
        self,
        *,
        connector_config: RedisConnectorConfig,
        queue_name: str,
        config: RedisQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        path = config.ledger if isinstance(config, RecordingRedisQueueConfig) else None
        self.record = LedgerRecorder(path, self._where_of)
        self._next = 0

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        chunk = await super().get_messages(max_chunk_size)
        self.record.write(Fetched(max_chunk_size, self._next, tuple(chunk)))
        self._next += len(chunk)
        return chunk

    def _where_of(self, delivery: int) -> str:
        metadata = self.message_metadata(delivery)
        if metadata is None:
            return "?"
        return f"{dict(metadata.position).get('id')}#{metadata.delivery_count}"

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
    stream: str
    group: str
    consumer: str = ""
    spawn: bool = False
    chunk: int = 10
    sequential: bool = False
    frequency: float = 0.5
    shutdown_timeout: float = 5.0
    claim_idle: float = 60.0
    socket_timeout: float = 10.0
    startup_timeout: float = 30.0
    retries: int = 3
    max_restarts: int = 5
    handler_seconds: float = 0.0
    slow_id: str = ""  # its first attempt (in any process) sleeps slow_seconds
    slow_seconds: float = 0.0
    delay_id: str = ""  # its first attempt raises ResendException(delay=delay_seconds)
    delay_seconds: float = 0.0
    kill_id: str = ""  # every attempt SIGKILLs the handling worker process (a poison message)
    error_id: str = ""  # always raises RuntimeError (dead-lettered)
    log_level: str = "INFO"


def build_app(settings: Settings) -> romeways.App:
    ledger = Ledger(settings.ledger)
    app = romeways.App(
        shutdown_timeout=settings.shutdown_timeout, max_restarts=settings.max_restarts
    )
    queue = RecordingRedisQueueConfig(
        connector_name="redis-faults",
        stream=settings.stream,
        group=settings.group,
        consumer=settings.consumer or None,
        ledger=settings.ledger,
        frequency=settings.frequency,
        max_chunk_size=settings.chunk,
        sequential=settings.sequential,
        retries=settings.retries,
        claim_idle=settings.claim_idle,
    )
    connector = RedisConnectorConfig(
        connector_name="redis-faults",
        url=settings.url,
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=min(5.0, settings.socket_timeout),
        startup_timeout=settings.startup_timeout,
    )

    def first_attempt(item_id: str) -> bool:
        return sum(1 for r in ledger.records("start") if r.id == item_id) <= 1

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        ledger.write("dead", id_of(letter.data), letter.resend_times, letter.reason[:120])

    @app.queue_consumer(queue_name="faults", config=queue, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        item_id = message.payload.id
        ledger.write("start", item_id, message.rw_resend_times)
        if item_id == settings.kill_id:
            os.kill(os.getpid(), signal.SIGKILL)
        if item_id == settings.slow_id and first_attempt(item_id):
            await asyncio.sleep(settings.slow_seconds)
        if item_id == settings.delay_id and first_attempt(item_id):
            raise romeways.ResendException("later", delay=settings.delay_seconds)
        if item_id == settings.error_id:
            raise RuntimeError(f"handler failed on {item_id}")
        if settings.handler_seconds:
            await asyncio.sleep(settings.handler_seconds)
        ledger.write("done", item_id, message.rw_resend_times)

    app.connector_register(
        connector=RecordingRedisConnector, config=connector, spawn_process=settings.spawn
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


_REQUIRED = ("ledger", "url", "stream", "group")


def scenario_args(url: str, stream: str, group: str, **options: Any) -> list[str]:
    """Command-line arguments of ``faults.redisapp`` (``True`` options become bare flags)."""
    args = ["--url", url, "--stream", stream, "--group", group]
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
    asyncio.run(build_app(settings).start())
    print(f"parent {os.getpid()} exits normally", flush=True)


if __name__ == "__main__":
    main()
