"""Messages that cannot be handled are dead-lettered with a log naming handler, queue, connector
and reason (never the payload), and the worker goes on with the next messages."""

from __future__ import annotations

import asyncio
import logging
from multiprocessing import Queue
from typing import Any

import msgspec
import pytest
from _core_helpers import Feed, run_until, scripted_app

import romeways

SECRET = "SECRET-PAYLOAD-7f3a"


class Order(msgspec.Struct, frozen=True):
    id: int
    item: str


def memory_app(
    queue: Queue[Any], **options: Any
) -> tuple[romeways.App, romeways.MemoryQueueConfig]:
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem-dl"),
    )
    return app, romeways.MemoryQueueConfig(
        connector_name="mem-dl", queue=queue, frequency=0.1, **options
    )


def romeways_log(caplog: pytest.LogCaptureFixture) -> str:
    """Every romeways record, message and traceback, as one text."""
    parts = []
    for record in caplog.records:
        if record.name == "romeways":
            parts.append(record.getMessage())
            if record.exc_info:
                parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def dead_letter_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "dead-lettered" in r.getMessage()]


def check_dead_letter_log(
    caplog: pytest.LogCaptureFixture, handler: Any, reason: str, count: int = 1
) -> None:
    records = dead_letter_records(caplog)
    assert len(records) == count
    for record in records:
        assert record.levelno == logging.ERROR
        text = record.getMessage()
        assert handler.__qualname__ in text
        assert "'q.dl'" in text
        assert "'mem-dl'" in text
        assert reason in text
        assert getattr(record, "queue", None) == "q.dl"
        assert getattr(record, "connector", None) == "mem-dl"
    assert SECRET not in romeways_log(caplog)


def test_non_utf8_bytes_are_dead_lettered_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="romeways")
    queue: Queue[Any] = Queue()
    bad = SECRET.encode() + b"\xff\xfe"
    for item in (b"first", bad, b"after"):
        queue.put(item)
    app, config = memory_app(queue, sequential=True)
    handled: list[str] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q.dl", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        handled.append(message.payload)

    asyncio.run(run_until(app, lambda: len(handled) == 2 and len(letters) == 1))
    assert handled == ["first", "after"]
    (letter,) = letters
    assert letter.data == bad
    assert letter.resend_times == 0
    assert "UnicodeDecodeError" in letter.reason
    check_dead_letter_log(caplog, handler, "cannot decode the message: UnicodeDecodeError")


def test_json_failing_the_typed_payload_is_dead_lettered(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="romeways")
    queue: Queue[Any] = Queue()
    wrong_type = msgspec.json.encode({"id": SECRET, "item": "x"})
    missing_field = msgspec.json.encode({"id": 2})
    not_json = f"not json {SECRET}".encode()
    bad_envelope = msgspec.json.encode({"payload": {"id": SECRET}, "rw_resend_times": 1})
    for item in (b'{"id": 1, "item": "a"}', wrong_type, missing_field, not_json, bad_envelope):
        queue.put(item)
    queue.put(b'{"id": 3, "item": "c"}')
    app, config = memory_app(queue)
    handled: list[Order] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q.dl", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message[Order]) -> None:
        assert isinstance(message.payload, Order)
        handled.append(message.payload)

    asyncio.run(run_until(app, lambda: len(handled) == 2 and len(letters) == 4))
    assert sorted(o.id for o in handled) == [1, 3]
    assert sorted(letter.data for letter in letters) == sorted(
        [wrong_type, missing_field, not_json, bad_envelope]
    )
    reasons = " | ".join(letter.reason for letter in letters)
    assert "ValidationError" in reasons and "DecodeError" in reasons
    assert "$.id" in reasons
    check_dead_letter_log(caplog, handler, "cannot decode the message", count=4)


def test_failing_handler_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="romeways")
    queue: Queue[Any] = Queue()
    for item in ("ok-1", SECRET, "ok-2", SECRET, "ok-3"):
        queue.put(item)
    app, config = memory_app(queue, sequential=True, retries=5)
    handled: list[str] = []
    attempts: list[str] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q.dl", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        attempts.append(message.payload)
        if message.payload == SECRET:
            raise RuntimeError("the database said no")
        handled.append(message.payload)

    asyncio.run(run_until(app, lambda: len(handled) == 3 and len(letters) == 2))
    assert handled == ["ok-1", "ok-2", "ok-3"]
    # Any exception other than ResendException is not retried.
    assert attempts.count(SECRET) == 2
    for letter in letters:
        assert letter.data == SECRET.encode()
        assert letter.reason == "handler raised RuntimeError: the database said no"
    check_dead_letter_log(caplog, handler, "RuntimeError: the database said no", count=2)
    failures = [r for r in caplog.records if "failed: RuntimeError" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None for r in failures)


def test_failing_dead_letter_hook_is_logged_and_the_worker_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="romeways")
    feed = Feed([b"bad", b"good"])
    app, config = scripted_app(feed, sequential=True)
    handled: list[str] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        raise OSError("dead-letter store down")

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "bad":
            raise ValueError("bad message")
        handled.append(message.payload)

    asyncio.run(run_until(app, lambda: handled == ["good"] and feed.acked == [0, 1]))
    assert "the dead-letter hook of queue 'q' failed: OSError" in romeways_log(caplog)


def test_handler_raising_its_own_timeout_error_is_not_retried() -> None:
    """A TimeoutError from the handler's own code is a failure like any other: with no
    handler_timeout configured there is nothing to retry."""
    feed = Feed([b"m"])
    app, config = scripted_app(feed, retries=3)
    attempts: list[int] = []
    letters: list[romeways.DeadLetter] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        attempts.append(message.rw_resend_times)
        raise TimeoutError("upstream HTTP call timed out")

    asyncio.run(run_until(app, lambda: bool(letters)))
    assert attempts == [0]
    assert letters[0].reason == "handler raised TimeoutError: upstream HTTP call timed out"


def test_describe_never_raises() -> None:
    """What the failure path says of an exception: ``Type: text``, just ``Type`` without text,
    and ``<unprintable Type>`` when its ``__str__`` raises or returns no str."""
    from romeways._worker import describe

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    class NotText(Exception):
        def __str__(self) -> str:
            return 42  # type: ignore[return-value]  # the point: a __str__ that breaks str()

    assert describe(RuntimeError("the database said no")) == "RuntimeError: the database said no"
    assert describe(RuntimeError()) == "RuntimeError"
    assert describe(Unprintable()) == "<unprintable Unprintable>"
    assert describe(NotText()) == "<unprintable NotText>"


def test_hook_raising_its_own_timeout_error_is_a_hook_failure_and_the_message_finished(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the dead_letter_timeout deadline leaves a message unfinished: a TimeoutError the
    hook raises itself is logged as a hook failure and the message is acknowledged."""
    caplog.set_level(logging.DEBUG, logger="romeways")
    feed = Feed([b"bad", b"good"])
    app, config = scripted_app(feed, sequential=True, dead_letter_timeout=5.0)
    handled: list[str] = []

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        raise TimeoutError("the dead-letter store timed out")

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message) -> None:
        if message.payload == "bad":
            raise ValueError("bad message")
        handled.append(message.payload)

    asyncio.run(run_until(app, lambda: handled == ["good"] and feed.acked == [0, 1]))
    text = romeways_log(caplog)
    assert "the dead-letter hook of queue 'q' failed: TimeoutError" in text
    assert "did not return within dead_letter_timeout" not in text
