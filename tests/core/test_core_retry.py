"""Retry backoff and retry_on: the delays, the resend budget, the context and the logs."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from _core_helpers import Feed, run_until, scripted_app

import romeways


def test_backoff_doubles_up_to_the_cap() -> None:
    backoff = romeways.RetryBackoff(first=1.0, factor=2.0, maximum=10.0, jitter=0.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(10_000) == 10.0  # no overflow far past the cap


def test_backoff_defaults_and_jitter_only_shortens() -> None:
    backoff = romeways.RetryBackoff()
    assert (backoff.first, backoff.factor, backoff.maximum, backoff.jitter) == (1, 2, 60, 0.2)
    delays = [backoff.delay(3) for _ in range(300)]
    assert all(4.0 * 0.8 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100  # spread, so messages that failed together come back apart


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"first": -1.0}, "RetryBackoff.first=-1.0"),
        ({"factor": 0.5}, "RetryBackoff.factor=0.5"),
        ({"first": 5.0, "maximum": 1.0}, "RetryBackoff.maximum=1.0"),
        ({"jitter": 1.5}, "RetryBackoff.jitter=1.5"),
        ({"first": float("nan")}, "RetryBackoff.first=nan"),
        ({"first": "1"}, "RetryBackoff.first='1'"),
    ],
)
def test_backoff_refuses_bad_fields(fields: dict[str, object], named: str) -> None:
    with pytest.raises(romeways.ConfigError, match=named.replace(".", r"\.")):
        romeways.RetryBackoff(**fields)  # type: ignore[arg-type]  # bad values on purpose


def test_retry_on_must_list_exception_types() -> None:
    feed = Feed()
    with pytest.raises(romeways.ConfigError, match=r"ScriptedQueueConfig\.retry_on"):
        scripted_app(feed, retry_on=(int,))
    with pytest.raises(romeways.ConfigError, match=r"retry_on"):
        scripted_app(feed, retry_on=(TimeoutError(),))


def test_retry_on_resends_with_backoff_then_dead_letters_with_the_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    feed = Feed([b"flaky", b"broken"])
    backoff = romeways.RetryBackoff(first=0.1, factor=2.0, maximum=1.0, jitter=0.0)
    app, config = scripted_app(
        feed, retries=2, retry_on=(TimeoutError,), retry_backoff=backoff, max_chunk_size=1
    )
    seen: list[tuple[str, int, float]] = []
    letters: list[romeways.DeadLetter] = []
    delays: list[float | None] = []

    class Delays(romeways.Middleware):
        async def after(
            self, ctx: romeways.MessageContext, result: romeways.HandlingResult
        ) -> None:
            delays.append(ctx.resend_delay)

    app.add_middleware(Delays())

    async def dead_letter(letter: romeways.DeadLetter) -> None:
        letters.append(letter)

    @app.queue_consumer(queue_name="q", config=config, dead_letter=dead_letter)
    async def handler(message: romeways.Message[str]) -> None:
        seen.append((message.payload, message.rw_resend_times, time.monotonic()))
        if message.payload == "flaky":
            raise TimeoutError("downstream slow")
        raise ValueError("not retried")

    with caplog.at_level(logging.INFO, logger="romeways"):
        asyncio.run(run_until(app, lambda: len(letters) == 2))
    flaky = [at for payload, _, at in seen if payload == "flaky"]
    assert [t for p, t, _ in seen if p == "flaky"] == [0, 1, 2]
    assert [t for p, t, _ in seen if p == "broken"] == [0]  # not in retry_on: at once
    assert flaky[1] - flaky[0] >= 0.1 * 0.9
    assert flaky[2] - flaky[1] >= 0.2 * 0.9
    assert sorted(delays, key=lambda d: -1 if d is None else d) == [None, None, 0.1, 0.2]
    reasons = {letter.data: letter.reason for letter in letters}
    assert reasons[b"broken"] == "handler raised ValueError: not retried"
    spent = next(r for d, r in reasons.items() if d != b"broken")
    assert spent == (
        "handler raised TimeoutError: downstream slow, and the 2 resend(s) allowed are spent"
    )
    logged = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert any(
        "after attempt 1 of 3 (handler raised TimeoutError" in m and "attempt 2 in 0.10s" in m
        for m in logged
    )
    assert any("attempt 2 of 3" in m and "attempt 3 in 0.20s" in m for m in logged)


def test_resend_without_delay_takes_the_backoff_and_an_explicit_delay_wins() -> None:
    feed = Feed([b"x"])
    backoff = romeways.RetryBackoff(first=0.3, jitter=0.0)
    app, config = scripted_app(feed, retries=2, retry_backoff=backoff)
    seen: list[tuple[int, float]] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message[str]) -> None:
        seen.append((message.rw_resend_times, time.monotonic()))
        if message.rw_resend_times == 0:
            raise romeways.ResendException()  # the queue's backoff: 0.3 s
        if message.rw_resend_times == 1:
            raise romeways.ResendException(delay=0)  # explicit: at once

    asyncio.run(run_until(app, lambda: len(seen) == 3))
    (_, first), (_, second), (_, third) = seen
    assert second - first >= 0.3 * 0.9
    assert third - second < 0.25


def test_handler_timeout_resends_with_the_backoff() -> None:
    feed = Feed([b"slow"])
    backoff = romeways.RetryBackoff(first=0.3, jitter=0.0)
    app, config = scripted_app(feed, retries=1, retry_backoff=backoff, handler_timeout=0.05)
    seen: list[float] = []

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message[str]) -> None:
        seen.append(time.monotonic())
        if message.rw_resend_times == 0:
            await asyncio.sleep(5)

    asyncio.run(run_until(app, lambda: len(seen) == 2))
    assert seen[1] - seen[0] >= 0.05 + 0.3 * 0.9


def test_resend_exception_delay_defaults_to_none() -> None:
    assert romeways.ResendException().delay is None
    with pytest.raises(romeways.ConfigError, match="retry_backoff"):
        romeways.ResendException(delay=float("inf"))
