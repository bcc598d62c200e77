"""Faults on real process trees with the NATS JetStream connector on the shared server: a
SIGKILLed worker (N1), SIGTERM to the parent while 2-second handlers run (N2), a handler and a
delayed resend that hold their message longer than ack_wait while another worker process shares
the durable (N3).

JetStream is at-least-once: nothing published is lost; what a killed worker held comes back
after ack_wait, what a stopped one held (nak'ed) at once.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .ledger import Ledger, make_ids
from .natsapp import scenario_args
from .natshelp import Streams, add_stream, fully_acked, nats_shared, publish_ids, run, streams
from .procs import Scenario, log_time, wait_gone

pytestmark = pytest.mark.timeout(90)
__all__ = ["nats_shared", "streams"]  # fixtures


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


def _wait_fully_acked(url: str, stream: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not fully_acked(url, stream, f"{stream}-d"):
        assert time.monotonic() < deadline, "the consumer never acked everything"
        time.sleep(0.3)


def test_nats_worker_sigkill_mid_stream_loses_nothing(tmp_path: Path, streams: Streams) -> None:
    """N1: SIGKILL the worker process (spawn_process=True) mid-stream; the supervisor restarts
    it. Every id is handled (0 lost); the killed worker's chunk comes back after ack_wait (2 s),
    so duplicates are at most that chunk; the consumer ends with nothing pending or unacked."""
    url, stream, chunk, ack_wait = streams.url, streams.new("N1"), 10, 2.0
    ids = make_ids("k", 300)
    # 20 ms handlers: 4 s of work left after the 100th, so the kill lands while a chunk is held
    # (with 5 ms, a quiet machine had finished the stream before the kill).
    options = scenario_args(
        url, stream, spawn=True, chunk=chunk, sequential=True, handler_seconds=0.02,
        ack_wait=ack_wait,
    )  # fmt: skip
    with Scenario(tmp_path, "natsapp", *options) as app:
        app.wait_log(r"connected to nats://", 20)
        run(publish_ids(url, f"faults.{stream}", ids))
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
        assert tally.duplicate_count <= chunk, tally.summary()
        # What the killed worker held (fetched, never acked) came back only after ack_wait.
        acked = {r.id for r in ledger.records("ack") if r.pid == victim}
        held = {r.id for r in ledger.records("fetched") if r.pid == victim} - acked
        assert held, "the kill hit no held message"
        back = [
            r.t - killed_at for r in ledger.records("fetched") if r.id in held and r.pid != victim
        ]
        assert back and min(back) >= ack_wait - 0.5, back
        _wait_fully_acked(url, stream)
        _stop(app, 5.0)
    print(f"N1 nats sigkill: {tally.summary()}; {len(held)} held, back after {min(back):.1f}s")


def test_nats_sigterm_naks_in_flight_messages_so_they_come_back_at_once(
    tmp_path: Path, streams: Streams
) -> None:
    """N2: SIGTERM to the parent while a chunk of 2-second handlers runs in the worker process
    (shutdown timeout 1 s): they are cancelled and nak'ed, so a restarted app gets them at once
    (ack_wait is 30 s), before the messages it never fetched; exit 0 within the timeout + 5 s,
    no process left, nothing fetched after the signal, each id handled exactly once in all."""
    url, stream = streams.url, streams.new("N2")
    ids = make_ids("t", 12)
    run(add_stream(url, stream, f"faults.{stream}"))
    run(publish_ids(url, f"faults.{stream}", ids))
    common = scenario_args(url, stream, spawn=True, chunk=4, ack_wait=30.0)
    slow = ["--shutdown-timeout", "1.0", "--handler-seconds", "2"]
    with Scenario(tmp_path, "natsapp", *common, *slow, name="first") as app:
        app.wait_for("a chunk in flight", lambda lg: len(lg.ids("start")) >= 4, 30)
        time.sleep(0.5)
        sent = time.time()
        took = _stop(app, 1.0)
    ledger = app.ledger
    in_flight = set(ledger.ids("start")) - set(ledger.ids("done"))
    assert in_flight, "nothing was in flight at the signal"
    assert [r.id for r in ledger.records("fetched") if r.t > sent + 0.05] == []
    assert not set(ledger.ids("ack")) & in_flight, "a cancelled message was acked"
    restarted = time.time()
    with Scenario(tmp_path, "natsapp", *common, name="second") as again:
        again.wait_for("every id handled", _all_done(ids), 20)
        second_starts = [r for r in ledger.records("start") if r.t > restarted]
        first_back = max(r.t for r in second_starts if r.id in in_flight) - restarted
        assert first_back < 8.0, f"the nak'ed messages took {first_back:.1f}s to come back"
        order = [r.id for r in second_starts]
        assert set(order[: len(in_flight)]) == in_flight, order
        time.sleep(0.5)  # a redelivery of something acked would show up now
        _stop(again, 5.0)
    tally = ledger.tally(ids)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    _wait_fully_acked(url, stream)
    print(
        f"N2 nats sigterm: stopped in {took:.1f}s; {len(in_flight)} nak'ed, all handled again "
        f"{first_back:.1f}s after the restart (ack_wait 30 s)"
    )


def test_nats_long_handler_and_delayed_resend_past_ack_wait_are_not_redelivered(
    tmp_path: Path, streams: Streams
) -> None:
    """N3: two worker processes share the durable (ack_wait 2 s). One message's handler runs
    5 s, another is resent with a 4 s delay: in-progress signals keep both, so neither is
    delivered to the other worker; every id is handled once (the delayed one once more as its
    resend), and nothing stays unacked."""
    url, stream = streams.url, streams.new("N3")
    ids = ["slow", "delayed", *make_ids("f", 30)]
    options = scenario_args(
        url, stream, workers=2, chunk=5, ack_wait=2.0, slow_id="slow", slow_seconds=5,
        delay_id="delayed", delay_seconds=4, handler_seconds=0.05,
    )  # fmt: skip
    with Scenario(tmp_path, "natsapp", *options) as app:
        deadline = time.monotonic() + 30
        while app.log().count("connected to nats://") < 2:
            assert time.monotonic() < deadline, app.tail()
            time.sleep(0.1)
        run(publish_ids(url, f"faults.{stream}", ids))
        app.wait_for("every id handled", _all_done(ids), 40)
        time.sleep(2.0)  # a redelivery past ack_wait would show up now
        ledger = app.ledger
        starts = ledger.ids("start")
        assert starts["slow"] == 1, "the long handler's message was delivered again"
        delayed = [r.attempt for r in ledger.records("start") if r.id == "delayed"]
        assert delayed == [0, 1], f"delayed message attempts {delayed}"
        assert len(ledger.records("resend")) == 1
        tally = ledger.tally(ids)
        assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
        assert len(ledger.pids("start")) == 2, "both worker processes took part"
        _wait_fully_acked(url, stream)
        _stop(app, 5.0)
