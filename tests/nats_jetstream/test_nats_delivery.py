"""NATS connector delivery on the shared JetStream server: fetches that return what is there at
once, acks processed by the server when close() returns, unfinished messages nak'ed on close (so
they come back at once, in order), in-progress signals for held messages, resends with a message
id that deduplicates a repeat, crash-looping messages dead-lettered, publishing with headers and
a key, metadata and lag, and the stream and consumer checks at start-up."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import nats
import pytest
from faults.natshelp import consumer_info, run, stream_info
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

import romeways
from romeways._connector import CountsDeliveries
from romeways.connectors.nats import KEY_HEADER, NatsQueueConfig, NatsQueueConnector

from .conftest import QueueFactory, connector_for

pytestmark = pytest.mark.timeout(60)


def in_loop(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (fixtures pass through)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        run(test(*args, **kwargs), timeout=50)

    return wrapper


async def fetch_until(
    connector: NatsQueueConnector, count: int, timeout: float = 10.0, chunk: int = 10
) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"got only {got!r} of {count}"
        got += await connector.get_messages(chunk)
    return got


async def abandon(connector: NatsQueueConnector) -> None:
    """As if the worker process died: nothing more is acked, nak'ed or kept in progress."""
    connector._consuming = False
    if connector._keep_alive is not None:
        connector._keep_alive.cancel()
    client = connector._link.client
    assert client is not None
    await client.close()
    connector._link.client = None


@in_loop
async def test_a_fetch_returns_what_is_there_at_once_not_after_frequency(
    new_queue: QueueFactory,
) -> None:
    """get_messages(10) returns the 3 messages there at once, on an empty queue waits
    ``frequency``, and returns a message that arrives meanwhile as soon as it does."""
    cc, qc = new_queue(frequency=2.0)
    connector = connector_for(cc, qc)
    await connector.on_start()

    async def send_later(data: bytes) -> float:
        await asyncio.sleep(0.3)
        await connector.send_messages(data)
        return time.monotonic()

    try:
        for i in range(4):
            await connector.send_messages(f"m{i}".encode())
        # The first fetch of a connector takes one message (it might be a redelivery).
        assert await connector.get_messages(10) == [b"m0"]
        started = time.monotonic()
        got = await connector.get_messages(10)
        assert got == [b"m1", b"m2", b"m3"]
        assert time.monotonic() - started < 0.5
        started = time.monotonic()
        assert await connector.get_messages(10) == ()
        assert 1.8 < time.monotonic() - started < 2.5
        sender = asyncio.ensure_future(send_later(b"wake"))
        assert await connector.get_messages(10) == [b"wake"]
        ours = time.monotonic() - await sender
        await connector.ack(range(5))
    finally:
        await connector.close()
    assert ours < 0.2, f"it returned {ours:.2f}s after the message came"


@in_loop
async def test_acks_are_processed_by_the_server_when_close_returns(new_queue: QueueFactory) -> None:
    cc, qc = new_queue(max_chunk_size=50)
    connector = connector_for(cc, qc)
    await connector.on_start()
    for i in range(40):
        await connector.send_messages(f"a{i}".encode())
    got = await fetch_until(connector, 40, chunk=50)
    await connector.ack(range(len(got)))
    await connector.close()
    info = await consumer_info(cc.shown_servers(), qc.stream, qc.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert info.ack_floor is not None and info.ack_floor.stream_seq == 40


@in_loop
async def test_close_naks_unfinished_messages_so_they_come_back_at_once_in_order(
    new_queue: QueueFactory,
) -> None:
    """Handed out and not acked, and delivered to a fetch given up on (cancelled): all nak'ed
    on close, in stream order, so the next consumer gets them at once (ack_wait is 30 s)."""
    cc, qc = new_queue(frequency=3.0)
    first = connector_for(cc, qc)
    await first.on_start()
    for i in range(6):
        await first.send_messages(f"n{i}".encode())
    assert await fetch_until(first, 6) == [f"n{i}".encode() for i in range(6)]
    await first.ack([0, 2])
    # A fetch waiting on an empty queue, cancelled (as at shutdown): its request stays open on
    # the server and takes the next message into the connector's buffer.
    waiting = asyncio.ensure_future(first.get_messages(10))
    await asyncio.sleep(0.3)
    waiting.cancel()
    await first.send_messages(b"late")
    await asyncio.sleep(0.3)
    await first.close()
    second = connector_for(cc, qc)
    await second.on_start()
    try:
        started = time.monotonic()
        again = await fetch_until(second, 5, timeout=5.0)
        assert again == [b"n1", b"n3", b"n4", b"n5", b"late"]
        assert time.monotonic() - started < 2.0
        meta = second.message_metadata(0)
        assert meta is not None and meta.delivery_count == 2
        await second.ack(range(5))
    finally:
        await second.close()


@in_loop
async def test_held_messages_are_kept_in_progress_past_ack_wait(new_queue: QueueFactory) -> None:
    """Consumer A holds two messages for 4.5 s with ack_wait=2 s; B, on the same durable, gets
    neither meanwhile (in-progress signals every 0.5 s). With in_progress=False, B gets them."""
    cc, qc = new_queue(ack_wait=2.0, frequency=0.3)
    holder, other = connector_for(cc, qc), connector_for(cc, qc)
    await holder.on_start()
    await other.on_start()
    try:
        await holder.send_messages(b"held-1")
        await holder.send_messages(b"held-2")
        assert await fetch_until(holder, 2) == [b"held-1", b"held-2"]
        stolen: list[bytes] = []
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            stolen += await other.get_messages(10)
        assert stolen == [], "a held message was delivered to another consumer"
        await holder.ack([0])
    finally:
        await holder.close()  # naks held-2
    try:
        assert await fetch_until(other, 1, timeout=3) == [b"held-2"]
        await other.ack([0])
    finally:
        await other.close()

    cc, qc = new_queue(ack_wait=1.5, frequency=0.3, in_progress=False, handler_timeout=0.5,
                       dead_letter_timeout=0.5)  # fmt: skip
    holder, other = connector_for(cc, qc), connector_for(cc, qc)
    await holder.on_start()
    await other.on_start()
    try:
        await holder.send_messages(b"unkept")
        assert await fetch_until(holder, 1) == [b"unkept"]
        assert await fetch_until(other, 1, timeout=4) == [b"unkept"]
        await other.ack([0])
    finally:
        await holder.close()
        await other.close()


@in_loop
async def test_a_repeated_resend_is_deduplicated_by_its_message_id(
    new_queue: QueueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The resend's Nats-Msg-Id comes from the original's stream sequence: resending the same
    delivery again, or the same original once it came again after a crash, stores one
    envelope. The envelope keeps the original's headers and key."""
    cc, qc = new_queue(ack_wait=1.0, frequency=0.3)
    url = cc.shown_servers()
    first = connector_for(cc, qc)
    await first.on_start()
    await first.publish(b"orig", key=b"k-1", headers=[("trace", b"t-9")])
    assert await fetch_until(first, 1) == [b"orig"]
    envelope = romeways.Message(payload="orig", rw_resend_times=1).to_json()
    with caplog.at_level(logging.INFO, logger="romeways"):
        await first.resend(0, envelope)
        await first.resend(0, envelope)  # a retry: the same id
    assert (await stream_info(url, qc.stream)).state.messages == 2
    assert any("deduplicated" in r.getMessage() for r in caplog.records)
    await abandon(first)  # died before acking the original
    second = connector_for(cc, qc)
    await second.on_start()
    try:
        got = await fetch_until(second, 2, timeout=5)
        assert sorted(got) == sorted([b"orig", envelope])
        delivery = got.index(b"orig")
        original = second.message_metadata(delivery)
        assert original is not None and original.delivery_count == 2
        await second.resend(delivery, envelope)  # the handler asks again: deduplicated
        await second.ack(range(2))
        assert (await stream_info(url, qc.stream)).state.messages == 2
        meta = second.message_metadata(got.index(envelope))
        assert meta is None  # acked: forgotten
    finally:
        await second.close()
    third = connector_for(cc, qc)
    await third.on_start()
    try:
        await third.send_messages(b"sentinel")
        assert await fetch_until(third, 1) == [b"sentinel"], "something came again"
        await third.ack([0])
    finally:
        await third.close()


@in_loop
async def test_the_resent_envelope_carries_the_originals_headers_key_and_id(
    new_queue: QueueFactory,
) -> None:
    cc, qc = new_queue()
    connector = connector_for(cc, qc)
    await connector.on_start()
    try:
        await connector.publish(b"orig", key=b"k-1", headers=[("trace", b"t-9")])
        assert await fetch_until(connector, 1) == [b"orig"]
        await connector.resend(0, b"envelope")
        await connector.ack([0])
        assert await fetch_until(connector, 1) == [b"envelope"]
        meta = connector.message_metadata(1)
        assert meta is not None
        assert meta.key == b"k-1" and meta.header("trace") == b"t-9"
        assert meta.header("Nats-Msg-Id") == f"romeways-resend:{qc.stream}:1".encode()
        assert meta.position == (("stream", qc.stream), ("sequence", 2))
        await connector.ack([1])
    finally:
        await connector.close()


@in_loop
async def test_publish_with_headers_and_key_metadata_and_lag(new_queue: QueueFactory) -> None:
    cc, qc = new_queue()
    publisher = connector_for(cc, qc)  # never started: connects on first use
    await publisher.publish(b"first", key=b"customer-42", headers=[("trace", b"abc")])
    for i in range(9):
        await publisher.send_messages(f"more-{i}".encode())
    with pytest.raises(romeways.RomewaysError, match="line breaks"):
        await publisher.publish(b"x", headers=[("bad", b"a\r\nb")])
    with pytest.raises(romeways.RomewaysError, match="key"):
        await publisher.publish(b"x", key=b"\xff\xfe")
    await publisher.close()
    consumer = connector_for(cc, qc)
    await consumer.on_start()
    try:
        before = time.time()
        assert await consumer.get_messages(3) == [b"first"]
        assert await consumer.get_messages(3) == [b"more-0", b"more-1", b"more-2"]
        meta = consumer.message_metadata(0)
        assert meta is not None
        assert meta.key == b"customer-42" and meta.header("trace") == b"abc"
        assert KEY_HEADER not in dict(meta.headers)
        assert meta.header("Nats-Msg-Id") is not None  # every publish has an id
        assert meta.position == (("stream", qc.stream), ("sequence", 1))
        assert meta.delivery_count == 1
        assert meta.timestamp is not None and before - 30 < meta.timestamp <= time.time() + 1
        assert meta.where() == f"stream={qc.stream} sequence=1"
        assert isinstance(consumer, romeways.ProvidesMetadata)
        assert isinstance(consumer, romeways.ReportsLag)
        assert consumer.message_metadata(99) is None
        assert await consumer.consumer_lag() == {qc.stream: 6}
        await consumer.ack(range(4))
    finally:
        await consumer.close()


@in_loop
async def test_a_message_delivered_more_than_max_deliveries_is_dead_lettered_then_terminated(
    new_queue: QueueFactory,
) -> None:
    """A message whose deliveries keep dying with their worker (never acked nor nak'ed): its
    delivery past max_deliveries is handed out named by spent_deliveries (the worker
    dead-letters it instead of handling it), and its ack terminates it (+TERM), so it is never
    delivered again; the messages around it are handed out unnamed."""
    cc, qc = new_queue(ack_wait=1.0, max_deliveries=1, frequency=0.3)
    url = cc.shown_servers()
    first = connector_for(cc, qc)
    await first.on_start()
    await first.send_messages(b"poison")
    assert await fetch_until(first, 1) == [b"poison"]
    await abandon(first)
    handled: list[bytes] = []
    letters: list[tuple[bytes, str]] = []
    base = 0

    async def fetch_as_the_worker(connector: NatsQueueConnector) -> None:
        """One fetch as the worker does it: what spent_deliveries names is dead-lettered, the
        rest handled, and the whole chunk acked."""
        nonlocal base
        chunk = await connector.get_messages(10)
        spent = connector.spent_deliveries(base, len(chunk))
        for delivery, data in enumerate(chunk, base):
            if delivery in spent:
                letters.append((data, spent[delivery]))
            else:
                handled.append(data)
        await connector.ack(range(base, base + len(chunk)))
        base += len(chunk)

    terminated: list[bytes] = []

    async def on_terminated(msg: Msg) -> None:
        terminated.append(msg.data)

    watcher = await nats.connect(url)
    advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{qc.stream}.{qc.durable}"
    await watcher.subscribe(advisory, cb=on_terminated)
    second = connector_for(cc, qc)
    assert isinstance(second, CountsDeliveries)
    await second.on_start()
    try:
        await second.send_messages(b"good")
        deadline = time.monotonic() + 5
        while (not letters or not handled) and time.monotonic() < deadline:
            await fetch_as_the_worker(second)
        assert handled == [b"good"]
        assert [data for data, _ in letters] == [b"poison"]
        assert "delivered 2 times" in letters[0][1] and "max_deliveries=1" in letters[0][1]
        assert second.spent_deliveries(0, base) == {}, "an acked delivery is still named"
        await asyncio.sleep(1.5)  # past ack_wait: a poison message not terminated would return
        assert await second.get_messages(10) == ()
    finally:
        await second.close()
        await watcher.close()
    assert len(terminated) == 1, "the spent delivery was acked, not terminated (+TERM)"
    assert msgspec.json.decode(terminated[0])["stream_seq"] == 1
    info = await consumer_info(url, qc.stream, qc.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0


@in_loop
async def test_redelivered_messages_are_handed_out_one_at_a_time(new_queue: QueueFactory) -> None:
    """The messages a dead worker held come back alone, one per fetch, so if one of them kills
    the next worker too, only its own delivery count climbs; fresh messages after them come in
    chunks again."""
    cc, qc = new_queue(ack_wait=1.0, frequency=0.3)
    first = connector_for(cc, qc)
    await first.on_start()
    for data in (b"prime", b"x1", b"x2", b"x3"):
        await first.send_messages(data)
    assert await fetch_until(first, 4) == [b"prime", b"x1", b"x2", b"x3"]
    await first.ack([0])
    await abandon(first)
    second = connector_for(cc, qc)
    await second.on_start()
    try:
        await asyncio.sleep(1.2)  # past ack_wait
        for data in (b"y1", b"y2", b"y3"):
            await second.send_messages(data)
        chunks = [list(await second.get_messages(10)) for _ in range(4)]
        assert chunks == [[b"x1"], [b"x2"], [b"x3"], [b"y1"]]
        assert await second.get_messages(10) == [b"y2", b"y3"]
        await second.ack(range(6))
    finally:
        await second.close()


@in_loop
async def test_create_false_requires_the_stream_and_the_consumer(new_queue: QueueFactory) -> None:
    cc, qc = new_queue(create=False)
    started = time.monotonic()
    with pytest.raises(romeways.ConnectorError, match=rf"stream '{qc.stream}' does not exist"):
        await connector_for(cc, qc).on_start()
    assert time.monotonic() - started < 3, "not retried until startup_timeout"
    client = await nats.connect(cc.shown_servers())
    try:
        js = client.jetstream()
        await js.add_stream(name=qc.stream, subjects=[qc.subject, "other.subject"])
        with pytest.raises(romeways.ConnectorError, match=rf"consumer '{qc.durable}'"):
            await connector_for(cc, qc).on_start()
        await js.add_consumer(
            qc.stream,
            ConsumerConfig(durable_name=qc.durable, ack_wait=7.0, filter_subject=qc.subject),
        )
        connector = connector_for(cc, qc)
        await connector.on_start()  # uses the consumer as it is: ack_wait 7 s
        assert connector._fetcher.ack_wait == 7.0
        await connector.close()
        await js.add_consumer(
            qc.stream, ConsumerConfig(durable_name="pushed", deliver_subject="push.inbox")
        )
    finally:
        await client.close()
    push = connector_for(cc, _replace(qc, durable="pushed"))
    with pytest.raises(romeways.ConnectorError, match="push consumer"):
        await push.on_start()
    elsewhere = connector_for(cc, _replace(qc, subject="nowhere.else"))
    with pytest.raises(romeways.ConnectorError, match=r"does not take subject .nowhere\.else."):
        await elsewhere.on_start()


@in_loop
async def test_with_create_the_consumer_gets_the_configs_ack_wait(new_queue: QueueFactory) -> None:
    cc, qc = new_queue(ack_wait=30.0)
    connector = connector_for(cc, qc)
    await connector.on_start()
    await connector.close()
    changed = connector_for(cc, _replace(qc, ack_wait=12.0, max_ack_pending=77))
    await changed.on_start()
    await changed.close()
    info = await consumer_info(cc.shown_servers(), qc.stream, qc.durable)
    assert (info.config.ack_wait, info.config.max_ack_pending) == (12.0, 77)
    assert info.config.max_deliver == -1  # the server never stops delivering by itself


def _replace(config: NatsQueueConfig, **fields: Any) -> NatsQueueConfig:
    return msgspec.structs.replace(config, **fields)
