"""Faults inside one worker, on the real memory connector run in the test's loop: a handler that
never returns (#7), a bad input mix (#8), the resend budget and delayed resends (#9).

Each test produces messages with unique ids and checks the ledger the handler, the dead-letter
hook and the recording connector (``fetched`` / ``resend`` / ``ack``) wrote.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from multiprocessing import Queue
from pathlib import Path
from typing import Any

import msgspec
import pytest

import romeways

from .inproc import start, stop, wait_until
from .ledger import Item, Ledger, id_of, make_ids, payload
from .recording import RecordingMemoryConnector, RecordingQueueConfig

pytestmark = pytest.mark.timeout(30)


class _Setup:
    """An App with one recording memory queue whose handler writes ``start``/``done`` and whose
    dead-letter hook writes ``dead`` (and keeps the letters)."""

    def __init__(self, tmp_path: Path, shutdown_timeout: float = 2.0, **config: Any) -> None:
        self.ledger = Ledger(tmp_path / "ledger.jsonl")
        self.queue: Queue[bytes] = Queue()
        self.app = romeways.App(shutdown_timeout=shutdown_timeout)
        self.config = RecordingQueueConfig(
            connector_name="mem",
            queue=self.queue,
            ledger=str(self.ledger.path),
            frequency=0.05,
            **config,
        )
        self.letters: list[romeways.DeadLetter] = []
        self.app.connector_register(
            connector=RecordingMemoryConnector,
            config=romeways.MemoryConnectorConfig(connector_name="mem"),
        )

    async def dead_letter(self, letter: romeways.DeadLetter) -> None:
        self.letters.append(letter)
        self.ledger.write("dead", id_of(letter.data), letter.resend_times, letter.reason)

    def put(self, *ids: str) -> None:
        for message_id in ids:
            self.queue.put(payload(message_id))

    def done(self) -> set[str]:
        return set(self.ledger.ids("done"))


# ---------------------------------------------------------------- 7: a handler that never returns


def test_handler_that_never_returns_times_out_is_resent_then_dead_lettered(tmp_path: Path) -> None:
    """#7: with handler_timeout, a handler that never returns is a failure: resent while the
    retries last (exactly retries + 1 attempts), then dead-lettered; the other messages of its
    chunk are handled; every message ends acknowledged exactly once per delivery."""
    s = _Setup(tmp_path, handler_timeout=0.3, retries=1, max_chunk_size=10)

    @s.app.queue_consumer(queue_name="q", config=s.config, dead_letter=s.dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        s.ledger.write("start", message.payload.id, message.rw_resend_times)
        if message.payload.id == "hang":
            await asyncio.Event().wait()  # never returns
        s.ledger.write("done", message.payload.id)

    goods = make_ids("g", 20)
    s.put(*goods[:5], "hang", *goods[5:])

    async def scenario() -> None:
        task = start(s.app)
        await wait_until("the hang dead-lettered", lambda: bool(s.letters), 10, task)
        await wait_until("all good ids handled", lambda: s.done() >= set(goods), 5, task)
        await stop(s.app, task, 3.0)

    asyncio.run(scenario())
    ledger = s.ledger
    assert [r.attempt for r in ledger.records("start") if r.id == "hang"] == [0, 1]
    assert len(s.letters) == 1
    assert id_of(s.letters[0].data) == "hang"
    assert "timed out" in s.letters[0].reason and s.letters[0].resend_times == 1
    tally = ledger.tally(goods)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    assert [r.id for r in ledger.records("resend")] == ["hang"]
    acks = ledger.ids("ack")
    assert all(acks[g] == 1 for g in goods), acks
    assert acks["hang"] == 2  # the timed-out delivery once resent, the resend once dead-lettered
    # The resent delivery is acknowledged only after its resend went out.
    order = [(r.event, r.extra) for r in ledger.records() if r.id == "hang"]
    (resend,) = [i for i, (event, _) in enumerate(order) if event == "resend"]
    first_ack = next(i for i, e in enumerate(order) if e == ("ack", order[resend][1]))
    assert resend < first_ack


@pytest.mark.parametrize("sequential", [False, True])
def test_message_unfinished_at_shutdown_is_not_acknowledged(
    tmp_path: Path, sequential: bool
) -> None:
    """#7: a handler still running when the shutdown timeout runs out is cancelled and its
    message is never acknowledged, nor resent or dead-lettered; what finished is acknowledged,
    and stop() returns within the shutdown timeout (+ 2 s)."""
    s = _Setup(tmp_path, shutdown_timeout=0.5, sequential=sequential, max_chunk_size=10)

    @s.app.queue_consumer(queue_name="q", config=s.config, dead_letter=s.dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        s.ledger.write("start", message.payload.id)
        if message.payload.id == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                s.ledger.write("cancelled", "hang")
                raise
        s.ledger.write("done", message.payload.id)

    goods = make_ids("g", 6)
    s.put(*goods[:3], "hang", *goods[3:])

    def others() -> set[str]:
        # Concurrently: the rest of the hang's chunk and what came before it (under load the
        # queue's feeder may have split the seven messages over chunks; the one after the hang's
        # chunk is never fetched while the hang holds its chunk).
        return set(goods[:3]) if sequential else set(s.ledger.ids("fetched")) - {"hang"}

    async def scenario() -> float:
        task = start(s.app)
        await wait_until("hang started", lambda: "hang" in s.ledger.ids("start"), 5, task)
        await wait_until("the others handled", lambda: s.done() >= others(), 5, task)
        return await stop(s.app, task, 0.5 + 2.0)

    took = asyncio.run(scenario())
    ledger = s.ledger
    assert ledger.ids("cancelled") == {"hang": 1}, "the hanging handler was not cancelled"
    acked = set(ledger.ids("ack"))
    assert "hang" not in acked
    assert acked == s.done(), "acknowledged and finished differ"
    assert ledger.records("resend") == [] and s.letters == []
    if sequential:
        # After the hang in a sequential chunk nothing ran, so nothing was acknowledged.
        assert s.done() == set(goods[:3])
    assert took >= 0.4, "in-flight handlers did not get the shutdown timeout"


# ----------------------------------------------------------------------- 8: a bad input mix


def test_bad_input_mix_is_dead_lettered_once_each_without_payload_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """#8 (memory): among good ids, malformed JSON, non-UTF-8 bytes, schema-invalid JSON, empty
    bytes, ``null``, a 900 KB message and a pickle: every good id (the 900 KB one included) is
    handled once; each bad message is dead-lettered once, logged once at ERROR without its
    payload; the pickle is never unpickled; the worker keeps consuming afterwards."""
    s = _Setup(tmp_path, max_chunk_size=10)
    canary = tmp_path / "UNPICKLED-CANARY"
    bad: dict[str, bytes | None] = {
        "malformed": b'{"id": "BADMARK-malformed", "pad": ',
        "non-utf8": b'{"id": "BADMARK-\xff\xfe\xfa"}',
        "schema": b'{"id": 12345, "pad": "BADMARK-schema"}',
        "empty": b"",
        "null": None,
        "pickle": pickle.dumps(_Canary(str(canary))),
        "huge-bad": b'{"id": "BADMARK-huge", "pad": [' + b"1," * 450_000 + b'"x"]}',
    }

    @s.app.queue_consumer(queue_name="q", config=s.config, dead_letter=s.dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        s.ledger.write("done", message.payload.id)

    goods = make_ids("g", 40)
    big = "big-000000"
    for i, data in enumerate(bad.values()):
        s.put(*goods[i * 5 : i * 5 + 5])
        s.queue.put(data)  # type: ignore[arg-type]  # None goes over the queue as an object
    s.queue.put(payload(big, pad=900_000))
    s.put(*goods[35:])
    later = make_ids("later", 5)

    async def scenario() -> None:
        task = start(s.app)
        await wait_until(
            "goods handled, bad dead-lettered",
            lambda: s.done() >= {*goods, big} and len(s.letters) >= len(bad),
            10,
            task,
        )
        s.put(*later)  # the worker is still up
        await wait_until("later ids handled", lambda: s.done() >= set(later), 5, task)
        await asyncio.sleep(0.2)  # anything dead-lettered twice would show up now
        await stop(s.app, task, 3.0)

    with caplog.at_level(logging.DEBUG, logger="romeways"):
        asyncio.run(scenario())
    tally = s.ledger.tally([*goods, big, *later])
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    assert tally.unexpected == set(), tally.summary()
    assert len(s.letters) == len(bad)
    sent = sorted(b"null" if v is None else v for v in bad.values())
    assert sorted(letter.data for letter in s.letters) == sent
    assert not canary.exists(), "the pickle payload was unpickled"
    dead_logs = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(dead_logs) == len(bad), [r.getMessage() for r in dead_logs]
    assert all(r.levelno == logging.ERROR for r in dead_logs)
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert "BADMARK" not in text and "CANARY" not in text, text


class _Canary:
    """Unpickling this creates the directory ``path``: proof that someone unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return (os.mkdir, (self.path,))


# ------------------------------------------------------------- 9: resend budget, delayed resend


@pytest.mark.parametrize("retries", [0, 3])
def test_resend_budget_is_exactly_retries_plus_one_attempts(tmp_path: Path, retries: int) -> None:
    """#9: a handler that always raises ResendException gets exactly retries + 1 attempts (its
    counter 0..retries), then the message is dead-lettered once; good ids are unaffected."""
    s = _Setup(tmp_path, retries=retries, max_chunk_size=4)

    @s.app.queue_consumer(queue_name="q", config=s.config, dead_letter=s.dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        s.ledger.write("start", message.payload.id, message.rw_resend_times)
        if message.payload.id.startswith("r-"):
            raise romeways.ResendException("again")
        s.ledger.write("done", message.payload.id)

    always = make_ids("r", 3)
    goods = make_ids("g", 10)
    s.put(*always[:1], *goods[:5], *always[1:], *goods[5:])

    async def scenario() -> None:
        task = start(s.app)
        await wait_until("3 dead letters", lambda: len(s.letters) >= 3, 10, task)
        await wait_until("good ids handled", lambda: s.done() >= set(goods), 5, task)
        await asyncio.sleep(0.3)  # an extra attempt would show up now
        await stop(s.app, task, 3.0)

    asyncio.run(scenario())
    for r_id in always:
        attempts = [r.attempt for r in s.ledger.records("start") if r.id == r_id]
        assert attempts == list(range(retries + 1)), (r_id, attempts)
    assert sorted(id_of(letter.data) for letter in s.letters) == always
    assert all(letter.resend_times == retries for letter in s.letters)
    tally = s.ledger.tally(goods)
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    resends = s.ledger.ids("resend")
    assert all(resends[r_id] == retries for r_id in always), resends
    assert sum(resends.values()) == 3 * retries


@pytest.mark.parametrize("sequential", [False, True])
def test_delayed_resend_does_not_block_other_messages(tmp_path: Path, sequential: bool) -> None:
    """#9: ResendException(delay=1.0) holds that message back about a second while the 30
    messages behind it are handled at once; it is then handled, and its first delivery is
    acknowledged only after the resend went out."""
    s = _Setup(tmp_path, sequential=sequential, max_chunk_size=10)

    @s.app.queue_consumer(queue_name="q", config=s.config, dead_letter=s.dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        s.ledger.write("start", message.payload.id, message.rw_resend_times)
        if message.payload.id == "slow" and message.rw_resend_times == 0:
            raise romeways.ResendException(delay=1.0)
        s.ledger.write("done", message.payload.id, message.rw_resend_times)

    goods = make_ids("g", 30)
    s.put("slow", *goods)

    async def scenario() -> None:
        task = start(s.app)
        await wait_until("slow handled", lambda: "slow" in s.done(), 5, task)
        await stop(s.app, task, 3.0)

    asyncio.run(scenario())
    ledger = s.ledger
    starts = [r for r in ledger.records("start") if r.id == "slow"]
    assert [r.attempt for r in starts] == [0, 1]
    last_good = max(r.t for r in ledger.records("done") if r.id in goods)
    assert last_good - starts[0].t < 0.7, "the delayed resend held up the other messages"
    assert 0.95 <= starts[1].t - starts[0].t < 2.5, "the resend was not delayed by ~1 s"
    tally = ledger.tally([*goods, "slow"])
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    order = [r.event for r in ledger.records() if r.id == "slow" and r.event in ("resend", "ack")]
    assert order == ["resend", "ack", "ack"], order
    assert s.letters == []


def test_delayed_resend_pending_at_shutdown_is_sent_not_lost(tmp_path: Path) -> None:
    """#9: a worker stopped while a ResendException(delay=5) is pending does not wait for the
    delay: the resend goes out at once (then is acknowledged), and a new consumer of the queue
    gets the message with its counter raised. (A SIGKILLed memory worker loses it: at-most-once;
    the Kafka variant covers that case.)"""
    s = _Setup(tmp_path, max_chunk_size=10, shutdown_timeout=3.0)

    @s.app.queue_consumer(queue_name="q", config=s.config, dead_letter=s.dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        s.ledger.write("start", message.payload.id, message.rw_resend_times)
        if message.rw_resend_times == 0:
            raise romeways.ResendException(delay=5.0)
        s.ledger.write("done", message.payload.id, message.rw_resend_times)

    s.put("later")

    async def first() -> float:
        task = start(s.app)
        await wait_until("first attempt", lambda: "later" in s.ledger.ids("start"), 5, task)
        await asyncio.sleep(0.2)
        return await stop(s.app, task, 3.0)

    took = asyncio.run(first())
    assert took < 1.5, "shutdown waited for the resend delay"
    assert [r.event for r in s.ledger.records() if r.event in ("resend", "ack")] == [
        "resend",
        "ack",
    ]
    assert s.ledger.ids("done") == {}
    envelope = msgspec.json.decode(s.queue.get(timeout=2))
    assert envelope == {"payload": {"id": "later", "pad": ""}, "rw_resend_times": 1}
    s.queue.put(msgspec.json.encode(envelope))

    async def second() -> None:
        task = start(s.app)
        await wait_until("handled by the next run", lambda: "later" in s.done(), 5, task)
        await stop(s.app, task, 3.0)

    asyncio.run(second())
    assert [r.attempt for r in s.ledger.records("done")] == [1]


# ------------------------------------------ 10: CancelledError from a handler, in-process


def test_cancelled_error_from_a_handler_in_process_is_not_swallowed(tmp_path: Path) -> None:
    """#10 (spawn_process=False): a handler raising CancelledError stops its worker and
    ``start()`` raises CancelledError instead of returning as if stopped; the message is not
    acknowledged nor dead-lettered, and what finished before it is acknowledged."""
    s = _Setup(tmp_path, sequential=True, max_chunk_size=10)

    @s.app.queue_consumer(queue_name="q", config=s.config, dead_letter=s.dead_letter)
    async def handle(message: romeways.Message[Item]) -> None:
        if message.payload.id == "boom":
            raise asyncio.CancelledError
        s.ledger.write("done", message.payload.id)

    goods = make_ids("g", 3)
    s.put(*goods, "boom")

    async def scenario() -> None:
        task = start(s.app)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        assert task.cancelled() or task.done()

    asyncio.run(scenario())
    acked = set(s.ledger.ids("ack"))
    assert "boom" not in acked and s.letters == []
    assert acked == set(goods) == s.done()
