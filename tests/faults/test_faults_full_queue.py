"""Resends onto a full bounded memory queue (``Queue(maxsize)``, issue 13): the connector used
to put them with ``put_nowait``, so a full queue raised ``queue.Full`` after the original was
already off the queue, and the message was lost (179 of 200 in one run). Now a resend that finds
no room is held by the connector for its next fetch; a held resend still pending at shutdown is
put back once there is room, and dead-lettered with a reason if none comes."""

from __future__ import annotations

import asyncio
import threading
import time
from multiprocessing import Queue
from pathlib import Path
from typing import Any

import msgspec
import pytest

import romeways

from .inproc import start, stop, wait_until
from .ledger import Item, Ledger, id_of, make_ids, payload
from .recording import RecordingMemoryConnector, RecordingQueueConfig

pytestmark = pytest.mark.timeout(60)


def _app(
    tmp_path: Path, queue: Queue[bytes], shutdown_timeout: float = 2.0, **config: Any
) -> tuple[romeways.App, RecordingQueueConfig, Ledger, list[romeways.DeadLetter]]:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    app = romeways.App(shutdown_timeout=shutdown_timeout)
    app.connector_register(
        connector=RecordingMemoryConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    queue_config = RecordingQueueConfig(
        connector_name="mem", queue=queue, ledger=str(ledger.path), frequency=0.05, **config
    )
    return app, queue_config, ledger, []


def test_resends_onto_a_full_bounded_queue_are_never_lost(tmp_path: Path) -> None:
    """200 messages through Queue(maxsize=5), each resent once, while a producer thread keeps
    the queue full (it waits in put() for every slot a fetch frees): every message is handled
    twice (attempt 0, then 1), none is lost or dead-lettered. Before the fix 110 to 135 of 200
    were lost on this machine (queue.Full from the resend)."""
    count = 200
    queue: Queue[bytes] = Queue(maxsize=5)
    app, config, ledger, letters = _app(tmp_path, queue, max_chunk_size=5)

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        ledger.write("start", message.payload.id, message.rw_resend_times)
        if message.rw_resend_times == 0:
            raise romeways.ResendException("once more")
        ledger.write("done", message.payload.id, message.rw_resend_times)

    ids = make_ids("g", count)

    def produce() -> None:
        for message_id in ids:
            queue.put(payload(message_id), timeout=20)

    def settled() -> int:
        return len(ledger.ids("done")) + len(letters)

    async def scenario() -> None:
        task = start(app)
        producer = threading.Thread(target=produce, daemon=True, name="producer")
        producer.start()
        # Until every message is settled, or nothing moved for 2 s (the lost ones never will).
        last, moved = -1, time.monotonic()
        while settled() < count and time.monotonic() - moved < 2.0:
            if task.done():
                task.result()
                raise AssertionError("start() returned early")
            if settled() != last:
                last, moved = settled(), time.monotonic()
            await asyncio.sleep(0.05)
        await asyncio.to_thread(producer.join, 20)
        await stop(app, task, 5.0)

    asyncio.run(scenario())
    tally = ledger.tally(ids)
    lost = len(tally.lost)
    assert lost == 0 and letters == [], f"{lost} of {count} lost: {tally.summary()}"
    assert tally.duplicate_count == 0, tally.summary()
    attempts = ledger.ids("start")
    assert all(attempts[i] == 2 for i in ids), "a message was not handled exactly twice"
    assert all(r.attempt == 1 for r in ledger.records("done"))
    assert queue.empty()


@pytest.mark.parametrize("room", [False, True])
def test_delayed_resend_flushed_at_shutdown_onto_a_full_queue_is_not_lost(
    tmp_path: Path, room: bool
) -> None:
    """A ResendException(delay=30) pending at shutdown while Queue(maxsize=5) is full (the
    worker was busy with a handler that never returns, so five later messages filled it): the
    flush at shutdown finds no room. If room comes within a second (another consumer takes one
    message) the resend is put back on the queue with its counter raised; if none comes it is
    dead-lettered with a reason saying so. Before the fix it was lost either way (queue.Full,
    logged as 'stays unacknowledged')."""
    queue: Queue[bytes] = Queue(maxsize=5)
    app, config, ledger, letters = _app(
        tmp_path, queue, shutdown_timeout=0.3, max_chunk_size=1, sequential=True
    )

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        ledger.write("start", message.payload.id, message.rw_resend_times)
        if message.payload.id == "later":
            raise romeways.ResendException("in a while", delay=30.0)
        await asyncio.Event().wait()  # "hold" never returns: cancelled at shutdown

    fillers = make_ids("f", 5)
    taken: list[bytes] = []

    def other_consumer() -> None:
        # Takes one message once the worker's flush found the queue full (its resend recorded).
        deadline = time.monotonic() + 10
        while "later" not in ledger.ids("resend") and time.monotonic() < deadline:
            time.sleep(0.01)
        taken.append(queue.get(timeout=5))

    async def scenario() -> None:
        task = start(app)
        queue.put(payload("later"))
        await wait_until("later resent", lambda: "later" in ledger.ids("start"), 5, task)
        queue.put(payload("hold"))
        await wait_until("hold started", lambda: "hold" in ledger.ids("start"), 5, task)
        for filler in fillers:
            queue.put(payload(filler))
        await wait_until("the queue full", queue.full, 5, task)
        thread = threading.Thread(target=other_consumer, daemon=True) if room else None
        if thread is not None:
            thread.start()
        await stop(app, task, 0.3 + 2.5)
        if thread is not None:
            await asyncio.to_thread(thread.join, 10)

    asyncio.run(scenario())
    left = [queue.get(timeout=2) for _ in range(5 if room else queue.qsize())]
    assert queue.empty()
    if room:
        assert [id_of(data) for data in taken] == fillers[:1]
        assert [id_of(data) for data in left] == [*fillers[1:], "later"]
        assert msgspec.json.decode(left[-1]) == {
            "payload": {"id": "later", "pad": ""},
            "rw_resend_times": 1,
        }
        assert letters == []
    else:
        assert [id_of(data) for data in left] == fillers
        assert len(letters) == 1, "the held resend vanished"
        (letter,) = letters
        assert id_of(letter.data) == "later" and letter.resend_times == 1
        assert "stayed full" in letter.reason and "'q'" in letter.reason


def test_a_given_up_fetch_puts_back_within_a_bound_and_says_what_it_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fetch given up at shutdown returns what its thread took; on a queue that stays full it
    used to block in ``put()`` for good. Now it waits at most a second in all, and logs what did
    not fit instead of hanging the process's exit."""
    from concurrent.futures import Future

    queue: Queue[bytes] = Queue(maxsize=2)
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=queue)
    connector = romeways.MemoryQueueConnector(
        connector_config=romeways.MemoryConnectorConfig(connector_name="mem"),
        queue_name="q",
        config=config,
    )
    taken: Future[list[object]] = Future()
    taken.set_result([b"a", b"b", b"c", b"d"])
    started = time.monotonic()
    with caplog.at_level("ERROR", "romeways"):
        connector._put_back(taken)
    assert time.monotonic() - started < 2.0
    assert [queue.get(timeout=1), queue.get(timeout=1)] == [b"a", b"b"]
    assert "2 message(s) taken by the last fetch could not be put back" in caplog.text
