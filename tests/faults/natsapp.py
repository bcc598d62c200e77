"""A NATS JetStream scenario app for the fault tests: ``python -m faults.natsapp --ledger PATH
--url URL --stream S --subject SUBJ --durable D [options]`` (PYTHONPATH=tests), or
``build_app()`` in the test's own process.

The handler (typed ``Message[Item]``) records ``start`` and ``done`` in the ledger; the
recording connector records ``fetched`` (extra: ``<stream sequence>:<delivery count>``),
``ack`` and ``resend``; the dead-letter hook records ``dead`` (extra: the reason).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import romeways
from romeways.connectors.nats import NatsConnectorConfig, NatsQueueConfig, NatsQueueConnector
from romeways.testing import Acked, Fetched, Resent

from .ledger import Item, Ledger, id_of
from .recording import LedgerRecorder, setup_logging


class RecordingNatsQueueConfig(NatsQueueConfig, frozen=True, kw_only=True):
    """A NATS queue whose connector records into the ledger at ``ledger``."""

    ledger: str


class RecordingNatsConnector(NatsQueueConnector):
    """NatsQueueConnector plus ledger records of what the worker asks of it."""

    def __init__(
        self,
        *,
        connector_config: NatsConnectorConfig,
        queue_name: str,
        config: NatsQueueConfig,
    ) -> None:
        super().__init__(connector_config=connector_config, queue_name=queue_name, config=config)
        path = config.ledger if isinstance(config, RecordingNatsQueueConfig) else None
        self.record = LedgerRecorder(path, self._where_it_was)
        self._next = 0

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        chunk = await super().get_messages(max_chunk_size)
        self.record.write(Fetched(max_chunk_size, self._next, tuple(chunk)))
        self._next += len(chunk)
        return chunk

    def _where_it_was(self, delivery: int) -> str:
        meta = self.message_metadata(delivery)
        if meta is None:
            return "?"
        return f"{dict(meta.position).get('sequence')}:{meta.delivery_count}"

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
    subject: str
    durable: str
    spawn: bool = False
    workers: int = 1
    chunk: int = 10
    sequential: bool = False
    frequency: float = 0.5
    shutdown_timeout: float = 5.0
    max_restarts: int = 5
    ack_wait: float = 30.0
    max_deliveries: int = 5
    retries: int = 3
    reconnect_time_wait: float = 0.5
    ping_interval: float = 20.0
    max_outstanding_pings: int = 2
    startup_timeout: float = 30.0
    handler_seconds: float = 0.0
    slow_id: str = ""  # its first attempt (in any process) sleeps slow_seconds, asynchronously
    slow_seconds: float = 0.0
    delay_id: str = ""  # its first attempt raises ResendException(delay=delay_seconds)
    delay_seconds: float = 0.0
    crash_id: str = ""  # every attempt SIGKILLs its own worker process
    log_level: str = "INFO"


def build_app(
    settings: Settings, on_dead_letter: Callable[[romeways.DeadLetter], None] | None = None
) -> romeways.App:
    """The scenario's App: one recording NATS queue with the ledger-writing handler;
    ``on_dead_letter`` also gets every dead letter (in-process tests)."""
    ledger = Ledger(settings.ledger)
    app = romeways.App(
        shutdown_timeout=settings.shutdown_timeout, max_restarts=settings.max_restarts
    )
    app.workers = settings.workers
    queue = RecordingNatsQueueConfig(
        connector_name="nats-faults",
        stream=settings.stream,
        subject=settings.subject,
        durable=settings.durable,
        ledger=settings.ledger,
        frequency=settings.frequency,
        max_chunk_size=settings.chunk,
        sequential=settings.sequential,
        retries=settings.retries,
        ack_wait=settings.ack_wait,
        max_deliveries=settings.max_deliveries,
    )
    connector = NatsConnectorConfig(
        connector_name="nats-faults",
        servers=settings.url,
        startup_timeout=settings.startup_timeout,
        reconnect_time_wait=settings.reconnect_time_wait,
        ping_interval=settings.ping_interval,
        max_outstanding_pings=settings.max_outstanding_pings,
    )

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        ledger.write("dead", id_of(letter.data), letter.resend_times, letter.reason)
        if on_dead_letter is not None:
            on_dead_letter(letter)

    @app.queue_consumer(queue_name="faults", config=queue, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        item_id = message.payload.id
        attempt = message.rw_resend_times
        first = item_id not in ledger.ids("start")
        ledger.write("start", item_id, attempt)
        if item_id == settings.crash_id:
            os.kill(os.getpid(), signal.SIGKILL)  # a handler that kills its process, every time
        if item_id == settings.slow_id and first:
            await asyncio.sleep(settings.slow_seconds)
        if item_id == settings.delay_id and attempt == 0:
            raise romeways.ResendException(delay=settings.delay_seconds)
        if settings.handler_seconds:
            await asyncio.sleep(settings.handler_seconds)
        ledger.write("done", item_id, attempt)

    app.connector_register(
        connector=RecordingNatsConnector, config=connector, spawn_process=settings.spawn
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


_REQUIRED = ("ledger", "url", "stream", "subject", "durable")


def scenario_args(url: str, stream: str, **options: object) -> list[str]:
    """Command-line arguments of ``faults.natsapp`` for ``stream`` (subject and durable named
    after it); ``True`` options become bare flags."""
    args = ["--url", url, "--stream", stream, "--subject", f"faults.{stream}"]
    args += ["--durable", f"{stream}-d"]
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
    started = time.monotonic()
    asyncio.run(build_app(settings).start())
    print(
        f"parent {os.getpid()} exits normally after {time.monotonic() - started:.1f}s", flush=True
    )


if __name__ == "__main__":
    main()
