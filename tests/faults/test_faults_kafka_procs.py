"""Faults on real process trees with the Kafka connector on a real broker: a SIGKILLed worker
(#1), SIGTERM to the parent while 2-second handlers run (#2).

Kafka is at-least-once: nothing produced is ever lost; what a killed consumer had in flight
(one chunk at most) is delivered again.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from broker import Broker, unique_name

from .kafkahelp import (
    commits_never_go_back,
    fully_committed,
    new_topic,
    per_partition_duplicates,
    produce_ids,
    run,
    scenario_args,
)
from .ledger import Ledger, make_ids
from .procs import Scenario, log_time, wait_gone

pytestmark = pytest.mark.timeout(90)


def _all_done(ids: list[str]) -> Callable[[Ledger], bool]:
    wanted = set(ids)
    return lambda lg: wanted <= set(lg.ids("done"))


def _stop(app: Scenario, shutdown_timeout: float) -> float:
    """SIGTERM the parent only: exit 0 within shutdown_timeout + 5 s, no process left."""
    workers = [p for p in app.ledger.pids() if p != app.pid]
    sent = app.signal(signal.SIGTERM)
    code = app.wait_exit(shutdown_timeout + 5.0)
    took = time.time() - sent
    assert code == 0, app.tail()
    assert wait_gone(workers, 1.0) == [], "worker processes outlived the parent"
    assert app.survivors() == [], "processes of the app are still running"
    return took


def test_kafka_worker_sigkill_mid_stream_loses_nothing(
    tmp_path: Path, fault_broker: Broker
) -> None:
    """#1: SIGKILL the worker process (spawn_process=True) mid-stream; the supervisor restarts
    it. Every produced id is handled (0 lost); duplicates are at most the one chunk that was in
    flight (so at most one chunk per partition); the group ends fully committed and no commit
    ever moved an offset backwards."""
    bootstrap, partitions, chunk = fault_broker.bootstrap, 3, 10
    topic, group = unique_name("f1"), unique_name("g1")
    new_topic(bootstrap, topic, partitions)
    ids = make_ids("k", 600)
    run(produce_ids(bootstrap, topic, ids, partitions))
    options = scenario_args(
        bootstrap, topic, group, spawn=True, chunk=chunk, sequential=True, handler_seconds=0.01
    )
    with Scenario(tmp_path, "kafkaapp", *options) as app:
        app.wait_for("150 handled", lambda lg: len(lg.ids("done")) >= 150, 40)
        victim = app.ledger.records("done")[-1].pid
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        noticed = app.wait_log(rf"worker process {victim} .*exited unexpectedly with code -9", 5)
        assert log_time(noticed) - killed_at < 2.0
        app.wait_for("every id handled", _all_done(ids), 60)
        ledger = app.ledger
        tally = ledger.tally(ids)
        assert tally.lost == set(), tally.summary()
        assert tally.unexpected == set(), tally.summary()
        assert victim not in ledger.pids("done")[1:], "no new worker handled anything"
        duplicates = per_partition_duplicates(ledger, partitions, ids)
        assert all(n <= chunk for n in duplicates.values()), duplicates
        assert tally.duplicate_count <= chunk, tally.summary()
        deadline = time.monotonic() + 15
        while not fully_committed(bootstrap, topic, group, partitions):
            assert time.monotonic() < deadline, "the group never committed everything"
            time.sleep(0.3)
        assert commits_never_go_back(ledger) == []
        _stop(app, 5.0)
    print(f"#1 kafka sigkill: {tally.summary()}; per partition {duplicates}")


@pytest.mark.parametrize("shutdown_timeout", [4.0, 1.0])
def test_kafka_sigterm_to_parent_while_2s_handlers_run(
    tmp_path: Path, fault_broker: Broker, shutdown_timeout: float
) -> None:
    """#2 (Kafka): SIGTERM to the parent only while a chunk of 2-second handlers runs in the
    worker process. Shutdown timeout 4 s: they finish and are committed, and a restarted
    consumer of the group does not handle them again. 1 s: they are cancelled, not committed,
    and the restarted consumer handles them. Exit 0 within the timeout + 5 s, no orphans, and
    across both runs every id handled exactly once."""
    bootstrap, partitions = fault_broker.bootstrap, 3
    topic, group = unique_name("f2"), unique_name("g2")
    new_topic(bootstrap, topic, partitions)
    ids = make_ids("t", 12)
    run(produce_ids(bootstrap, topic, ids, partitions))
    common = scenario_args(bootstrap, topic, group, spawn=True, chunk=4)
    timeout = ["--shutdown-timeout", str(shutdown_timeout)]
    with Scenario(tmp_path, "kafkaapp", *common, *timeout, "--handler-seconds", "2") as app:
        app.wait_for("handlers in flight", lambda lg: len(lg.ids("start")) >= 1, 40)
        time.sleep(0.5)
        sent = time.time()
        took = _stop(app, shutdown_timeout)
    first_run_ended = time.time()
    ledger = app.ledger
    in_flight = {r.id for r in ledger.records("start")} - {
        r.id for r in ledger.records("done") if r.t < sent
    }
    assert in_flight, "nothing was in flight at the signal"
    assert [r.id for r in ledger.records("fetched") if r.t > sent + 0.05] == []
    first_done = set(ledger.ids("done"))
    assert set(ledger.ids("ack")) == first_done
    if shutdown_timeout > 2:
        assert in_flight <= first_done, "in-flight handlers did not finish"
        assert took < shutdown_timeout + 1
    else:
        assert not in_flight & first_done, "in-flight handlers were not cancelled"
    with Scenario(tmp_path, "kafkaapp", *common) as again:
        again.wait_for("every id handled", _all_done(ids), 40)
        time.sleep(0.5)  # a redelivery of something committed would show up now
        _stop(again, 5.0)
    tally = ledger.tally(ids)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    second = {r.id for r in ledger.records("done") if r.t > first_run_ended}
    if shutdown_timeout > 2:
        assert not second & in_flight, "finished in-flight messages were delivered again"
    else:
        assert in_flight <= second, "cancelled messages were not delivered again"


def test_kafka_worker_killed_during_a_resend_delay_redelivers_the_message(
    tmp_path: Path, fault_broker: Broker
) -> None:
    """#9 (Kafka): a handler raises ResendException(delay=30) and the worker process is
    SIGKILLed during the delay. Nothing was resent and the original was not committed, so the
    restarted worker gets it again and handles it; the messages behind it were not held up."""
    bootstrap = fault_broker.bootstrap
    topic, group = unique_name("f9"), unique_name("g9")
    new_topic(bootstrap, topic, 1)
    ids = ["delayed", *make_ids("d", 20)]
    run(produce_ids(bootstrap, topic, ids))
    options = scenario_args(
        bootstrap, topic, group, spawn=True, delay_id="delayed", delay_seconds=30
    )
    with Scenario(tmp_path, "kafkaapp", *options) as app:
        app.wait_for("the others handled", _all_done(ids[1:]), 40)
        ledger = app.ledger
        (first,) = [r for r in ledger.records("start") if r.id == "delayed"]
        assert "delayed" not in ledger.ids("done")
        os.kill(first.pid, signal.SIGKILL)
        app.wait_for("the delayed message handled", _all_done(["delayed"]), 40)
        (done,) = [r for r in ledger.records("done") if r.id == "delayed"]
        assert done.pid != first.pid and done.attempt == 0, "not the redelivered original"
        assert ledger.records("resend") == []
        tally = ledger.tally(ids)
        assert tally.lost == set(), tally.summary()
        _stop(app, 5.0)


def test_kafka_max_concurrency_worker_sigkill_with_a_straggler_in_flight_loses_nothing(
    tmp_path: Path, fault_broker: Broker
) -> None:
    """max_concurrency=10 and a straggler (its first attempt sleeps 60 s): the queue goes on
    around it (100 more finish while it runs; a chunk at a time none would),
    then SIGKILL the worker. Nothing is lost; the straggler, never finished, is handled again;
    what finished past it on its partition is delivered again (Kafka commits only a finished
    prefix, and no commit passed the straggler); the group ends fully committed, and no commit
    ever went back."""
    bootstrap, partitions = fault_broker.bootstrap, 3
    topic, group = unique_name("fc"), unique_name("gc")
    new_topic(bootstrap, topic, partitions)
    ids = make_ids("c", 600)
    straggler = ids[90]
    run(produce_ids(bootstrap, topic, ids, partitions))
    options = scenario_args(
        bootstrap,
        topic,
        group,
        spawn=True,
        chunk=10,
        concurrency=10,
        handler_seconds=0.01,
        slow_id=straggler,
        slow_seconds=60.0,
    )

    def around_the_straggler(lg: Ledger) -> bool:
        records = lg.records()
        began = next(
            (i for i, r in enumerate(records) if r.event == "start" and r.id == straggler), None
        )
        return began is not None and sum(r.event == "done" for r in records[began:]) >= 100

    with Scenario(tmp_path, "kafkaapp", *options) as app:
        app.wait_for("100 finished around the straggler", around_the_straggler, 40)
        victim = next(r.pid for r in app.ledger.records("start") if r.id == straggler)
        assert straggler not in app.ledger.ids("done")
        os.kill(victim, signal.SIGKILL)
        app.wait_log(rf"worker process {victim} .*exited unexpectedly with code -9", 5)
        app.wait_for("every id handled", _all_done(ids), 60)
        ledger = app.ledger
        tally = ledger.tally(ids)
        assert tally.lost == set(), tally.summary()
        assert tally.unexpected == set(), tally.summary()
        assert ledger.ids("done")[straggler] == 1
        assert ledger.ids("start")[straggler] == 2  # cut off by the kill, then again
        # Its partition's messages after it finished before the kill, and came again.
        mates = [m for i, m in enumerate(ids) if i % partitions == 90 % partitions and i > 90]
        assert any(ledger.ids("done")[m] > 1 for m in mates), tally.summary()
        deadline = time.monotonic() + 15
        while not fully_committed(bootstrap, topic, group, partitions):
            assert time.monotonic() < deadline, "the group never committed everything"
            time.sleep(0.3)
        assert commits_never_go_back(ledger) == []
        _stop(app, 5.0)
    print(f"kafka max_concurrency sigkill: {tally.summary()}")
