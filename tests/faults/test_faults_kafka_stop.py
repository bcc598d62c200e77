"""Stopping while the Kafka broker is unreachable during a resend (#14): the whole stop, the
in-flight handler's drain and the connector's close (background commit, final commit, clients'
stop), shares the app's one shutdown deadline, in-process and in a worker process; nothing is
lost, the unfinished message is simply delivered again."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from broker import free_port, start_broker, unique_name

from .inproc import start, wait_until
from .kafkaapp import Settings, build_app
from .kafkahelp import BlackholeProxy, new_topic, produce_ids, run, scenario_args
from .ledger import Ledger, make_ids
from .procs import Scenario, wait_gone

pytestmark = pytest.mark.timeout(120)

SHUTDOWN_TIMEOUT = 5.0
# What the stop may take past the shutdown timeout: the clients' stop once handlers used all of
# it (the connector's close grace, 1 s) and the scheduling of 2 loaded cores.
MARGIN = 1.5
STUCK = "stuck-000000"


def _settings(ledger: Ledger, bootstrap: str, topic: str, group: str) -> Settings:
    # STUCK sleeps 1 s on its first attempt, then raises ResendException: the test cuts the
    # network during the sleep, so the resend waits for a broker that does not answer.
    return Settings(
        str(ledger.path),
        bootstrap,
        topic,
        group,
        frequency=0.2,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        slow_id=STUCK,
        slow_seconds=1.0,
        resend_id=STUCK,
    )


def test_kafka_stop_during_a_resend_to_an_unreachable_broker_in_process(tmp_path: Path) -> None:
    """In-process: ``app.stop()`` returns within the shutdown timeout (+ the close grace), not
    after the drain plus a fresh timeout per close step (16 s before the fix); the stuck message
    was not committed, so a second run handles it (0 lost)."""
    proxy_port = free_port()
    with start_broker(advertised_port=proxy_port, use_env=False) as broker:
        proxy = BlackholeProxy(proxy_port, broker.listener_port)
        try:
            bootstrap = broker.bootstrap
            topic, group = unique_name("f14"), unique_name("g14")
            new_topic(bootstrap, topic, 1)
            ids = [*make_ids("before", 5), STUCK]
            run(produce_ids(bootstrap, topic, ids))
            ledger = Ledger(tmp_path / "ledger.jsonl")
            app = build_app(_settings(ledger, bootstrap, topic, group))

            async def first_run() -> float:
                task = start(app)
                await wait_until(
                    "the stuck message started",
                    lambda: STUCK in ledger.ids("start") and len(ledger.ids("done")) == 5,
                    40,
                    task,
                )
                proxy.cut()
                await asyncio.sleep(2.0)  # the resend is now waiting for the broker
                assert ledger.records("resend") == []
                begun = time.monotonic()
                app.stop()
                done, _ = await asyncio.wait([task], timeout=30)
                took = time.monotonic() - begun
                assert done, "start() did not return within 30 s of stop()"
                task.result()
                return took

            took = asyncio.run(first_run())
            proxy.restore()
            assert took <= SHUTDOWN_TIMEOUT + MARGIN, f"stop() took {took:.1f}s"

            again = build_app(_settings(ledger, bootstrap, topic, group))

            async def second_run() -> None:
                task = start(again)
                await wait_until(
                    "the stuck message handled", lambda: STUCK in ledger.ids("done"), 40, task
                )
                again.stop()
                await asyncio.wait_for(task, 30)

            asyncio.run(second_run())
        finally:
            proxy.close()
    assert ledger.tally(ids).lost == set(), ledger.tally(ids).summary()
    print(f"#14 in-process: stop() took {took:.1f}s (shutdown_timeout {SHUTDOWN_TIMEOUT:g}s)")


def test_kafka_stop_during_a_resend_to_an_unreachable_broker_in_a_worker_process(
    tmp_path: Path,
) -> None:
    """In a worker process: SIGTERM to the parent ends the worker by itself within the shutdown
    timeout (+ the close grace), exit 0, no SIGKILL (before the fix the supervisor killed it at
    shutdown_timeout + 2 s)."""
    proxy_port = free_port()
    with start_broker(advertised_port=proxy_port, use_env=False) as broker:
        proxy = BlackholeProxy(proxy_port, broker.listener_port)
        try:
            bootstrap = broker.bootstrap
            topic, group = unique_name("f14"), unique_name("g14")
            new_topic(bootstrap, topic, 1)
            ids = [*make_ids("before", 5), STUCK]
            run(produce_ids(bootstrap, topic, ids))
            options = scenario_args(
                bootstrap,
                topic,
                group,
                spawn=True,
                frequency=0.2,
                shutdown_timeout=SHUTDOWN_TIMEOUT,
                slow_id=STUCK,
                slow_seconds=1.0,
                resend_id=STUCK,
            )
            with Scenario(tmp_path, "kafkaapp", *options) as app:
                app.wait_for(
                    "the stuck message started",
                    lambda lg: STUCK in lg.ids("start") and len(lg.ids("done")) == 5,
                    40,
                )
                workers = [p for p in app.ledger.pids() if p != app.pid]
                proxy.cut()
                time.sleep(2.0)
                assert app.ledger.records("resend") == []
                sent = app.signal(signal.SIGTERM)
                code = app.wait_exit(SHUTDOWN_TIMEOUT + 10)
                took = time.time() - sent
                log = app.log()
                assert code == 0, app.tail()
                assert wait_gone(workers, 1.0) == []
                assert "did not stop in time; killing it" not in log, app.tail()
                assert took <= SHUTDOWN_TIMEOUT + MARGIN, f"the stop took {took:.1f}s"
        finally:
            proxy.close()
    print(f"#14 worker process: stopped in {took:.1f}s (shutdown_timeout {SHUTDOWN_TIMEOUT:g}s)")
