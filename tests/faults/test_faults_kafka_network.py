"""Network and broker faults with the Kafka connector: a silent network cut longer than the
session timeout through a blackhole proxy of the test's own (#3), and a broker absent at start
and lost mid-run (#4)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from broker import free_port, start_broker, unique_name

from .kafkahelp import (
    BlackholeProxy,
    commits_never_go_back,
    new_topic,
    produce_ids,
    run,
    scenario_args,
)
from .ledger import make_ids
from .procs import Scenario, cpu_seconds

pytestmark = pytest.mark.timeout(120)


def test_kafka_network_cut_longer_than_session_timeout_resumes_without_restart(
    tmp_path: Path,
) -> None:
    """#3: a proxy between consumer and broker (the broker advertises the proxy's address, so
    every connection goes through it) drops all traffic, silently, for 10 s (session timeout
    3 s); then it comes back. The worker process is not restarted, it logs the outage and its
    end, consumes what was produced before and after (0 lost), and no commit goes backwards."""
    proxy_port = free_port()
    log = tmp_path / "tansu.log"
    with start_broker(advertised_port=proxy_port, use_env=False, log_path=log) as broker:
        proxy = BlackholeProxy(proxy_port, broker.listener_port)
        try:
            bootstrap, partitions = broker.bootstrap, 2
            assert bootstrap.endswith(f":{proxy_port}")
            topic, group = unique_name("f3"), unique_name("g3")
            new_topic(bootstrap, topic, partitions)
            before, after = make_ids("b", 100), make_ids("a", 100)
            run(produce_ids(bootstrap, topic, before, partitions))
            options = scenario_args(
                bootstrap, topic, group, spawn=True, request_timeout_ms=4000, retry_backoff_ms=200
            )
            with Scenario(tmp_path, "kafkaapp", *options) as app:
                app.wait_for("the first batch", lambda lg: set(before) <= set(lg.ids("done")), 40)
                (worker,) = app.ledger.pids("done")
                proxy.cut()
                cut_at = time.time()
                app.wait_log(r"lost contact with the Kafka cluster", 15)
                time.sleep(max(0.0, cut_at + 10.0 - time.time()))
                assert proxy.dropped > 0, "the cut dropped nothing"
                proxy.restore()
                run(produce_ids(bootstrap, topic, after, partitions))
                app.wait_for(
                    "the batch produced after the cut",
                    lambda lg: set(after) <= set(lg.ids("done")),
                    60,
                )
                app.wait_log(r"reached the Kafka cluster again", 10)
                assert "exited unexpectedly" not in app.log(), "the worker was restarted"
                assert app.ledger.pids("done") == [worker]
                tally = app.ledger.tally([*before, *after])
                assert tally.lost == set(), tally.summary()
                assert commits_never_go_back(app.ledger) == []
                app.signal(signal.SIGTERM)
                assert app.wait_exit(10) == 0
                assert app.survivors() == []
        finally:
            proxy.close()
    print(f"#3 network cut: {tally.summary()}, {proxy.dropped} bytes dropped")


def _tree_cpu(app: Scenario, seconds: float) -> float:
    """CPU seconds per second the scenario's processes used over the next ``seconds``."""
    pids = app.survivors()
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    assert app.survivors() == pids, "the app's processes changed while measuring"
    return (sum(cpu_seconds(p) for p in pids) - before) / seconds


def _stop_within(app: Scenario, seconds: float) -> float:
    sent = app.signal(signal.SIGTERM)
    assert app.wait_exit(seconds) == 0, app.tail()
    assert app.survivors() == []
    return time.time() - sent


def test_kafka_broker_absent_at_start_waits_cheaply_and_stops_in_time(tmp_path: Path) -> None:
    """#4: no broker at all: the worker logs its retries, uses under 20 % of a core while it
    waits, and SIGTERM to the parent ends everything within 10 s."""
    bootstrap = f"127.0.0.1:{free_port()}"
    options = scenario_args(
        bootstrap, unique_name("f4"), unique_name("g4"), spawn=True, shutdown_timeout=5
    )
    with Scenario(tmp_path, "kafkaapp", *options) as app:
        app.wait_log(r"cannot reach the Kafka cluster", 15)
        cpu = _tree_cpu(app, 3.0)
        assert cpu < 0.2, f"{cpu:.0%} of a core while waiting for the broker"
        took = _stop_within(app, 10.0)
    print(f"#4 broker absent: {cpu:.1%} of a core while waiting; stopped in {took:.1f}s")


def test_kafka_broker_arrives_late_then_is_lost_mid_run(tmp_path: Path) -> None:
    """#4: the broker comes up only after the consumer started (it connects and consumes
    everything), then dies mid-run (SIGKILL): the consumer uses under 20 % of a core while the
    broker is gone, and SIGTERM to the parent ends everything within 10 s."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic, group = unique_name("f4"), unique_name("g4")
    options = scenario_args(
        bootstrap, topic, group, spawn=True, shutdown_timeout=5, request_timeout_ms=5000
    )
    with Scenario(tmp_path, "kafkaapp", *options) as app:
        app.wait_log(r"cannot reach the Kafka cluster", 15)
        broker = start_broker(port=port, use_env=False, log_path=tmp_path / "tansu.log")
        try:
            new_topic(bootstrap, topic, 2)
            ids = make_ids("late", 50)
            run(produce_ids(bootstrap, topic, ids, 2))
            app.wait_for("every id handled", lambda lg: set(ids) <= set(lg.ids("done")), 40)
            broker.kill()
            app.wait_log(r"lost contact with the Kafka cluster", 20)
            cpu = _tree_cpu(app, 3.0)
            assert cpu < 0.2, f"{cpu:.0%} of a core while the broker is gone"
            took = _stop_within(app, 10.0)
        finally:
            broker.stop()
        assert app.ledger.tally(ids).lost == set()
    print(f"#4 broker lost: {cpu:.1%} of a core while it is gone; stopped in {took:.1f}s")
