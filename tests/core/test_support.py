"""romeways.connectors.support: the plumbing connectors share, on real sockets and loggers."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec

import pytest

import romeways
from romeways.connectors.support import (
    STARTUP_BACKOFF,
    Backoff,
    DeliveryLedger,
    OutageLog,
    SingleFlight,
    describe_exception,
    redact_secrets,
    start_stopping,
    start_with_retry,
    tls_context,
    wait_stopped,
)

P = ParamSpec("P")


def run(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """An async test run in its own event loop (fixtures pass through)."""

    @functools.wraps(test)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


def test_ledger_numbers_in_order_and_forgets_what_is_finished() -> None:
    ledger: DeliveryLedger[str] = DeliveryLedger()
    assert ledger.add("a") == 0
    assert ledger.add_all(["b", "c", "d"]) == range(1, 4)
    assert ledger.next_delivery == 4
    assert ledger.get(2) == "c" and 2 in ledger and len(ledger) == 4
    assert ledger.pop_all([0, 2, 9]) == ["a", "c"]  # 9 was never handed out
    assert ledger.pop(0) is None
    assert ledger.forget(lambda handle: handle != "d") == [3]
    assert list(ledger.items()) == [(1, "b")]
    ledger.clear()
    assert len(ledger) == 0 and ledger.add("e") == 4  # numbering goes on


def test_backoff_doubles_up_to_its_cap_and_never_overflows() -> None:
    backoff = Backoff(initial=0.5, maximum=10.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]
    assert backoff.delay(100_000) == 10.0
    assert STARTUP_BACKOFF.delay(1) == 0.5 and STARTUP_BACKOFF.delay(50) == 10.0
    jittered = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    delays = [jittered.delay(3) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays) and len(set(delays)) > 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("initial", -1.0), ("maximum", float("nan")), ("factor", 0.5), ("jitter", 2.0)],
)
def test_backoff_refuses_values_that_cannot_work(field: str, value: float) -> None:
    with pytest.raises(romeways.ConfigError, match=f"Backoff.{field}="):
        Backoff(**{field: value})


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")


def test_describe_exception_never_raises() -> None:
    assert describe_exception(ValueError("bad")) == "ValueError: bad"
    assert describe_exception(KeyError()) == "KeyError"
    assert describe_exception(TimeoutError()) == "timed out"
    assert describe_exception(_Unprintable()).startswith("_Unprintable (its message could not")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@run
async def test_start_with_retry_waits_for_a_server_that_comes_up_late(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    attempts = 0

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        nonlocal attempts
        attempts += 1
        return await asyncio.open_connection("127.0.0.1", port)

    async def serve_later() -> asyncio.Server:
        await asyncio.sleep(0.4)
        return await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)

    server_task = asyncio.create_task(serve_later())
    backoff = Backoff(initial=0.1, maximum=0.2)
    with caplog.at_level(logging.WARNING, "romeways"):
        _, writer = await start_with_retry(
            connect,
            timeout=5.0,
            retriable=(OSError,),
            where="test connector",
            target=f"127.0.0.1:{port}",
            backoff=backoff,
        )
    writer.close()
    server = await server_task
    server.close()
    await server.wait_closed()
    assert attempts >= 2
    assert "test connector cannot reach 127.0.0.1:" in caplog.text


@run
async def test_start_with_retry_gives_up_at_its_deadline_with_the_last_error() -> None:
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(romeways.ConnectorError) as info:
        await start_with_retry(
            lambda: asyncio.open_connection("127.0.0.1", port),
            timeout=0.6,
            retriable=(OSError,),
            where="test connector",
            target=f"127.0.0.1:{port}",
            backoff=Backoff(initial=0.1, maximum=0.1),
        )
    assert time.monotonic() - started < 2.0
    text = str(info.value)
    assert "could not reach 127.0.0.1:" in text and "startup_timeout=0.6s" in text
    assert "ConnectionRefusedError" in text
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


@run
async def test_start_with_retry_does_not_retry_other_errors() -> None:
    attempts = 0

    async def refuse() -> None:
        nonlocal attempts
        attempts += 1
        raise PermissionError("authentication failed")

    with pytest.raises(PermissionError):
        await start_with_retry(
            refuse, timeout=5.0, retriable=(ConnectionError,), where="w", target="t"
        )
    assert attempts == 1


def test_outage_log_says_each_thing_once(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog("connector 'c'", "the server at 127.0.0.1:1", interval=3600)
    with caplog.at_level(logging.WARNING, "romeways"):
        log.back()  # in contact: nothing to say
        for _ in range(5):
            log.lost(ConnectionResetError("reset"))
        assert log.since is not None
        log.back()
        log.back()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "lost contact with the server at 127.0.0.1:1: ConnectionResetError: reset" in lines[0]
    assert "reached the server at 127.0.0.1:1 again" in lines[1]
    assert log.since is None


@run
async def test_single_flight_coalesces_requests_and_survives_a_failing_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs = 0
    gate = asyncio.Event()

    async def job() -> None:
        nonlocal runs
        runs += 1
        await gate.wait()
        if runs == 1:
            raise OSError("broker away")

    flight = SingleFlight(job, where="connector 'c'", what="commit")
    with caplog.at_level(logging.WARNING, "romeways"):
        for _ in range(3):
            flight.request()  # before the run starts: it covers these
        await asyncio.sleep(0)
        assert (flight.running, runs) == (True, 1)
        for _ in range(9):
            flight.request()  # during the run: one more run covers all nine
        gate.set()
        assert await flight.wait(timeout=2.0)
    assert runs == 2
    assert not flight.running
    assert "connector 'c' could not commit: OSError: broker away" in caplog.text


@run
async def test_single_flight_wait_is_bounded() -> None:
    async def hang() -> None:
        await asyncio.sleep(30)

    flight = SingleFlight(hang, where="w", what="hang")
    flight.request()
    started = time.monotonic()
    assert not await flight.wait(timeout=0.2)
    assert time.monotonic() - started < 1.0


def test_redact_secrets_in_a_libraries_log_records(caplog: pytest.LogCaptureFixture) -> None:
    secret = "canary-s3cr3t-\u00e9"
    redact_secrets([secret, None], ["romeways.test.client"])
    log = logging.getLogger("romeways.test.client")
    with caplog.at_level(logging.DEBUG, "romeways.test.client"):
        log.debug("sending %r and %s", secret.encode(), secret)
    assert caplog.records and "canary" not in caplog.text
    assert "***" in caplog.text


def test_tls_context_checks_the_server_and_reports_missing_files(tmp_path: Path) -> None:
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(OSError):
        tls_context(cafile=str(tmp_path / "missing-ca.pem"))


def test_outage_log_names_the_address_while_away_and_not_once_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = OutageLog("connector 'c'", "the cluster", address="127.0.0.1:1", interval=0)
    with caplog.at_level(logging.WARNING, "romeways"):
        log.lost(ConnectionResetError("reset"))
        log.lost(TimeoutError())  # interval 0: said again at once
        log.back()
    lines = [r.getMessage() for r in caplog.records]
    assert "lost contact with the cluster at 127.0.0.1:1: ConnectionResetError" in lines[0]
    assert "still cannot reach the cluster at 127.0.0.1:1 after 0s: timed out" in lines[1]
    assert "connector 'c' reached the cluster again after" in lines[2]


@run
async def test_single_flight_cancel_ends_the_run_and_lets_a_new_one_start() -> None:
    runs = 0
    gate = asyncio.Event()

    async def job() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            await asyncio.sleep(30)  # hangs, as a commit to a broker that is gone
        await gate.wait()

    flight = SingleFlight(job, where="w", what="commit")
    flight.request()
    await asyncio.sleep(0)
    flight.request()  # would run again after the hanging one
    flight.cancel()
    assert not flight.running
    await asyncio.sleep(0.01)  # the cancelled run ends; it must not clear the next one
    flight.request()
    await asyncio.sleep(0)
    assert (flight.running, runs) == (True, 2)
    gate.set()
    assert await flight.wait(timeout=2.0)
    assert runs == 2  # the request made before cancel() died with the cancelled run


@run
async def test_start_with_retry_after_failure_runs_outside_the_attempt_time_limit() -> None:
    """``after_failure`` cleans up after each retriable failure even past the deadline, so the
    error still names the last failure; raising from it stops retrying at once."""
    seen: list[str] = []

    async def refuse() -> None:
        raise ConnectionRefusedError("refused")

    async def slow_cleanup(exc: BaseException) -> None:
        seen.append(type(exc).__name__)
        await asyncio.sleep(0.4)  # past the 0.3 s deadline

    with pytest.raises(romeways.ConnectorError) as info:
        await start_with_retry(
            refuse,
            timeout=0.3,
            retriable=(OSError,),
            where="w",
            target="t",
            after_failure=slow_cleanup,
        )
    assert seen == ["ConnectionRefusedError"]
    assert "last: ConnectionRefusedError: refused" in str(info.value)

    async def diagnose(exc: BaseException) -> None:
        raise PermissionError("the login was refused") from exc

    attempts = 0

    async def counted() -> None:
        nonlocal attempts
        attempts += 1
        await refuse()

    with pytest.raises(PermissionError):
        await start_with_retry(
            counted,
            timeout=5.0,
            retriable=(OSError,),
            where="w",
            target="t",
            after_failure=diagnose,
        )
    assert attempts == 1


def test_redact_secrets_skips_values_that_are_not_text(caplog: pytest.LogCaptureFixture) -> None:
    redact_secrets([b"bytes-secret", 12345, "", "text-s3cret-9"], ["romeways.test.other"])
    log = logging.getLogger("romeways.test.other")
    with caplog.at_level(logging.DEBUG, "romeways.test.other"):
        log.debug("sending %s", "text-s3cret-9")
    assert "text-s3cret-9" not in caplog.text and "***" in caplog.text


def test_the_worker_and_the_supervisor_back_off_as_before() -> None:
    """One Backoff for all: a failed fetch waits min(5, 0.1 * 2**n) s, a crashed worker
    process min(10, 0.5 * 2**(n - 1)) s, Kafka's start-up retries min(10, 0.5 * 2**(n - 1))."""
    from romeways._runner import _RESTART_BACKOFF
    from romeways._worker import _FETCH_BACKOFF

    for n in range(1, 12):
        assert _FETCH_BACKOFF.delay(n) == pytest.approx(min(5.0, 0.1 * 2**n))
        assert _RESTART_BACKOFF.delay(n) == pytest.approx(min(10.0, 0.5 * 2 ** (n - 1)))
        assert STARTUP_BACKOFF.delay(n) == pytest.approx(min(10.0, 0.5 * 2 ** (n - 1)))


@run
async def test_stops_run_to_their_end_past_the_deadline_and_failures_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stop that outlives the deadline is not cut short (it ends in the background); one that
    fails, and one that leaks a cancellation of its own, are logged naming the client."""
    ended: list[str] = []

    async def slow() -> None:
        await asyncio.sleep(0.3)
        ended.append("slow")

    async def failing() -> None:
        raise OSError("connection reset")

    async def leaking() -> None:
        raise asyncio.CancelledError  # as a client whose own task was cancelled

    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.WARNING, "romeways"):
        tasks = start_stopping(
            [("consumer", slow), ("producer", failing), ("pool", leaking)], where="conn 'c'"
        )
        started = time.monotonic()
        assert not await wait_stopped(tasks, loop.time() + 0.1, where="conn 'c'")
        assert time.monotonic() - started < 0.25 and ended == []
        await asyncio.sleep(0.4)
    assert ended == ["slow"]  # finished in the background
    text = caplog.text
    assert "conn 'c': stopping the producer failed: OSError: connection reset" in text
    assert "conn 'c': stopping the pool was interrupted" in text
    assert "conn 'c': 1 client(s) did not stop by the deadline" in text
    assert await wait_stopped([], loop.time(), where=None)
