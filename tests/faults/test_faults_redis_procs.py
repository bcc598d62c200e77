"""Faults on real process trees with the Redis Streams connector on a real Redis: a worker
SIGKILLed mid-chunk and restarted in its slot (R1), SIGTERM while handlers run (R2), a poison
message that kills its worker every time (R3).

Redis Streams is at-least-once here: an entry stays pending in the group until its message is
finished; the restarted worker (same slot, same consumer name) reads its own pending entries
first.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .ledger import Ledger, make_ids, payload
from .procs import Scenario, log_time, wait_gone
from .redisapp import scenario_args
from .redishelp import add_entries, consumers, delete_streams, pending, run, shared_url, unique

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stream() -> Iterator[str]:
    name = unique("faults")
    yield name
    run(delete_streams(shared_url(), name))


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


def _no_pending(url: str, stream: str, group: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while run(pending(url, stream, group)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_redis_worker_sigkill_mid_chunk_restarts_in_its_slot_and_loses_nothing(
    tmp_path: Path, stream: str
) -> None:
    """R1: SIGKILL the worker process (spawn_process=True) mid-chunk; the supervisor restarts
    it in its slot, under the same consumer name, and it first reads the entries it held
    (delivered a second time). 0 lost; duplicates at most the one chunk; one consumer in the
    group; nothing left pending."""
    url, group, chunk = shared_url(), f"{stream}-g", 10
    ids = make_ids("r1", 400)
    run(add_entries(url, stream, [payload(i) for i in ids]))
    options = scenario_args(
        url, stream, group, spawn=True, chunk=chunk, sequential=True, handler_seconds=0.005
    )
    with Scenario(tmp_path, "redisapp", *options) as app:
        app.wait_for("100 handled", lambda lg: len(lg.ids("done")) >= 100, 30)
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
        assert tally.duplicate_count <= chunk, tally.summary()
        after = [r for r in ledger.records("fetched") if r.t > killed_at]
        assert after and after[0].pid != victim
        redelivered = [r for r in after if r.extra.endswith("#2")]
        assert after[: len(redelivered)] == redelivered, "the held entries did not come first"
        assert set(tally.duplicates) <= {r.id for r in redelivered}, tally.summary()
        names = run(consumers(url, stream, group))
        assert list(names) == [f"{socket.gethostname()}-redis-faults-0"], names
        assert _no_pending(url, stream, group)
        _stop(app, 5.0)
    print(f"R1 redis sigkill: {tally.summary()}, {len(redelivered)} redelivered first")


def test_redis_sigterm_drains_in_flight_handlers_and_acks_them(tmp_path: Path, stream: str) -> None:
    """R2: SIGTERM to the parent while a chunk of 1-second handlers runs in the worker process
    (shutdown_timeout 4 s): they finish, are acknowledged before the process exits (nothing
    pending), nothing is fetched after the signal, and a second run handles exactly the rest:
    every id once over both runs."""
    url, group = shared_url(), f"{stream}-g"
    ids = make_ids("r2", 12)
    run(add_entries(url, stream, [payload(i) for i in ids]))
    common = scenario_args(url, stream, group, spawn=True, chunk=4)
    first = [*common, "--shutdown-timeout", "4", "--handler-seconds", "1"]
    with Scenario(tmp_path, "redisapp", *first) as app:
        app.wait_for("handlers in flight", lambda lg: len(lg.ids("start")) >= 1, 30)
        time.sleep(0.3)
        sent = time.time()
        took = _stop(app, 4.0)
    ledger = app.ledger
    in_flight = {r.id for r in ledger.records("start")} - {
        r.id for r in ledger.records("done") if r.t < sent
    }
    assert in_flight, "nothing was in flight at the signal"
    assert in_flight <= set(ledger.ids("done")), "in-flight handlers did not finish"
    assert [r.id for r in ledger.records("fetched") if r.t > sent + 0.05] == []
    assert set(ledger.ids("ack")) == set(ledger.ids("done"))
    assert run(pending(url, stream, group)) == [], "finished messages left unacknowledged"
    assert took < 4.0 + 1.5
    first_run = set(ledger.ids("done"))
    with Scenario(tmp_path, "redisapp", *common, name="again") as again:
        again.wait_for("every id handled", _all_done(ids), 30)
        time.sleep(0.5)  # a redelivery of something acknowledged would show up now
        _stop(again, 5.0)
    tally = ledger.tally(ids)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    assert first_run and first_run != set(ids)
    print(f"R2 redis sigterm: exit 0 in {took:.2f}s, {len(in_flight)} in flight finished and acked")


def test_redis_poison_message_that_kills_its_worker_every_time_is_dead_lettered(
    tmp_path: Path, stream: str
) -> None:
    """R3: a message whose handler SIGKILLs the worker process on every attempt (retries=1:
    two deliveries allowed). The supervisor restarts the worker twice; the third delivery is
    dead-lettered unhandled ("delivered 3 times"), the worker lives on and handles what comes
    next, and no good message is dead-lettered or lost."""
    url, group = shared_url(), f"{stream}-g"
    ids = make_ids("r3", 12)
    run(add_entries(url, stream, [payload(i) for i in [*ids[:6], "poison", *ids[6:]]]))
    options = scenario_args(
        url, stream, group, spawn=True, chunk=4, sequential=True, retries=1, kill_id="poison"
    )
    with Scenario(tmp_path, "redisapp", *options) as app:
        app.wait_for("the poison dead-lettered", lambda lg: "poison" in lg.ids("dead"), 40)
        app.wait_for("every good id handled", _all_done(ids), 30)
        later = make_ids("r3-later", 5)
        run(add_entries(url, stream, [payload(i) for i in later]))
        app.wait_for("later ids handled", _all_done(later), 20)
        ledger = app.ledger
        (dead,) = ledger.records("dead")
        assert dead.id == "poison" and "delivered 3 times" in dead.extra, dead
        assert ledger.ids("start")["poison"] == 2, "handled more often than its budget"
        crashes = app.log().count("exited unexpectedly with code -9")
        assert crashes == 2, app.tail()
        tally = ledger.tally([*ids, *later])
        assert tally.lost == set(), tally.summary()
        last_pid = ledger.records("done")[-1].pid
        assert last_pid not in {r.pid for r in ledger.records("start") if r.id == "poison"}
        assert _no_pending(url, stream, group)
        _stop(app, 5.0)
    print(f"R3 redis poison: {crashes} crashes, then dead-lettered; {tally.summary()}")
