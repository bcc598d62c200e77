"""``romeways demo``: a producer, a spawned consumer process, resends and dead letters, live."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import threading
import time
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import msgspec

from ._app import App
from ._errors import ResendException
from ._message import Message
from ._route import DeadLetter
from .connectors.memory import MemoryConnectorConfig, MemoryQueueConfig, MemoryQueueConnector


class Order(msgspec.Struct, frozen=True):
    """The demo's payload: decoded and validated from JSON before the handler sees it."""

    id: int
    amount: float


RESEND_EVERY = 40  # orders whose id is a multiple of this fail once and are resent
BAD_EVERY = 1000  # every this many messages, one undecodable message is sent


def _bad_message(i: int) -> bytes:
    return (
        b"\xff\xfe not even text"
        if (i // BAD_EVERY) % 2
        else b'{"id": "not-a-number", "amount": 1}'
    )


def run_demo(*, messages: int = 20_000, out: Any = None) -> int:
    """Run the demo app to completion; returns the exit code (0 when every count adds up)."""
    out = out or sys.stdout
    if messages < 1:
        print("romeways demo: --messages must be >= 1", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[bytes] = ctx.Queue()
    handled: Synchronized[int] = ctx.Value("q", 0)
    resent: Synchronized[int] = ctx.Value("q", 0)
    dead: Synchronized[int] = ctx.Value("q", 0)

    app = App(shutdown_timeout=5.0)
    config = MemoryQueueConfig(
        connector_name="demo-memory", queue=queue, max_chunk_size=100, frequency=0.2, retries=2
    )

    async def on_dead_letter(letter: DeadLetter) -> None:
        with dead.get_lock():
            dead.value += 1
            first = dead.value <= 3
        if first:
            print(f"  dead-lettered: {letter.reason}", file=out, flush=True)

    @app.queue_consumer(queue_name="orders", config=config, dead_letter=on_dead_letter)
    async def handle_order(message: Message[Order]) -> None:
        if message.payload.id % RESEND_EVERY == 0 and message.rw_resend_times == 0:
            with resent.get_lock():
                resent.value += 1
            raise ResendException("first attempt of this order fails on purpose")
        with handled.get_lock():
            handled.value += 1

    app.connector_register(
        connector=MemoryQueueConnector,
        config=MemoryConnectorConfig(connector_name="demo-memory"),
        spawn_process=True,
    )

    bad = [i for i in range(messages) if i % BAD_EVERY == BAD_EVERY - 1]
    good = messages - len(bad)
    expect_resent = sum(
        1 for i in range(messages) if i % RESEND_EVERY == 0 and i % BAD_EVERY != BAD_EVERY - 1
    )

    def produce() -> None:
        encoder = msgspec.json.Encoder()
        for i in range(messages):
            if i % BAD_EVERY == BAD_EVERY - 1:
                queue.put(_bad_message(i))
            else:
                queue.put(encoder.encode(Order(id=i, amount=i / 100)))

    print(
        f"romeways demo: {messages} orders through a memory queue to a consumer process "
        f"(every {RESEND_EVERY}th resent once, {len(bad)} undecodable)",
        file=out,
        flush=True,
    )
    started = time.monotonic()

    async def monitor() -> bool:
        last_progress, last_total = time.monotonic(), -1
        while True:
            await asyncio.sleep(0.25)
            total = handled.value + dead.value
            print(
                f"  handled {handled.value:>7} / {good}   resent {resent.value:>5}   "
                f"dead-lettered {dead.value:>3}",
                file=out,
                flush=True,
            )
            if total >= messages:
                return True
            now = time.monotonic()
            if total != last_total:
                last_progress, last_total = now, total
            elif now - last_progress > 30:
                return False

    async def main() -> bool:
        producer = threading.Thread(target=produce, name="romeways-demo-producer", daemon=True)
        runner = asyncio.create_task(app.start())
        producer.start()
        watcher = asyncio.create_task(monitor())
        await asyncio.wait([runner, watcher], return_when=asyncio.FIRST_COMPLETED)
        complete = watcher.done() and watcher.result()
        app.stop()
        await runner
        return complete

    complete = asyncio.run(main())
    elapsed = time.monotonic() - started
    ok = complete and (handled.value, resent.value, dead.value) == (good, expect_resent, len(bad))
    print(
        f"\nsummary: handled {handled.value}, resent {resent.value}, "
        f"dead-lettered {dead.value} in {elapsed:.2f}s "
        f"({(handled.value + dead.value) / elapsed:,.0f} msgs/s, "
        f"{(handled.value + dead.value + resent.value) / elapsed:,.0f} deliveries/s)",
        file=out,
    )
    print(
        "every count adds up: each good order handled once, each bad one dead-lettered"
        if ok
        else f"MISMATCH: expected handled {good}, resent {expect_resent}, dead {len(bad)}",
        file=out,
    )
    return 0 if ok else 1
