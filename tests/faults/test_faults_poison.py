"""Poison messages that used to break romeways' own failure path (issue 13): an exception whose
``__str__`` raises, and a resend of a payload the handler made unencodable. Each is now
dead-lettered with a reason that says so, and the worker goes on with the rest of its chunk:
in the test's loop (inline, with a handler_timeout, through middleware), in a supervised worker
process (no crash, no restart), and on Kafka (the consumer commits past the poison offset)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from multiprocessing import Queue
from pathlib import Path

import pytest
from broker import Broker, unique_name

import romeways

from .inproc import start, stop, wait_until
from .kafkahelp import fully_committed, new_topic, produce_ids, run
from .ledger import Ledger, make_ids
from .poisonapp import UNENCODABLE, UNPRINTABLE, build_app, encode, ids_around_poison
from .procs import Scenario

pytestmark = pytest.mark.timeout(90)

POISON = (UNPRINTABLE, UNENCODABLE)


def check_poison_dead_lettered(ledger: Ledger, letters: list[romeways.DeadLetter]) -> None:
    """Each poison id dead-lettered once, with a reason that says what went wrong."""
    assert ledger.ids("dead") == dict.fromkeys(POISON, 1), ledger.ids("dead")
    reasons = {r.id: r.extra for r in ledger.records("dead")}
    assert reasons[UNPRINTABLE] == "handler raised <unprintable UnprintableError>"
    assert "could not be encoded for the resend" in reasons[UNENCODABLE], reasons
    for letter in letters:
        if UNENCODABLE.encode() in letter.data:
            assert letter.data == encode(UNENCODABLE), "not the original bytes"
            assert letter.resend_times == 0


@pytest.mark.parametrize("path", ["inline", "handler_timeout", "middleware"])
def test_poison_is_dead_lettered_and_the_rest_of_the_chunk_handled_in_process(
    tmp_path: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Memory, in the test's loop: both poison messages in one chunk of 20 with good ids; each
    is dead-lettered (and acknowledged), every good id handled once, the worker keeps
    consuming, and start() never fails."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    queue: Queue[bytes] = Queue()
    letters: list[romeways.DeadLetter] = []
    app = build_app(
        str(ledger.path),
        queue=queue,
        chunk=20,
        handler_timeout=5.0 if path == "handler_timeout" else None,
        middleware=path == "middleware",
        on_dead_letter=letters.append,
    )
    ids = ids_around_poison(15)
    goods = [i for i in ids if i not in POISON]
    later = make_ids("later", 5)
    for message_id in ids:
        queue.put(encode(message_id))

    async def scenario() -> None:
        task = start(app)
        await wait_until("goods handled", lambda: set(ledger.ids("done")) >= set(goods), 10, task)
        for message_id in later:
            queue.put(encode(message_id))
        await wait_until("later handled", lambda: set(ledger.ids("done")) >= set(later), 5, task)
        await stop(app, task, 5.0)

    with caplog.at_level(logging.INFO, logger="romeways"):
        asyncio.run(scenario())
    assert len(ledger.records("fetched")) >= len(ids)
    tally = ledger.tally([*goods, *later])
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    check_poison_dead_lettered(ledger, letters)
    acks = ledger.ids("ack")
    assert all(acks[i] == 1 for i in POISON), acks
    failed = [r for r in caplog.records if "failed: <unprintable UnprintableError>" in r.message]
    assert len(failed) == 1 and failed[0].exc_info is not None


def test_poison_does_not_crash_a_worker_process(tmp_path: Path) -> None:
    """Memory, in a supervised worker process: the worker does not exit (no restart, one pid
    handled everything), every good id is handled once, both poison ids are dead-lettered, and
    SIGTERM then ends the app with exit code 0."""
    with Scenario(tmp_path, "poisonapp", "--count", "30") as app:
        app.wait_for("32 produced", lambda lg: len(lg.records("produced")) == 32, 15)
        goods = {r.id for r in app.ledger.records("produced")} - set(POISON)
        app.wait_for("goods handled", lambda lg: set(lg.ids("done")) >= goods, 20)
        app.wait_for("poison dead-lettered", lambda lg: len(lg.records("dead")) >= 2, 5)
        time.sleep(0.3)
        app.signal(signal.SIGTERM)
        code = app.wait_exit(10)
        log = app.log()
        ledger = app.ledger
    assert code == 0, log[-3000:]
    assert "exited unexpectedly" not in log, log[-3000:]
    assert len(ledger.pids("start")) == 1, "the worker process was restarted"
    tally = ledger.tally(goods)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    check_poison_dead_lettered(ledger, [])


def test_kafka_poison_is_dead_lettered_and_the_consumer_commits_past_it(
    tmp_path: Path, fault_broker: Broker
) -> None:
    """Kafka: the consumer goes on past the poison offsets: every good id after them is handled
    once, both poison messages are dead-lettered once, and the group's committed offset reaches
    the end of the partition (before the fix the worker died at the first poison offset, and so
    did every restart)."""
    bootstrap = fault_broker.bootstrap
    topic, group = unique_name("poison"), unique_name("gpoison")
    new_topic(bootstrap, topic, 1)
    ids = ids_around_poison(15)
    goods = [i for i in ids if i not in POISON]
    run(produce_ids(bootstrap, topic, ids, values=[encode(i) for i in ids]))
    ledger = Ledger(tmp_path / "ledger.jsonl")
    letters: list[romeways.DeadLetter] = []
    app = build_app(
        str(ledger.path),
        bootstrap=bootstrap,
        topic=topic,
        group=group,
        chunk=20,
        on_dead_letter=letters.append,
    )

    async def scenario() -> None:
        task = start(app)
        await wait_until("goods handled", lambda: set(ledger.ids("done")) >= set(goods), 40, task)
        await wait_until("poison dead-lettered", lambda: len(letters) >= 2, 5, task)
        await asyncio.sleep(0.3)
        await stop(app, task, 10.0)

    asyncio.run(scenario())
    tally = ledger.tally(goods)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    check_poison_dead_lettered(ledger, letters)
    fetched = {r.id: r.extra for r in ledger.records("fetched")}
    last_good = goods[-1]
    poison_offset = int(fetched[UNENCODABLE].split(":")[1])
    assert int(fetched[last_good].split(":")[1]) > poison_offset
    deadline = time.monotonic() + 10
    while not fully_committed(bootstrap, topic, group, 1):
        assert time.monotonic() < deadline, "the offsets never got past the poison messages"
        time.sleep(0.3)
