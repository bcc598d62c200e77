"""Faults on real process trees with the RabbitMQ connector on the real broker: a SIGKILLed
worker mid-chunk (Q1), a poison message that kills its worker every time (Q2), SIGTERM to the
parent while handlers run (Q3).

RabbitMQ is at-least-once here: a message is acknowledged only once it is finished, so what a
killed worker held (the chunk it handled and the messages prefetched behind it) is delivered
again, with its delivery count raised.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .ledger import Ledger, make_ids
from .procs import Scenario, log_time, wait_gone
from .rabbitapp import scenario_args
from .rabbithelp import Vhost, delete_queue, publish_ids, ready_count, run, unique_queue

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def rabbit_url() -> Iterator[str]:
    vhost = Vhost()
    try:
        yield vhost.url
    finally:
        vhost.close()


@pytest.fixture
def queue(rabbit_url: str) -> Iterator[str]:
    name = unique_queue("fq")
    yield name
    run(delete_queue(rabbit_url, name))


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


def test_rabbitmq_worker_sigkill_mid_chunk_loses_nothing(
    tmp_path: Path, rabbit_url: str, queue: str
) -> None:
    """Q1: SIGKILL the worker process (spawn_process=True) mid-chunk; the supervisor restarts
    it. Every id is handled (0 lost); duplicates are at most two chunks (the one in flight, one
    whose acks were still on their way); every message the victim had been given and had not
    acknowledged comes back with its delivery count raised by one, and nothing else does."""
    chunk = 10
    ids = make_ids("q", 300)
    run(publish_ids(rabbit_url, queue, ids))
    options = scenario_args(
        rabbit_url, queue, spawn=True, chunk=chunk, sequential=True, handler_seconds=0.01
    )
    with Scenario(tmp_path, "rabbitapp", *options) as app:
        app.wait_for("100 handled", lambda lg: len(lg.ids("done")) >= 100, 40)
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
        # The chunk in flight, and one whose acks had not reached the broker yet.
        assert tally.duplicate_count <= 2 * chunk, tally.summary()
        acked_by_victim = {r.id for r in ledger.records("ack") if r.pid == victim}
        fetched = ledger.records("fetched")
        held = {r.id for r in fetched if r.pid == victim} - acked_by_victim
        assert held, "the victim held nothing when it was killed"
        again = {r.id: r.extra for r in fetched if r.pid != victim}
        assert all(again[i] == "2" for i in held), {i: again.get(i) for i in held}
        # Also back once: what the broker had pushed to the victim (its prefetch, 4 chunks)
        # and no fetch had taken yet. Nothing else was delivered twice.
        prefetched = {i for i, count in again.items() if count == "2"} - held
        assert len(prefetched) <= 4 * chunk, len(prefetched)
        assert all(count in ("1", "2") for count in again.values())
        deadline = time.monotonic() + 10
        while run(ready_count(rabbit_url, queue)) != 0:
            assert time.monotonic() < deadline, "the queue was never emptied"
            time.sleep(0.2)
        _stop(app, 5.0)
    print(f"Q1 rabbitmq sigkill: {tally.summary()}; {len(held)} held by the victim came again")


def test_rabbitmq_poison_message_is_dead_lettered_once_its_deliveries_pass_the_limit(
    tmp_path: Path, rabbit_url: str, queue: str
) -> None:
    """Q2: a message whose handler SIGKILLs its own worker process every time (a segfault, an
    OOM kill). retries=1, so delivery_limit is 3: after 3 deaths its 4th delivery is
    dead-lettered unhandled (the hook runs, it is acknowledged) instead of crash-looping the
    worker; the messages delivered with it are handled (none is dead-lettered), 0 lost, and the
    worker lives on."""
    ids = make_ids("n", 20)
    poison = ids[3]
    run(publish_ids(rabbit_url, queue, ids))
    options = scenario_args(
        rabbit_url, queue, spawn=True, chunk=5, retries=1, poison_id=poison, max_restarts=6
    )
    with Scenario(tmp_path, "rabbitapp", *options) as app:
        good = [i for i in ids if i != poison]
        app.wait_for("the poison dead-lettered", lambda lg: poison in lg.ids("dead"), 60)
        app.wait_for("every other id handled", _all_done(good), 30)
        ledger = app.ledger
        starts = [r for r in ledger.records("start") if r.id == poison]
        assert len(starts) == 3, f"handled {len(starts)} times, not delivery_limit=3"
        assert len({r.pid for r in starts}) == 3, "each attempt killed its worker"
        (dead,) = ledger.records("dead")
        assert dead.id == poison and "delivered it 4 times" in dead.extra, dead
        counts = [r.extra for r in ledger.records("fetched") if r.id == poison]
        assert counts == ["1", "2", "3", "4"], counts
        # After the first death the poison came alone: nothing else died with it again.
        chunks = ledger.records("chunk")
        tally = ledger.tally(good)
        assert tally.lost == set(), tally.summary()
        assert tally.duplicate_count <= 5, tally.summary()
        assert "exited unexpectedly with code -9" in app.log()
        survivor = ledger.records("done")[-1].pid
        assert ledger.records("dead")[0].pid == survivor or survivor in ledger.pids("fetched")
        assert run(ready_count(rabbit_url, queue)) == 0
        _stop(app, 5.0)
    print(
        f"Q2 rabbitmq poison: handled 3 times, dead-lettered on delivery 4; {tally.summary()}; "
        f"chunk sizes {[c.attempt for c in chunks][:12]}"
    )


@pytest.mark.parametrize("shutdown_timeout", [4.0, 1.0])
def test_rabbitmq_sigterm_to_parent_while_2s_handlers_run(
    tmp_path: Path, rabbit_url: str, queue: str, shutdown_timeout: float
) -> None:
    """Q3: SIGTERM to the parent only while a chunk of 2-second handlers runs in the worker
    process. 4 s: they finish and are acknowledged before the connection closes, and a second
    run does not handle them again. 1 s: they are cancelled, not acknowledged, and the second
    run handles them. Exit 0 within the timeout + 5 s; across both runs each id handled once."""
    ids = make_ids("t", 12)
    run(publish_ids(rabbit_url, queue, ids))
    common = scenario_args(rabbit_url, queue, spawn=True, chunk=4)
    timeout = ["--shutdown-timeout", str(shutdown_timeout)]
    with Scenario(tmp_path, "rabbitapp", *common, *timeout, "--handler-seconds", "2") as app:
        app.wait_for("handlers in flight", lambda lg: len(lg.ids("start")) >= 4, 30)
        time.sleep(0.3)
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
    assert run(ready_count(rabbit_url, queue)) == len(ids) - len(first_done)
    with Scenario(tmp_path, "rabbitapp", *common, name="again") as again:
        again.wait_for("every id handled", _all_done(ids), 30)
        time.sleep(0.5)  # a redelivery of something acknowledged would show up now
        _stop(again, 5.0)
    tally = ledger.tally(ids)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    second = {r.id for r in ledger.records("done") if r.t > first_run_ended}
    if shutdown_timeout > 2:
        assert not second & in_flight, "finished in-flight messages were delivered again"
    else:
        assert in_flight <= second, "cancelled messages were not delivered again"
    print(f"Q3 sigterm, shutdown_timeout {shutdown_timeout:g}: exit 0 in {took:.1f}s")
