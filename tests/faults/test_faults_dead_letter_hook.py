"""A dead-letter hook that never returns (issue 13) used to stall its queue for good while
``/health`` answered 200. The hook now runs within ``dead_letter_timeout``: one that overruns is
cancelled and logged, its message stays unacknowledged (Kafka delivers it again), and the worker
fetches on. A hook that even ignores the cancellation holds its worker, and health says so,
naming the queue and the handler."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from multiprocessing import Queue
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, committed_offsets, free_port, unique_name

import romeways
from romeways._telemetry import run_app

from .inproc import start, stop, wait_until
from .kafkaapp import RecordingKafkaConnector, RecordingKafkaQueueConfig
from .kafkahelp import fully_committed, new_topic, produce_ids, run
from .ledger import Item, Ledger, id_of, make_ids, payload
from .recording import RecordingMemoryConnector, RecordingQueueConfig

pytestmark = pytest.mark.timeout(60)


def _memory_app(
    ledger: Ledger, queue: Queue[bytes], **config: Any
) -> tuple[romeways.App, RecordingQueueConfig]:
    app = romeways.App(shutdown_timeout=1.0)
    app.connector_register(
        connector=RecordingMemoryConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    queue_config = RecordingQueueConfig(
        connector_name="mem", queue=queue, ledger=str(ledger.path), frequency=0.05, **config
    )
    return app, queue_config


@pytest.mark.parametrize("sequential", [False, True])
def test_a_hook_that_never_returns_is_cut_off_and_the_worker_goes_on(
    tmp_path: Path, sequential: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """Memory, a hook that awaits forever, dead_letter_timeout=0.3: a failing message and an
    undecodable one each get the hook once, cut off after 0.3 s and logged; neither is
    acknowledged; every good id of their chunk and of a later batch is handled and acknowledged.
    (Before the fix the worker waited in the hook forever: nothing after the first was handled.)"""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    queue: Queue[bytes] = Queue()
    app, config = _memory_app(
        ledger, queue, dead_letter_timeout=0.3, sequential=sequential, max_chunk_size=20
    )

    async def hang(letter: romeways.DeadLetter) -> None:
        ledger.write("hook", id_of(letter.data))
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ledger.write("hook-cancelled", id_of(letter.data))
            raise

    @app.queue_consumer(queue_name="q", config=config, dead_letter=hang)
    async def handle(message: romeways.Message[Item]) -> None:
        if message.payload.id == "bad":
            raise RuntimeError("cannot handle this one")
        ledger.write("done", message.payload.id)

    goods = make_ids("g", 10)
    later = make_ids("later", 5)
    for data in [*map(payload, goods[:5]), payload("bad"), b"{junk", *map(payload, goods[5:])]:
        queue.put(data)

    async def scenario() -> float:
        task = start(app)
        begun = time.monotonic()
        await wait_until("goods handled", lambda: set(ledger.ids("done")) >= set(goods), 5, task)
        await wait_until(
            "two hooks cut off", lambda: len(ledger.ids("hook-cancelled")) == 2, 5, task
        )
        took = time.monotonic() - begun
        for message_id in later:
            queue.put(payload(message_id))
        await wait_until("later handled", lambda: set(ledger.ids("done")) >= set(later), 5, task)
        await stop(app, task, 3.0)
        return took

    with caplog.at_level(logging.INFO, logger="romeways"):
        took = asyncio.run(scenario())
    assert ledger.ids("hook") == {"bad": 1, "?": 1}
    assert ledger.ids("hook-cancelled") == {"bad": 1, "?": 1}
    assert took < (0.3 * 2 if sequential else 0.3) + 2.0
    acked = ledger.ids("ack")
    assert "bad" not in acked and "?" not in acked, "a message whose hook overran was acked"
    assert all(acked[i] == 1 for i in [*goods, *later]), acked
    cut = [r for r in caplog.records if "did not return within dead_letter_timeout" in r.message]
    assert len(cut) == 2 and all(r.levelno == logging.ERROR for r in cut)
    assert all("handle" in r.message and "'q'" in r.message for r in cut)


def test_dead_letter_timeout_is_validated() -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(romeways.ConfigError, match="dead_letter_timeout"):
            romeways.MemoryQueueConfig(connector_name="m", queue=Queue(), dead_letter_timeout=bad)
    assert romeways.GenericQueueConfig(connector_name="m").dead_letter_timeout == 30.0


def test_kafka_message_whose_hook_overran_is_delivered_again(
    tmp_path: Path, fault_broker: Broker
) -> None:
    """Kafka (at-least-once): the hook of a failing message overruns on its first call; the
    worker goes on (every later id handled) but does not commit past that message; after a
    restart of the consumer the message comes again, its hook returns, and the group's offsets
    reach the end."""
    bootstrap = fault_broker.bootstrap
    topic, group = unique_name("hook"), unique_name("ghook")
    new_topic(bootstrap, topic, 1)
    goods = make_ids("g", 10)
    ids = [*goods[:3], "bad", *goods[3:]]
    run(produce_ids(bootstrap, topic, ids))
    ledger = Ledger(tmp_path / "ledger.jsonl")

    def build() -> romeways.App:
        from romeways.connectors.kafka import KafkaConnectorConfig

        app = romeways.App(shutdown_timeout=2.0)
        app.connector_register(
            connector=RecordingKafkaConnector,
            config=KafkaConnectorConfig(connector_name="k", bootstrap_server=bootstrap),
        )
        config = RecordingKafkaQueueConfig(
            connector_name="k",
            topic=topic,
            group_id=group,
            ledger=str(ledger.path),
            frequency=0.2,
            dead_letter_timeout=0.5,
            session_timeout_ms=6000,
        )

        async def hook(letter: romeways.DeadLetter) -> None:
            first = "hook" not in [r.event for r in ledger.records()]
            ledger.write("hook", id_of(letter.data))
            if first:
                await asyncio.Event().wait()  # the first call never returns
            ledger.write("dead", id_of(letter.data))

        @app.queue_consumer(queue_name="q", config=config, dead_letter=hook)
        async def handle(message: romeways.Message[Item]) -> None:
            if message.payload.id == "bad":
                raise RuntimeError("cannot handle this one")
            ledger.write("done", message.payload.id)

        return app

    async def first_run() -> None:
        app = build()
        task = start(app)
        await wait_until("goods handled", lambda: set(ledger.ids("done")) >= set(goods), 30, task)
        await asyncio.sleep(1.0)  # commits of what is finished land
        await stop(app, task, 10.0)

    asyncio.run(first_run())
    assert ledger.ids("hook") == {"bad": 1} and ledger.ids("dead") == {}
    committed = run(committed_offsets(bootstrap, group, topic, 1))
    assert committed.get(0) == ids.index("bad"), f"committed past the unfinished one: {committed}"

    async def second_run() -> None:
        app = build()
        task = start(app)
        await wait_until("bad dead-lettered", lambda: "bad" in ledger.ids("dead"), 30, task)
        await asyncio.sleep(0.5)
        await stop(app, task, 10.0)

    asyncio.run(second_run())
    assert ledger.ids("hook") == {"bad": 2} and ledger.ids("dead") == {"bad": 1}
    deadline = time.monotonic() + 10
    while not fully_committed(bootstrap, topic, group, 1):
        assert time.monotonic() < deadline, "the offsets never reached the end"
        time.sleep(0.3)


def _health(port: int) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:  # not serving yet
        return 0, {}


async def _health_turns(
    port: int, status: int, timeout: float, app_task: asyncio.Task[None]
) -> dict[str, object]:
    """Poll /health (from a thread: the server runs in this loop) until it answers ``status``;
    its body then."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = await asyncio.to_thread(_health, port)
        if code == status:
            return body
        if app_task.done():
            app_task.result()
            raise AssertionError(f"the app ended while waiting for /health {status}")
        assert time.monotonic() < deadline, f"/health still {code} after {timeout}s: {body}"
        await asyncio.sleep(0.1)


def test_health_fails_while_a_hook_ignoring_cancellation_holds_its_worker(tmp_path: Path) -> None:
    """A hook that swallows the cancellation of its dead_letter_timeout (0.2 s) keeps its
    worker: /health turns 503 with a problem naming the queue and the handler once the hook ran
    far past its bound (2 x 0.2 + 5 s), and 200 again once the hook lets go. (Before the fix
    health stayed 200: a worker handling a chunk counted as alive however long it took.)"""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    queue: Queue[bytes] = Queue()
    app, config = _memory_app(ledger, queue, dead_letter_timeout=0.2)
    release = asyncio.Event()

    async def stubborn(letter: romeways.DeadLetter) -> None:
        ledger.write("hook", id_of(letter.data))
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                ledger.write("ignored-cancel", id_of(letter.data))

    @app.queue_consumer(queue_name="stuck-q", config=config, dead_letter=stubborn)
    async def handle_stuck(message: romeways.Message[Item]) -> None:
        raise RuntimeError("cannot handle this one")

    port = free_port()

    async def scenario() -> tuple[dict[str, object], float]:
        task = asyncio.create_task(run_app(app, health_port=port, host="127.0.0.1"))
        await _health_turns(port, 200, 10, task)
        queue.put(payload("bad"))
        await wait_until("the hook started", lambda: "bad" in ledger.ids("hook"), 5, task)
        started = time.monotonic()
        await asyncio.sleep(2.0)
        code, _ = await asyncio.to_thread(_health, port)
        assert code == 200, "unhealthy long before the hook is far past its bound"
        body = await _health_turns(port, 503, 10, task)
        took = time.monotonic() - started
        release.set()
        await _health_turns(port, 200, 5, task)
        await stop(app, task, 5.0)
        return body, took

    body, took = asyncio.run(scenario())
    assert ledger.ids("ignored-cancel") == {"bad": 1}
    assert 2 * 0.2 + 5.0 <= took < 2 * 0.2 + 5.0 + 3.0
    problems = body["problems"]
    assert isinstance(problems, list)
    stuck = [p for p in problems if "is stuck" in p]
    assert len(stuck) == 1, problems
    assert "queue 'stuck-q'" in stuck[0] and "handle_stuck" in stuck[0], stuck
    assert "dead_letter_timeout=0.2s" in stuck[0]
