"""What the broker refuses and what producers get wrong, with the RabbitMQ connector consumed in
this process: a resend to a queue deleted meanwhile (Q6) or refused because the queue is full
(Q7), bad input among good ids (Q8), and a stop that gives the unfinished messages back in
order (Q9)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest

import romeways

from .ledger import Ledger, id_of, make_ids, payload
from .rabbitapp import Settings, build_app
from .rabbithelp import (
    Vhost,
    channel,
    declare,
    delete_queue,
    publish,
    publish_ids,
    ready_count,
    run,
    take_all,
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
    name = unique_queue("fi")
    yield name
    run(delete_queue(rabbit_url, name))


async def _until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]  # a zero-argument predicate
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def test_rabbitmq_resend_to_a_deleted_queue_raises_and_the_worker_goes_on(
    tmp_path: Path, rabbit_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Q6: the queue is deleted while a handler runs, and the handler asks for a resend. The
    resend is published with ``mandatory`` and comes back unroutable: it raises, so the original
    is not acknowledged as resent (no silent loss), and the worker goes on. The broker cancels
    the consumer; the connector declares the queue again and consumes what comes next."""
    caplog.set_level(logging.INFO, logger="romeways")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    first, resent, *later = make_ids("d", 5)
    run(publish_ids(rabbit_url, queue, [first, resent]))

    async def delete(_: str) -> None:
        await delete_queue(rabbit_url, queue)

    settings = Settings(ledger=str(ledger.path), url=rabbit_url, queue=queue, resend_id=resent)

    async def queue_is_back() -> bool:
        try:
            async with channel(rabbit_url) as ch:
                await ch.declare_queue(queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
        return True

    async def scenario() -> None:
        app = build_app(settings, before_resend=delete)
        task = asyncio.create_task(app.start())
        try:
            await _until(lambda: "failed" in caplog.text, 20, "the resend to fail")
            deadline = time.monotonic() + 20
            while not await queue_is_back():  # declared again by the connector, not the test
                assert time.monotonic() < deadline, "the queue was never declared again"
                await asyncio.sleep(0.1)
            await publish(rabbit_url, queue, [payload(i) for i in later], declare_first=False)
            await _until(lambda: set(later) <= set(ledger.ids("done")), 20, "the later ids")
        finally:
            app.stop()
            await asyncio.wait_for(task, 15)

    run(scenario(), 60)
    text = caplog.text
    assert "resending a message on queue 'faults' failed" in text
    assert "RabbitMQ returned it unroutable (NO_ROUTE)" in text
    assert "it stays unacknowledged" in text
    assert "RabbitMQ cancelled the consumer (was the queue deleted?); declared the queue" in text
    assert "lost its channel" not in text  # the channel and its tags lived on
    assert resent not in ledger.ids("ack"), "the original was acked though its resend failed"
    assert resent not in ledger.ids("dead") and resent not in ledger.ids("done")
    tally = ledger.tally([first, *later])
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()


def test_rabbitmq_resend_refused_by_a_full_queue_keeps_the_original(
    tmp_path: Path, rabbit_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Q7: the queue is full (x-max-length with x-overflow reject-publish) when a handler asks
    for a resend: RabbitMQ nacks the publish, the resend raises and the original stays
    unacknowledged; the stop gives it back, so it is in the queue afterwards, as it was
    published (resend counter 0): nothing lost."""
    caplog.set_level(logging.INFO, logger="romeways")
    ledger = Ledger(tmp_path / "ledger.jsonl")
    arguments = {"x-max-length": 2, "x-overflow": "reject-publish"}
    run(declare(rabbit_url, queue, arguments=arguments))
    original = payload("r-full")
    run(publish(rabbit_url, queue, [original], declare_first=False))

    async def fill(_: str) -> None:
        # Until the broker refuses one: the queue is full (prefetch 1 holds the original).
        async with channel(rabbit_url) as ch:
            for i in range(10):
                try:
                    await ch.default_exchange.publish(
                        aio_pika.Message(payload(f"filler-{i}"), delivery_mode=2),
                        routing_key=queue,
                    )
                except aiormq.exceptions.DeliveryError:
                    return
        raise AssertionError("the queue never refused a publish")

    settings = Settings(
        ledger=str(ledger.path),
        url=rabbit_url,
        queue=queue,
        chunk=1,
        prefetch=1,
        resend_id="r-full",
        max_length=2,
    )

    async def scenario() -> None:
        app = build_app(settings, before_resend=fill)
        task = asyncio.create_task(app.start())
        try:
            await _until(lambda: "refused to store it (nack)" in caplog.text, 20, "the nack")
        finally:
            app.stop()
            await asyncio.wait_for(task, 15)

    run(scenario(), 60)
    assert "resending a message on queue 'faults' failed" in caplog.text
    assert "r-full" not in ledger.ids("ack")
    bodies = [m.body for m in run(take_all(rabbit_url, queue))]
    assert original in bodies, bodies  # the original, unchanged: not an envelope
    assert [id_of(b) for b in bodies].count("r-full") == 1


class _Canary:
    """Unpickling this would write a file: the test checks it never happens."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "unpickled"))  # type: ignore[return-value]


def test_rabbitmq_bad_input_mix_is_dead_lettered_and_the_worker_goes_on(
    tmp_path: Path, rabbit_url: str, queue: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Q8: among good ids, bytes a producer got wrong: non-UTF-8, malformed JSON, JSON of the
    wrong shape, empty, a pickle, 900 KB of bad JSON, and a good 900 KB message. Each bad one
    is dead-lettered once and acknowledged, each good one handled once, the pickle never
    unpickled, no payload in any log line; the queue ends empty."""
    caplog.set_level(logging.INFO)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    canary = tmp_path / "canary"
    good = make_ids("g", 6)
    bad = [
        b"\xff\xfe\xfd",
        b'{"id": "broken',
        b'{"id": 42}',
        b"",
        pickle.dumps(_Canary(str(canary))),
        b"[" + b"9," * 450_000,
    ]
    big = payload("g-big", pad=900_000)
    bodies = [payload(good[0]), *bad[:3], payload(good[1]), big, *bad[3:], *map(payload, good[2:])]
    run(publish(rabbit_url, queue, bodies))
    dead: list[romeways.DeadLetter] = []
    settings = Settings(ledger=str(ledger.path), url=rabbit_url, queue=queue, chunk=4)
    wanted = {*good, "g-big"}

    async def scenario() -> None:
        app = build_app(settings, on_dead_letter=dead.append)
        task = asyncio.create_task(app.start())
        try:
            await _until(
                lambda: wanted <= set(ledger.ids("done")) and len(dead) >= len(bad), 30, "all"
            )
            await asyncio.sleep(0.3)
        finally:
            app.stop()
            await asyncio.wait_for(task, 15)

    run(scenario(), 60)
    tally = ledger.tally(wanted)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    assert sorted(letter.data for letter in dead) == sorted(bad)
    assert all("cannot decode" in letter.reason for letter in dead)
    assert not canary.exists(), "the pickle was unpickled"
    for record in caplog.records:
        text = record.getMessage()
        assert "broken" not in text and "9,9,9" not in text and "xxxx" not in text
    assert run(ready_count(rabbit_url, queue)) == 0
    assert run(take_all(rabbit_url, queue, idle=0.2)) == []  # nothing left unacknowledged


def test_rabbitmq_stop_gives_unfinished_messages_back_in_order(
    tmp_path: Path, rabbit_url: str, queue: str
) -> None:
    """Q9: a stop while a handler hangs (shutdown_timeout 0.5 s), with more messages prefetched
    behind it. What was handled is acknowledged; the hung message, the rest of its chunk and
    the prefetched ones go back to the queue in their order, each delivered once so far."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    ids = make_ids("o", 30)
    run(publish_ids(rabbit_url, queue, ids))
    hang = ids[13]
    settings = Settings(
        ledger=str(ledger.path),
        url=rabbit_url,
        queue=queue,
        chunk=10,
        sequential=True,
        shutdown_timeout=0.5,
        hang_id=hang,
    )

    async def scenario() -> None:
        app = build_app(settings)
        task = asyncio.create_task(app.start())
        try:
            await _until(lambda: hang in ledger.ids("start"), 20, "the hanging handler")
        finally:
            app.stop()
            await asyncio.wait_for(task, 15)

    run(scenario(), 60)
    assert set(ledger.ids("done")) == set(ids[:13])
    assert set(ledger.ids("ack")) == set(ids[:13])
    left = run(take_all(rabbit_url, queue))
    assert [id_of(m.body) for m in left] == ids[13:]
    counts = {(m.header.properties.headers or {}).get("x-delivery-count") for m in left}
    assert counts == {1}, counts  # each delivered once (to the stopped worker's prefetch)
    with contextlib.suppress(Exception):
        run(delete_queue(rabbit_url, queue))
