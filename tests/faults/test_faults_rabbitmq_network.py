"""Faults between the RabbitMQ connector and the broker, consumed in this process: the broker
closes the consumer's connection mid-chunk (``rabbitmqctl close_connection``, Q4), and the
network is cut and comes back (the test's TcpProxy, Q5).

What must hold: the delivery tags of the lost channel are forgotten (an ack of one on the new
channel would make the broker close that one too: "unknown delivery tag"), the consumer is
re-created by the connector itself, and nothing is lost; what the lost channel had not
acknowledged is delivered again (at most the chunk in flight, and one whose acks were still on
their way, are handled twice).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import TcpProxy, free_port
from yarl import URL

from .ledger import Ledger, make_ids
from .rabbitapp import Settings, build_app
from .rabbithelp import (
    Vhost,
    close_connections,
    connection_pids,
    ctl_command,
    delete_queue,
    publish_ids,
    rabbitmqctl,
    ready_count,
    run,
    unique_queue,
)

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def rabbit_url() -> Iterator[str]:
    vhost = Vhost()
    try:
        yield vhost.url
    finally:
        vhost.close()


@pytest.fixture
def queue(rabbit_url: str) -> Iterator[str]:
    name = unique_queue("fn")
    yield name
    run(delete_queue(rabbit_url, name))


async def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]  # a zero-argument predicate
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def _consumers(queue: str, vhost: str) -> int:
    out = rabbitmqctl("list_consumers", "-p", vhost, "queue_name")
    return sum(1 for line in out.splitlines() if line.strip() == queue)


@pytest.mark.skipif(ctl_command() is None, reason="needs rabbitmqctl for the broker under test")
def test_rabbitmq_connection_closed_by_the_server_mid_chunk_loses_nothing(
    tmp_path: Path, rabbit_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Q4: ``rabbitmqctl close_connection`` on the consumer's connection mid-stream, while a
    message of the closed channel waits for a 2 s delayed resend. When the delay ends, its
    resend and its ack name a tag of the closed channel: both are dropped, not sent on the new
    channel (which stays open: no "unknown delivery tag", and no other message acked in its
    place); the broker delivers the original again. The connector reconnects by itself and
    re-creates its consumer (one consumer on the queue again); every id is handled, at most two
    chunks twice (the one in flight, one whose acks were on their way)."""
    caplog.set_level(logging.INFO, logger="romeways")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ids = make_ids("c", 200)
    run(publish_ids(rabbit_url, queue, ids))
    name = f"rw-q4-{queue}"
    vhost = URL(rabbit_url).path[1:] or "/"
    settings = Settings(
        ledger=str(ledger.path),
        url=rabbit_url,
        queue=queue,
        chunk=10,
        sequential=True,
        handler_seconds=0.01,
        connection_name=name,
        delay_id=ids[55],
        delay_seconds=2.0,
    )

    async def scenario() -> tuple[int, int]:
        app = build_app(settings)
        task = asyncio.create_task(app.start())
        try:
            await _until(lambda: len(ledger.ids("done")) >= 60, 30, "60 handled")
            assert ids[55] not in ledger.ids("done"), "the delayed resend is not pending"
            closed = await asyncio.to_thread(close_connections, f"{name}: consumer", "q4 test")
            await _until(lambda: set(ids) <= set(ledger.ids("done")), 40, "every id handled")
            await asyncio.sleep(2.0)  # the delayed resend's time has come and gone
            consumers = await asyncio.to_thread(_consumers, queue, vhost)
            await asyncio.sleep(0.3)
            return closed, consumers
        finally:
            app.stop()
            await asyncio.wait_for(task, 15)

    closed, consumers = run(scenario(), 90)
    assert closed == 1, "the consumer's connection was not found to close"
    assert consumers == 1, f"{consumers} consumers on the queue after the reconnect"
    text = caplog.text
    assert len(re.findall("lost its channel", text)) == 1, text[-3000:]
    assert "CONNECTION_FORCED - q4 test" in text
    assert "unknown delivery tag" not in text and "PRECONDITION_FAILED" not in text
    assert "reconnected; consuming again" in text
    assert "did not resend delivery" in text  # its channel was lost: the original comes again
    (done,) = [r for r in ledger.records("done") if r.id == ids[55]]
    assert done.attempt == 0, "not the redelivered original"
    tally = ledger.tally(ids)
    assert tally.lost == set(), tally.summary()
    # Twice at most: the chunk in flight, and one whose acks were still on their way (an ack
    # is a frame the broker does not answer; the connection went before it was taken).
    assert 1 <= tally.duplicate_count <= 2 * settings.chunk, tally.summary()
    assert run(ready_count(rabbit_url, queue)) == 0
    assert connection_pids(name) == []  # closed by the app's stop
    print(f"Q4 close_connection: {tally.summary()}")


def test_rabbitmq_network_cut_and_back_loses_nothing(
    tmp_path: Path, rabbit_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Q5: the connector reaches the broker through the test's TcpProxy; mid-stream the proxy
    drops every connection and refuses new ones for 3 s, then forwards again. The connector
    logs the loss once, retries with the kit's backoff (refused while the cut lasts), logs
    when it is back and consumes on; every id is handled, at most two chunks twice."""
    caplog.set_level(logging.INFO, logger="romeways")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ids = make_ids("x", 200)
    run(publish_ids(rabbit_url, queue, ids))
    broker = URL(rabbit_url)
    port = free_port()
    settings = Settings(
        ledger=str(ledger.path),
        url=str(broker.with_port(port)),
        queue=queue,
        chunk=10,
        sequential=True,
        handler_seconds=0.01,
        heartbeat=2,
    )

    async def scenario() -> tuple[float, float]:
        proxy = TcpProxy(port, broker.port or 5672)
        await proxy.start()
        app = build_app(settings)
        task = asyncio.create_task(app.start())
        try:
            await _until(lambda: len(ledger.ids("done")) >= 60, 30, "60 handled")
            await proxy.cut()
            cut_at = time.monotonic()
            handled = len(ledger.ids("done"))
            await asyncio.sleep(0.5)  # the loss noticed, the handlers of the chunk done
            cpu = time.process_time()
            await asyncio.sleep(2.5)
            cpu = (time.process_time() - cpu) / 2.5
            assert len(ledger.ids("done")) <= handled + settings.chunk, "consumed while cut"
            await proxy.restore()
            await _until(lambda: set(ids) <= set(ledger.ids("done")), 40, "every id handled")
            return time.monotonic() - cut_at, cpu
        finally:
            app.stop()
            await asyncio.wait_for(task, 15)
            await proxy.close()

    took, cpu = run(scenario(), 90)
    assert cpu < 0.1, f"{cpu:.0%} of a core while the broker was away"
    text = caplog.text
    assert len(re.findall("lost its channel", text)) == 1, text[-3000:]
    assert "lost contact with RabbitMQ" in text  # refused while the cut lasted
    assert re.search(r"reached RabbitMQ at \S+ \(vhost '[^']+'\) again", text), text[-3000:]
    assert "reconnected; consuming again" in text
    tally = ledger.tally(ids)
    assert tally.lost == set(), tally.summary()
    assert tally.duplicate_count <= 2 * settings.chunk, tally.summary()
    assert run(ready_count(rabbit_url, queue)) == 0
    print(
        f"Q5 network cut: {tally.summary()}; all handled {took:.1f}s after the cut; "
        f"{cpu:.1%} of a core while cut"
    )
