"""Poison messages for the fault tests: a handler whose exception cannot be printed (its
``__str__`` raises) and one that makes its own payload unencodable before it asks for a resend.

``build_app()`` makes the App, on the memory connector or (``bootstrap``) on Kafka, in the test's
own process; ``python -m faults.poisonapp --ledger PATH --count N`` (PYTHONPATH=tests) runs it on
the memory connector in a supervised worker process, with a producer putting ``N`` good ids around
the two poison ones. Payloads are ``dict`` (mutable, like a handler's own data); the ids are the
ledger's: ``start`` and ``done`` by the handler, ``dead`` by the dead-letter hook.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable, Sequence
from multiprocessing import Queue
from typing import Any

import msgspec

import romeways

from .kafkaapp import RecordingKafkaConnector, RecordingKafkaQueueConfig
from .ledger import Ledger, id_of, make_ids
from .recording import RecordingMemoryConnector, RecordingQueueConfig, setup_logging

UNPRINTABLE = "unprintable-000000"
UNENCODABLE = "unencodable-000000"


class UnprintableError(Exception):
    """An exception whose ``str()`` raises, as some libraries' exceptions do when half-built."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of UnprintableError is broken")


def ids_around_poison(count: int) -> list[str]:
    """``count`` good ids with the two poison ids among them (after a third and two thirds)."""
    goods = make_ids("g", count)
    third = max(1, count // 3)
    return [
        *goods[:third],
        UNPRINTABLE,
        *goods[third : 2 * third],
        UNENCODABLE,
        *goods[2 * third :],
    ]


def encode(message_id: str) -> bytes:
    return msgspec.json.encode({"id": message_id})


def build_app(
    ledger_path: str,
    *,
    queue: Queue[bytes] | None = None,
    bootstrap: str = "",
    topic: str = "",
    group: str = "",
    spawn: bool = False,
    chunk: int = 20,
    handler_timeout: float | None = None,
    middleware: bool = False,
    on_dead_letter: Callable[[romeways.DeadLetter], None] | None = None,
) -> romeways.App:
    """The poison App on ``queue`` (memory) or on ``topic`` of ``bootstrap`` (Kafka);
    ``handler_timeout`` and ``middleware`` take the worker off its inline path."""
    ledger = Ledger(ledger_path)
    app = romeways.App(shutdown_timeout=3.0, max_restarts=5)
    common: dict[str, Any] = {
        "frequency": 0.1,
        "max_chunk_size": chunk,
        "handler_timeout": handler_timeout,
        "ledger": ledger_path,
    }
    config: romeways.GenericQueueConfig
    if bootstrap:
        from romeways.connectors.kafka import KafkaConnectorConfig

        config = RecordingKafkaQueueConfig(
            connector_name="poison", topic=topic, group_id=group, session_timeout_ms=6000, **common
        )
        app.connector_register(
            connector=RecordingKafkaConnector,
            config=KafkaConnectorConfig(connector_name="poison", bootstrap_server=bootstrap),
            spawn_process=spawn,
        )
    else:
        assert queue is not None
        config = RecordingQueueConfig(connector_name="poison", queue=queue, **common)
        app.connector_register(
            connector=RecordingMemoryConnector,
            config=romeways.MemoryConnectorConfig(connector_name="poison"),
            spawn_process=spawn,
        )
    if middleware:
        app.add_middleware(_PassThrough())

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        ledger.write("dead", id_of(letter.data), letter.resend_times, letter.reason)
        if on_dead_letter is not None:
            on_dead_letter(letter)

    @app.queue_consumer(queue_name="poison", config=config, dead_letter=dead_letter)
    async def handle(message: romeways.Message[dict[str, Any]]) -> None:
        item_id = str(message.payload["id"])
        ledger.write("start", item_id, message.rw_resend_times)
        if item_id == UNPRINTABLE:
            raise UnprintableError
        if item_id == UNENCODABLE:
            message.payload["pad"] = object()  # nothing msgspec can encode
            raise romeways.ResendException("once more")
        ledger.write("done", item_id, message.rw_resend_times)

    return app


class _PassThrough(romeways.Middleware):
    """A middleware that does nothing: the worker then calls handlers through the chain."""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--count", type=int, default=30)
    args = parser.parse_args(argv)
    setup_logging()
    queue: Queue[bytes] = Queue()
    ledger = Ledger(args.ledger)
    for message_id in ids_around_poison(args.count):
        queue.put(encode(message_id))
        ledger.write("produced", message_id)
    app = build_app(args.ledger, queue=queue, spawn=True)
    asyncio.run(app.start())
    print(f"parent {os.getpid()} exits normally", flush=True)


if __name__ == "__main__":
    main()
