"""Dead-letter queues: what a dead letter carries, at-least-once publishing, the checks at
start, and the replay (function and command)."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
from _core_helpers import (
    Feed,
    ScriptedConnector,
    ScriptedConnectorConfig,
    ScriptedQueueConfig,
    run_until,
    scripted_app,
)

import romeways
from romeways._cli import main


class RefusingConnector(ScriptedConnector):
    """Takes no message: every publish to it fails."""

    async def send_messages(self, message: bytes) -> None:
        raise ConnectionError("dead-letter queue unreachable")


def dlq_app(
    feed: Feed, dlq: Feed, **options: object
) -> tuple[romeways.App, ScriptedQueueConfig, ScriptedQueueConfig]:
    app, config = scripted_app(feed, **options)  # type: ignore[arg-type]  # test options
    return app, config, ScriptedQueueConfig(connector_name="scripted", feed=dlq, frequency=0.05)


def test_a_dead_letter_goes_to_the_queue_in_an_envelope_and_the_original_is_acked_after() -> None:
    feed, dlq = Feed([b"ok", b"bad"]), Feed()
    app, config, dlq_config = dlq_app(feed, dlq, sequential=True)
    target = romeways.DeadLetterQueue(queue_name="q.dlq", config=dlq_config)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=target)
    async def handler(message: romeways.Message[str]) -> None:
        if message.payload == "bad":
            raise KeyError("no such order")

    asyncio.run(run_until(app, lambda: feed.acked == [0, 1]))
    (sent,) = dlq.pending  # the scripted connector carries no headers: an envelope
    envelope = msgspec.json.decode(sent, type=romeways.DeadLetterEnvelope)
    assert envelope.data == b"bad"
    info = envelope.rw_dead_letter
    assert (info.queue_name, info.connector_name, info.attempts) == ("q", "scripted", 1)
    assert info.exception_type == "KeyError"
    assert info.handler.endswith("handler")
    assert info.reason == "handler raised KeyError: 'no such order'"
    assert info.failed_at > 0


def test_a_failed_dead_letter_publish_leaves_the_original_unacknowledged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = Feed([b"bad", b"ok"])
    app, config = scripted_app(feed, sequential=True)
    app.connector_register(
        connector=RefusingConnector,
        config=ScriptedConnectorConfig(connector_name="broken"),
    )
    target = romeways.DeadLetterQueue(
        queue_name="q.dlq", config=ScriptedQueueConfig(connector_name="broken", feed=Feed())
    )
    handled: list[str] = []

    @app.queue_consumer(queue_name="q", config=config, dead_letter=target)
    async def handler(message: romeways.Message[str]) -> None:
        handled.append(message.payload)
        if message.payload == "bad":
            raise ValueError("poison")

    with caplog.at_level(logging.ERROR, logger="romeways"):
        asyncio.run(run_until(app, lambda: handled == ["bad", "ok"] and feed.acked == [1]))
    assert feed.acked == [1]  # "bad" (delivery 0) is not acknowledged: it comes again
    assert any(
        "publishing the dead letter to queue 'q.dlq'" in r.getMessage()
        and "ConnectionError: dead-letter queue unreachable" in r.getMessage()
        and "stays unacknowledged" in r.getMessage()
        for r in caplog.records
    )


def test_a_dead_letter_publish_that_hangs_is_cut_off_by_dead_letter_timeout() -> None:
    class Hanging(ScriptedConnector):
        async def send_messages(self, message: bytes) -> None:
            await asyncio.sleep(60)

    feed = Feed([b"bad"])
    app, config = scripted_app(feed, dead_letter_timeout=0.2)
    app.connector_register(
        connector=Hanging,
        config=ScriptedConnectorConfig(connector_name="slow"),
    )
    target = romeways.DeadLetterQueue(
        queue_name="q.dlq", config=ScriptedQueueConfig(connector_name="slow", feed=Feed())
    )
    tried: list[int] = []

    @app.queue_consumer(queue_name="q", config=config, dead_letter=target)
    async def handler(message: romeways.Message[str]) -> None:
        tried.append(1)
        raise ValueError("poison")

    asyncio.run(run_until(app, lambda: bool(tried) and len(feed.requested) > 3))
    assert feed.acked == []


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (romeways.DeadLetterQueue(queue_name="q"), "is the queue itself"),
        (
            romeways.DeadLetterQueue(
                queue_name="q.dlq", config=ScriptedQueueConfig(connector_name="nope", feed=Feed())
            ),
            "connector 'nope', which was never registered",
        ),
    ],
)
def test_start_refuses_a_dead_letter_queue_that_cannot_work(
    target: romeways.DeadLetterQueue, error: str
) -> None:
    app, config = scripted_app(Feed())

    @app.queue_consumer(queue_name="q", config=config, dead_letter=target)
    async def handler(message: romeways.Message[str]) -> None: ...

    with pytest.raises(romeways.RegistrationError, match=error):
        app.check()


def test_a_memory_queue_needs_a_dead_letter_queue_of_its_own() -> None:
    import multiprocessing

    app = romeways.App()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=multiprocessing.Queue())

    @app.queue_consumer(
        queue_name="orders", config=config, dead_letter=romeways.DeadLetterQueue(queue_name="dlq")
    )
    async def handler(message: romeways.Message[str]) -> None: ...

    with pytest.raises(romeways.RegistrationError, match=r"needs its own config"):
        app.check()


def test_registration_checks_the_dead_letter_queue_fields() -> None:
    app, config = scripted_app(Feed())
    with pytest.raises(romeways.RegistrationError, match=r"DeadLetterQueue\.queue_name"):
        app.queue_consumer(
            queue_name="q", config=config, dead_letter=romeways.DeadLetterQueue(queue_name="")
        )
    with pytest.raises(romeways.RegistrationError, match=r"DeadLetterQueue\.config is a str"):
        app.queue_consumer(
            queue_name="q",
            config=config,
            dead_letter=romeways.DeadLetterQueue(queue_name="d", config="x"),  # type: ignore[arg-type]  # wrong on purpose
        )


def test_dead_letter_info_reads_the_headers_and_is_none_elsewhere() -> None:
    info = romeways.DeadLetterInfo(
        reason="handler raised ValueError: two\nlines",
        queue_name="orders",
        connector_name="kafka",
        handler="app.handle",
        attempts=4,
        exception_type="ValueError",
        failed_at=1.5,
    )
    headers = info.headers()
    assert all(name.startswith("romeways-dlq-") for name, _ in headers)
    assert (b"\n" not in value for _, value in headers)
    back = romeways.DeadLetterInfo.from_headers([("other", b"x"), *headers])
    assert back == msgspec.structs.replace(info, reason="handler raised ValueError: two lines")
    assert romeways.DeadLetterInfo.from_headers([("other", b"x")]) is None
    assert romeways.dead_letter_info() is None  # outside a handler


def test_replay_puts_dead_letters_back_fresh_and_acks_them() -> None:
    feed, dlq = Feed(), Feed()
    app, config, dlq_config = dlq_app(feed, dlq)

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message[str]) -> None: ...

    def dead(data: bytes, queue: str = "q") -> bytes:
        info = romeways.DeadLetterInfo(
            reason="r", queue_name=queue, connector_name="scripted", handler="h", attempts=3
        )
        return msgspec.json.encode(romeways.DeadLetterEnvelope(rw_dead_letter=info, data=data))

    resent = romeways.Message(payload="a", rw_resend_times=3).to_json()
    dlq.pending.extend([dead(resent), dead(b"b"), b"not a dead letter", dead(b"c", "elsewhere")])
    result = asyncio.run(romeways.replay_dead_letters(app, "q.dlq", config=dlq_config))
    assert result == romeways.ReplayResult(replayed=2, skipped=2)
    assert list(feed.pending) == [b"a", b"b"]  # resend counter back to 0: a fresh message
    assert dlq.acked == [0, 1]


def test_replay_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = tmp_path / "replay_app.py"
    module.write_text(
        textwrap.dedent(
            """
            import multiprocessing
            import msgspec
            import romeways

            source = multiprocessing.Queue()
            dead = multiprocessing.Queue()
            info = romeways.DeadLetterInfo(
                reason="r", queue_name="orders", connector_name="mem", handler="h", attempts=1
            )
            for data in (b"one", b"two", b"three"):
                envelope = romeways.DeadLetterEnvelope(rw_dead_letter=info, data=data)
                dead.put(msgspec.json.encode(envelope))
            app = romeways.App()
            app.connector_register(
                connector=romeways.MemoryQueueConnector,
                config=romeways.MemoryConnectorConfig(connector_name="mem"),
            )
            dlq = romeways.MemoryQueueConfig(connector_name="mem", queue=dead, frequency=0.1)

            @app.queue_consumer(
                queue_name="orders",
                config=romeways.MemoryQueueConfig(connector_name="mem", queue=source),
                dead_letter=romeways.DeadLetterQueue(queue_name="orders.dlq", config=dlq),
            )
            async def orders(message: romeways.Message[str]) -> None: ...

            @app.queue_consumer(queue_name="orders.dlq", config=dlq)
            async def dead_letters(
                message: romeways.Message[romeways.DeadLetterEnvelope],
            ) -> None: ...
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["replay", "replay_app:app", "orders.dlq", "--limit", "2"]) == 0
    assert "replayed 2 dead letter(s) from 'orders.dlq'; 0 left on it" in capsys.readouterr().out
    replay_app = sys.modules["replay_app"]
    assert [replay_app.source.get(timeout=2) for _ in range(2)] == [b"one", b"two"]
    assert main(["replay", "replay_app:app", "nowhere"]) == 2
    assert "no consumer(s) of it" in capsys.readouterr().err
