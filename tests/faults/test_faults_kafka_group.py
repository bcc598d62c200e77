"""Consumer-group faults with the Kafka connector: a rebalance while consuming (a third consumer
joins, then one is SIGKILLed) (#5), and a handler that runs past max_poll_interval_ms or blocks
the event loop past the session timeout, so its partition moves to another consumer (#6)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from broker import Broker, unique_name

from .kafkahelp import commits_never_go_back, new_topic, produce_ids, run, scenario_args
from .ledger import make_ids
from .procs import Scenario

pytestmark = pytest.mark.timeout(120)


def _consumer_pids(app: Scenario) -> set[int]:
    return {r.pid for r in app.ledger.records("done")}


def _stop_all(*apps: Scenario) -> None:
    for app in apps:
        if app.proc.poll() is None:
            app.signal(signal.SIGTERM)
    for app in apps:
        if app.proc.returncode is None or app.proc.returncode >= 0:
            assert app.wait_exit(15) == 0, app.tail()
    assert apps[0].survivors() == [], "consumer processes are still running"


def _no_crash_loop(app: Scenario) -> None:
    log = app.log()
    assert "Traceback" not in log, app.tail()
    assert "exited unexpectedly" not in log
    assert log.count("could not commit") <= 5, "commit failures keep coming"


def test_kafka_rebalance_third_joins_one_killed_loses_nothing(
    tmp_path: Path, fault_broker: Broker
) -> None:
    """#5: two consumer processes share 3 partitions while messages keep coming; a third joins,
    then one of the first two is SIGKILLed. Every id is handled (0 lost), the survivors never
    crash or loop on CommitFailedError, and no commit moves an offset backwards."""
    bootstrap, partitions = fault_broker.bootstrap, 3
    topic, group = unique_name("f5"), unique_name("g5")
    new_topic(bootstrap, topic, partitions)
    ids = make_ids("r", 700)
    options = scenario_args(bootstrap, topic, group, chunk=10, handler_seconds=0.01)
    a = Scenario(tmp_path, "kafkaapp", *options, name="a")
    b = Scenario(tmp_path, "kafkaapp", *options, name="b")
    c: Scenario | None = None
    producer = threading.Thread(
        target=lambda: run(produce_ids(bootstrap, topic, ids, partitions, rate=70), 60)
    )
    try:
        a.wait_log(r"was assigned partitions", 30)
        b.wait_log(r"was assigned partitions", 30)
        producer.start()
        a.wait_for("both consuming", lambda lg: {a.pid, b.pid} <= _consumer_pids(a), 30)
        c = Scenario(tmp_path, "kafkaapp", *options, name="c")
        c.wait_for("the third consuming", lambda lg: c.pid in _consumer_pids(c), 30)
        os.kill(a.pid, signal.SIGKILL)
        a.proc.wait(5)
        killed_at = time.time()
        producer.join(60)
        b.wait_for("every id handled", lambda lg: set(ids) <= set(lg.ids("done")), 60)
        tally = b.ledger.tally(ids)
        assert tally.lost == set(), tally.summary()
        assert tally.unexpected == set(), tally.summary()
        after_kill = {r.pid for r in b.ledger.records("done") if r.t > killed_at + 1}
        assert a.pid not in after_kill
        for survivor in (b, c):
            assert survivor.proc.poll() is None, survivor.tail()
            _no_crash_loop(survivor)
        assert commits_never_go_back(b.ledger) == []
        _stop_all(b, c)
    finally:
        for app in (a, b, c):
            if app is not None:
                app.cleanup()
    print(f"#5 rebalance: {tally.summary()}")


@pytest.mark.parametrize("how", ["past-max-poll-interval", "blocking-the-loop"])
def test_kafka_slow_handler_partition_moves_no_stale_commit(
    tmp_path: Path, fault_broker: Broker, how: str
) -> None:
    """#6: two consumers, one partition each. The first attempt of message ``slow`` takes 8 s:
    asynchronously past max_poll_interval_ms=3000, or blocking the event loop with time.sleep
    past the 3 s session timeout. Its partition moves to the other consumer, which handles
    ``slow`` and what follows; nothing is lost, the slow consumer's late finish commits
    nothing stale (no committed offset ever goes backwards), and both consumers keep running."""
    bootstrap, partitions = fault_broker.bootstrap, 2
    topic, group = unique_name("f6"), unique_name("g6")
    new_topic(bootstrap, topic, partitions)
    slow: dict[str, object]
    if how == "past-max-poll-interval":
        slow = {"slow_id": "slow", "slow_seconds": 8, "max_poll_interval_ms": 3000}
    else:
        slow = {"block_id": "slow", "block_seconds": 8}
    options = scenario_args(bootstrap, topic, group, chunk=5, **slow)
    a = Scenario(tmp_path, "kafkaapp", *options, name="a")
    b = Scenario(tmp_path, "kafkaapp", *options, name="b")
    try:
        a.wait_log(r"was assigned partitions", 30)
        b.wait_log(r"was assigned partitions", 30)
        time.sleep(1.0)  # let the group settle with one partition each
        first = make_ids("x", 40)
        ids = ["slow", *first]
        # "slow" and the 20 behind it go to partition 0, the other 20 to partition 1.
        run(produce_ids(bootstrap, topic, ids[:21], partitions, partition=0))
        run(produce_ids(bootstrap, topic, ids[21:], partitions, partition=1))
        a.wait_for("slow started", lambda lg: "slow" in lg.ids("start"), 20)
        slow_pid = next(r.pid for r in a.ledger.records("start") if r.id == "slow")
        assert slow_pid in (a.pid, b.pid)
        more = make_ids("y", 40)
        time.sleep(1.0)
        run(produce_ids(bootstrap, topic, more, partitions))
        ids += more
        a.wait_for("every id handled", lambda lg: set(ids) <= set(lg.ids("done")), 60)
        a.wait_for(
            "the slow attempt finished",
            lambda lg: any(r.id == "slow" and r.pid == slow_pid for r in lg.records("done")),
            20,
        )
        slow_app = a if slow_pid == a.pid else b
        slow_app.wait_log(r"revoked", 10)  # it learns that its partition moved
        ledger = a.ledger
        tally = ledger.tally(ids)
        assert tally.lost == set(), tally.summary()
        slow_starts = [r.pid for r in ledger.records("start") if r.id == "slow"]
        assert len(slow_starts) >= 2, "slow was not delivered again: its partition never moved"
        time.sleep(1.5)  # what the slow consumer commits after its late finish lands now
        for app in (a, b):
            assert app.proc.poll() is None, app.tail()
            assert "Traceback" not in app.log(), app.tail()
        _stop_all(a, b)
        assert commits_never_go_back(ledger) == []
    finally:
        a.cleanup()
        b.cleanup()
    print(f"#6 {how}: {tally.summary()}")
