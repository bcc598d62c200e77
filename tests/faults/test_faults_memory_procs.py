"""Faults on real process trees with the memory connector: a SIGKILLed worker (#11), a
KeyboardInterrupt / SystemExit / CancelledError out of a handler (#10), and SIGTERM to the parent
while 2-second handlers run (#2, memory variant).

The memory connector is at-most-once: a message is off the queue once a worker fetched it, so a
killed worker loses at most the chunk it held, and never more; nothing is ever handled twice.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .ledger import Ledger
from .procs import Scenario, log_time, wait_gone

pytestmark = pytest.mark.timeout(60)


def _done_by(scenario: Scenario, prefix: str) -> dict[str, int]:
    """id -> pid of the ``done`` records of ids starting with ``prefix``."""
    return {r.id: r.pid for r in scenario.ledger.records("done") if r.id.startswith(prefix)}


def _stop_and_check_no_orphans(scenario: Scenario, shutdown_timeout: float) -> float:
    """SIGTERM the parent only; it must exit 0 within shutdown_timeout + 5 s leaving no process
    of its tree alive. Returns how long the exit took."""
    workers = scenario.ledger.pids()
    sent = scenario.signal(signal.SIGTERM)
    code = scenario.wait_exit(shutdown_timeout + 5.0)
    took = time.time() - sent
    assert code == 0, scenario.tail()
    assert wait_gone(workers, 1.0) == [], f"worker processes outlived the parent: {workers}"
    assert scenario.survivors() == [], "processes of the app are still running"
    return took


def _first_burst_settled(ledger: Ledger, count: int, victim: int) -> bool:
    """All ``count`` first-burst ids were produced, and each is handled or was held (fetched)
    by the killed worker."""
    produced = {r.id for r in ledger.records("produced") if r.id.startswith("g-")}
    settled = set(ledger.ids("done")) | {r.id for r in ledger.records("fetched") if r.pid == victim}
    return len(produced) == count and produced <= settled


def _handled(prefix: str, count: int) -> Callable[[Ledger], bool]:
    return lambda ledger: sum(1 for i in ledger.ids("done") if i.startswith(prefix)) >= count


@pytest.mark.parametrize("when", ["idle", "busy"])
def test_memory_worker_sigkill_is_noticed_within_2s_and_restarted(
    tmp_path: Path, when: str
) -> None:
    """#11: SIGKILL the worker process (idle on an empty queue, or mid-stream): the supervisor
    logs its exit code -9 within 2 s, starts a new worker that consumes what comes next, and
    the parent still stops cleanly (never hangs joining the dead worker)."""
    chunk = 5
    if when == "idle":
        count, extra = 20, ["--count", "20"]
    else:
        count, extra = 600, ["--count", "600", "--rate", "300", "--handler-seconds", "0.01"]
    options = ["--burst2", "20", "--chunk", str(chunk), "--frequency", "0.5"]
    with Scenario(tmp_path, "memapp", *extra, *options, "--shutdown-timeout", "3") as app:
        ledger = app.ledger
        app.wait_for("20 handled", _handled("g-", 20), 15)
        if when == "idle":
            time.sleep(0.5)  # the worker now waits on the empty queue
        (victim,) = ledger.pids("done")
        os.kill(victim, signal.SIGKILL)
        killed_at = time.time()
        noticed = app.wait_log(rf"worker process {victim} .*exited unexpectedly with code -9", 5)
        assert log_time(noticed) - killed_at < 2.0, "the supervisor noticed the exit too late"
        app.wait_for(
            "the first burst settled", lambda lg: _first_burst_settled(lg, count, victim), 20
        )
        tally = ledger.tally(r.id for r in ledger.records("produced"))
        held = {r.id for r in ledger.records("fetched") if r.pid == victim}
        # At-most-once: only what the victim held can be lost, at most one chunk; no duplicates.
        assert tally.lost <= held, f"lost messages the victim never fetched: {tally.summary()}"
        assert len(tally.lost) <= chunk, tally.summary()
        assert tally.duplicate_count == 0, tally.summary()
        if when == "idle":
            assert tally.lost == set(), tally.summary()
        # The restarted worker consumes what comes next: nothing stalls behind the dead one.
        Path(app.token + ".go").touch()
        app.wait_for("the second burst handled", _handled("h-", 20), 15)
        assert victim not in _done_by(app, "h-").values()
        assert len(ledger.pids("done")) == 2
        assert ledger.tally(r.id for r in ledger.records("produced")).lost == tally.lost
        _stop_and_check_no_orphans(app, 3.0)


@pytest.mark.parametrize("kind", ["keyboard", "systemexit", "cancelled"])
def test_base_exception_in_handler_stops_the_worker_nonzero_unacked_and_restarted(
    tmp_path: Path, kind: str
) -> None:
    """#10: KeyboardInterrupt, SystemExit or CancelledError out of a handler is not a handler
    failure (no dead letter, no 'failed' log): the worker process exits non-zero, the supervisor
    logs that and restarts it, and the message is never acknowledged."""
    options = ["--count", "5", "--boom", kind, "--burst2", "5", "--chunk", "1"]
    with Scenario(tmp_path, "memapp", *options, "--frequency", "0.2") as app:
        ledger = app.ledger
        app.wait_for("boom started", lambda lg: "boom" in lg.ids("start"), 15)
        (boom,) = [r for r in ledger.records("start") if r.id == "boom"]
        exited = app.wait_log(
            rf"worker process {boom.pid} .*exited unexpectedly with code (\S+);", 5
        )
        code = exited.group(1)
        assert code not in ("0", "None"), f"the worker exited with code {code}"
        Path(app.token + ".go").touch()
        app.wait_for("the second burst handled", _handled("h-", 5), 15)
        assert boom.pid not in _done_by(app, "h-").values(), "the worker was not restarted"
        acked = ledger.ids("ack")
        assert "boom" not in acked, "the interrupted message was acknowledged"
        assert {f"g-{i:06d}" for i in range(5)} <= set(acked)
        assert "boom" not in ledger.ids("done")
        assert ledger.records("dead") == [], "treated as a handler failure: dead-lettered"
        log = app.log()
        assert "dead-lettered" not in log and " failed: " not in log
        _stop_and_check_no_orphans(app, 5.0)


@pytest.mark.parametrize("shutdown_timeout", [4.0, 1.0])
def test_sigterm_to_parent_while_2s_handlers_run(tmp_path: Path, shutdown_timeout: float) -> None:
    """#2 (memory): SIGTERM to the parent only while a chunk of 2-second handlers runs. With a
    shutdown timeout above 2 s the in-flight handlers finish and are acknowledged; below it they
    are cancelled and not acknowledged. Either way no new chunk is fetched, the parent exits 0
    within the shutdown timeout + 5 s, and no process of the app is left."""
    options = ["--count", "12", "--handler-seconds", "2", "--chunk", "4"]
    timeout = str(shutdown_timeout)
    with Scenario(tmp_path, "memapp", *options, "--shutdown-timeout", timeout) as app:
        ledger = app.ledger
        app.wait_for("handlers in flight", lambda lg: len(lg.ids("start")) >= 1, 15)
        time.sleep(0.5)
        sent = time.time()
        took = _stop_and_check_no_orphans(app, shutdown_timeout)
        in_flight = {r.id for r in ledger.records("start")} - {
            r.id for r in ledger.records("done") if r.t < sent
        }
        assert in_flight, "nothing was in flight at the signal"
        late = [r.id for r in ledger.records("fetched") if r.t > sent + 0.05]
        assert late == [], f"fetched after SIGTERM: {late}"
        done, acked = set(ledger.ids("done")), set(ledger.ids("ack"))
        assert acked == done, "acknowledged and finished differ"
        if shutdown_timeout > 2:
            assert in_flight <= done, "in-flight handlers did not finish"
            assert took < 2.5
        else:
            assert not in_flight & done, "in-flight handlers were not cancelled"
            assert took >= shutdown_timeout - 0.1
        assert "stopped consuming queue 'faults'" in app.log()


def test_handler_ignoring_cancellation_cannot_hold_the_parent(tmp_path: Path) -> None:
    """#7: a handler that never returns and swallows every cancellation: on SIGTERM the worker
    process cannot finish it, so the supervisor SIGKILLs the worker after shutdown_timeout + 2 s;
    the parent exits 0 within shutdown_timeout + 5 s, no process is left, and the message was
    never acknowledged. (In-process, spawn_process=False, nothing can stop such a handler.)"""
    options = ["--count", "3", "--stubborn", "--shutdown-timeout", "1"]
    with Scenario(tmp_path, "memapp", *options) as app:
        app.wait_for("the stubborn handler running", lambda lg: "g-000000" in lg.ids("start"), 15)
        took = _stop_and_check_no_orphans(app, 1.0)
        ledger = app.ledger
        assert ledger.ids("ignored-cancel")["g-000000"] >= 1, "the handler was never cancelled"
        assert "g-000000" not in ledger.ids("ack") and "g-000000" not in ledger.ids("done")
        assert "did not stop in time; killing it" in app.log()
        assert took < 1.0 + 5.0
