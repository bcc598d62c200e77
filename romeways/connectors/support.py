"""What every connector needs besides its client library, so that a connector is mostly calls to it.

- ``DeliveryLedger``: the delivery numbers the worker uses, mapped to the backend's handles.
- ``Backoff``: the one backoff policy (exponential, capped, optional jitter) of romeways.
- ``start_with_retry``: connect with backoff until a deadline, then a ``ConnectorError``.
- ``OutageLog``: "lost contact", "still cannot reach", "reached again", each said once.
- ``SingleFlight``: a background job (a commit, an ack flush) with at most one run in flight.
- ``start_stopping``/``wait_stopped``: stop clients by a deadline, never cutting a stop short.
- ``describe_exception``: an exception as text, even one whose ``__str__`` raises.
- ``redact_secrets``: keeps secrets out of a client library's log records.
- ``tls_context``: an ``ssl.SSLContext`` from CA, certificate and key files.
- ``worker_identity``: a consumer name stable across worker restarts, unique per host and slot.

The Kafka connector, the test kit and the contract suite use these; so can your own connector.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Final, Generic, TypeVar

import msgspec

from .._config import require
from .._errors import ConnectorError

logger = logging.getLogger("romeways")

H = TypeVar("H")
T = TypeVar("T")

__all__ = [
    "STARTUP_BACKOFF",
    "Backoff",
    "DeliveryLedger",
    "OutageLog",
    "SingleFlight",
    "describe_exception",
    "redact_secrets",
    "start_stopping",
    "start_with_retry",
    "tls_context",
    "wait_stopped",
    "worker_identity",
    "worker_slot",
]


class DeliveryLedger(Generic[H]):
    """Numbers deliveries as the worker does (from 0, in the order ``get_messages`` returned
    them) and keeps each one's backend handle (an entry id, a delivery tag, a row id) until it
    is finished, so ``resend`` and ``ack`` can find it."""

    __slots__ = ("_handles", "_next")

    def __init__(self) -> None:
        self._handles: dict[int, H] = {}
        self._next = 0

    @property
    def next_delivery(self) -> int:
        """The number the next handle added gets."""
        return self._next

    def add(self, handle: H) -> int:
        """Record one delivery; returns its number."""
        delivery = self._next
        self._handles[delivery] = handle
        self._next = delivery + 1
        return delivery

    def add_all(self, handles: Iterable[H]) -> range:
        """Record a fetched chunk in order; returns the numbers it got."""
        first = self._next
        for handle in handles:
            self._handles[self._next] = handle
            self._next += 1
        return range(first, self._next)

    def get(self, delivery: int) -> H | None:
        """The handle of an unfinished delivery, or None (finished, forgotten, never seen)."""
        return self._handles.get(delivery)

    def pop(self, delivery: int) -> H | None:
        """Forget a delivery; returns its handle, or None if it was not known."""
        return self._handles.pop(delivery, None)

    def pop_all(self, deliveries: Iterable[int]) -> list[H]:
        """Forget these deliveries; returns the handles of those that were known, in order."""
        handles = self._handles
        return [handles.pop(d) for d in deliveries if d in handles]

    def forget(self, keep: Callable[[H], bool]) -> list[int]:
        """Forget the deliveries whose handle ``keep`` refuses (a lost channel's tags, a revoked
        partition's records); returns their numbers."""
        gone = [d for d, handle in self._handles.items() if not keep(handle)]
        for delivery in gone:
            del self._handles[delivery]
        return gone

    def clear(self) -> None:
        """Forget every unfinished delivery (numbering goes on)."""
        self._handles.clear()

    def items(self) -> Iterator[tuple[int, H]]:
        """The unfinished deliveries and their handles, oldest first."""
        return iter(list(self._handles.items()))

    def __contains__(self, delivery: object) -> bool:
        return delivery in self._handles

    def __len__(self) -> int:
        return len(self._handles)


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff: ``initial`` seconds before the first retry, times ``factor`` each
    time, at most ``maximum``; with ``jitter`` (0 to 1), each delay is shortened by up to that
    fraction at random, so that many clients retrying at once spread out."""

    initial: float = 0.1
    factor: float = 2.0
    maximum: float = 5.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("initial", "maximum"):
            value = getattr(self, name)
            require(self, name, math.isfinite(value) and value >= 0, "give seconds >= 0")
        require(self, "factor", math.isfinite(self.factor) and self.factor >= 1, "give >= 1")
        require(self, "jitter", 0 <= self.jitter <= 1, "give a fraction from 0 to 1")

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        try:
            base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        except OverflowError:
            base = self.maximum
        if self.jitter:
            base *= 1.0 - self.jitter * random.random()
        return base


STARTUP_BACKOFF: Final = Backoff(initial=0.5, maximum=10.0)
"""How connectors retry reaching their backend at start-up: 0.5 s, doubling, at most 10 s."""


def describe_exception(exc: BaseException) -> str:
    """``Type: text`` of an exception for a log line or an error message; never raises, even
    for an exception whose ``__str__`` does."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except Exception:
        return f"{name} (its message could not be shown: str() of it raised)"
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


async def start_with_retry(
    start: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    retriable: tuple[type[BaseException], ...],
    where: str,
    target: str,
    backoff: Backoff = STARTUP_BACKOFF,
    hint: str = "check that the server is running and that the address and credentials are "
    "right, or raise startup_timeout",
    after_failure: Callable[[BaseException], Awaitable[object]] | None = None,
) -> T:
    """Await ``start()`` until it succeeds, retrying with ``backoff`` while it raises one of
    ``retriable`` (or takes longer than the time left), for ``timeout`` seconds in all; then a
    ConnectorError naming ``where``, ``target``, the attempts and the last error, and ``hint``.

    Any other exception from ``start()`` propagates at once: an authentication error is not
    retried. ``start`` cleans up after itself when it fails, or leaves that to
    ``after_failure``, which is awaited with the error after each retriable failure, outside
    the attempt's time limit (so a cleanup at the deadline is not cut short): it may also raise
    to stop retrying, for a failure no retry mends that the client reports as a retriable one
    (a refused login seen as a lost connection)."""
    deadline = time.monotonic() + timeout
    again: tuple[type[BaseException], ...] = (*retriable, TimeoutError)
    attempt = 0
    while True:
        attempt += 1
        try:
            return await asyncio.wait_for(start(), max(0.1, deadline - time.monotonic()))
        except again as exc:
            if after_failure is not None:
                await after_failure(exc)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConnectorError(
                    f"{where} could not reach {target} within startup_timeout={timeout:g}s "
                    f"({attempt} attempt(s); last: {describe_exception(exc)}); {hint}"
                ) from exc
            delay = min(backoff.delay(attempt), remaining)
            logger.warning(
                "%s cannot reach %s (attempt %d: %s); retrying in %.1fs, giving up in %.0fs",
                where,
                target,
                attempt,
                describe_exception(exc),
                delay,
                remaining,
            )
            await asyncio.sleep(delay)


class OutageLog:
    """Says once that a backend is unreachable, again every ``interval`` seconds while it stays
    away, and once when it is back; calls in between are free. ``target`` names the backend
    ("the Kafka cluster"), ``address`` (optional) where it was looked for: the messages about
    the outage give both, the one about its end only ``target``."""

    __slots__ = ("_logged", "address", "interval", "since", "target", "where")

    def __init__(
        self, where: str, target: str, *, address: str | None = None, interval: float = 60.0
    ) -> None:
        self.where = where
        self.target = target
        self.address = address
        self.interval = interval
        self.since: float | None = None  # monotonic time contact was lost, None while in contact
        self._logged = 0.0

    def _located(self) -> str:
        return self.target if self.address is None else f"{self.target} at {self.address}"

    def lost(self, exc: BaseException) -> None:
        """A request to the backend failed because it cannot be reached."""
        now = time.monotonic()
        if self.since is None:
            self.since = self._logged = now
            logger.warning(
                "%s lost contact with %s: %s; messages wait there and consuming resumes when "
                "it is back",
                self.where,
                self._located(),
                describe_exception(exc),
            )
        elif now - self._logged >= self.interval:
            self._logged = now
            logger.warning(
                "%s still cannot reach %s after %.0fs: %s",
                self.where,
                self._located(),
                now - self.since,
                describe_exception(exc),
            )

    def back(self) -> None:
        """A request to the backend succeeded."""
        if self.since is not None:
            logger.warning(
                "%s reached %s again after %.0fs",
                self.where,
                self.target,
                time.monotonic() - self.since,
            )
            self.since = None


class SingleFlight:
    """Runs ``job`` in the background on ``request()``: at most one run in flight, and requests
    made during a run cause one more run after it (which covers all of them). A run that
    raises is logged and does not stop later ones."""

    __slots__ = ("_again", "_job", "_task", "what", "where")

    def __init__(self, job: Callable[[], Awaitable[object]], *, where: str, what: str) -> None:
        self._job = job
        self.where = where
        self.what = what
        self._task: asyncio.Task[None] | None = None
        self._again = False

    @property
    def running(self) -> bool:
        """Whether a run is in flight."""
        return self._task is not None

    def request(self) -> None:
        """Ask for a run without waiting for it."""
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._runs())

    async def _runs(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._job()
                except Exception as exc:
                    logger.warning(
                        "%s could not %s: %s", self.where, self.what, describe_exception(exc)
                    )
                if not self._again:
                    return
        finally:
            # Cleared in the same step as the last check, so no request falls in between (and
            # not when cancel() already made way for a new run).
            if self._task is asyncio.current_task():
                self._task = None

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the runs in flight (and those asked for meanwhile) to end, at most
        ``timeout`` seconds; True when none is left."""
        task = self._task
        if task is None:
            return True
        done, _ = await asyncio.wait([task], timeout=timeout)
        return bool(done) and self._task is None

    def cancel(self) -> None:
        """Cancel the run in flight, if any (on close, once its deadline passed); requests made
        afterwards start new runs."""
        task, self._task = self._task, None
        self._again = False
        if task is not None:
            task.cancel()


# Client stops that outlived the wait for them (the server did not answer in time): kept
# referenced until they end, which the clients' own request timeouts bound.
_STOPPING: Final[set[asyncio.Task[None]]] = set()


def start_stopping(
    stops: Iterable[tuple[str, Callable[[], Awaitable[object]]]], *, where: str | None
) -> list[asyncio.Task[None]]:
    """Start each ``(name, stop)`` (``("consumer", consumer.stop)``) in a task of its own,
    never cancelled: a stop cut short would leave the client's connections and tasks behind.
    Failures are logged naming ``where`` and the client (not logged when ``where`` is None).
    Start them where a cancellation cannot prevent it (a ``finally``), then ``wait_stopped``."""
    tasks: list[asyncio.Task[None]] = []
    for name, stop in stops:
        task = asyncio.ensure_future(_stop_one(name, stop, where))
        _STOPPING.add(task)
        task.add_done_callback(_STOPPING.discard)
        tasks.append(task)
    return tasks


async def wait_stopped(
    tasks: Iterable[asyncio.Task[None]], deadline: float, *, where: str | None
) -> bool:
    """Wait for stops from ``start_stopping`` until ``deadline`` (loop time); those still
    running then go on in the background (logged, naming ``where``). True when all ended."""
    pending = list(tasks)
    if not pending:
        return True
    timeout = max(0.0, deadline - asyncio.get_running_loop().time())
    _, left = await asyncio.wait(pending, timeout=timeout)
    if left and where is not None:
        logger.warning(
            "%s: %d client(s) did not stop by the deadline (the server does not answer); "
            "they finish stopping in the background",
            where,
            len(left),
        )
    return not left


async def _stop_one(name: str, stop: Callable[[], Awaitable[object]], where: str | None) -> None:
    try:
        await stop()
    except asyncio.CancelledError as exc:
        # A client's stop() can leak the cancellation of its own tasks; only a cancellation of
        # this task itself goes on.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        if where is not None:
            logger.warning("%s: stopping the %s was interrupted: %r", where, name, exc)
    except Exception as exc:
        if where is not None:
            logger.warning("%s: stopping the %s failed: %s", where, name, describe_exception(exc))


class _Redactor(logging.Filter):
    """Replaces known secrets in the records of the loggers it is attached to."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            try:
                message = record.getMessage()
            except Exception:  # a record whose arguments do not format is not ours to fix
                return True
            redacted = message
            for secret in self.secrets:
                redacted = redacted.replace(secret, "***")
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


_REDACTOR: Final = _Redactor()


def redact_secrets(secrets: Iterable[object], loggers: Iterable[str]) -> None:
    """Keep these secrets out of the records of these loggers (a client library's, which may
    log what it sends at DEBUG): as text, and as the escaped text and bytes a repr shows.
    Values that are not non-empty strings (None for a secret not set) are skipped."""
    for secret in secrets:
        if isinstance(secret, str) and secret:
            _REDACTOR.secrets.update(
                form
                for form in (secret, repr(secret)[1:-1], repr(secret.encode())[2:-1])
                if len(form) >= 3
            )
    if _REDACTOR.secrets:
        for name in loggers:
            log = logging.getLogger(name)
            if _REDACTOR not in log.filters:
                log.addFilter(_REDACTOR)


def tls_context(
    *,
    cafile: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    password: str | None = None,
) -> ssl.SSLContext:
    """A client TLS context that checks the server against ``cafile`` (the system's CAs when
    None) and its host name, and presents ``certfile``/``keyfile`` (``password`` for an
    encrypted key) when given. Raises OSError or ssl.SSLError for files that do not load."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if certfile is not None:
        context.load_cert_chain(certfile, keyfile, password)
    return context


_worker_slot: int | None = None


def set_worker_slot(slot: int | None) -> None:
    """Set by romeways' supervisor first thing in each worker process it starts: the process's
    slot (0 to ``App.workers - 1``) among its connector's processes, kept across restarts."""
    global _worker_slot
    _worker_slot = slot


def worker_slot() -> int | None:
    """This worker process's slot (see ``set_worker_slot``); None outside a worker process
    (queues consumed in-process, publishing code)."""
    return _worker_slot


def worker_identity(connector_name: str) -> str:
    """A consumer name that stays the same when the supervisor restarts this worker and differs
    between hosts and between the worker processes of one host: ``"<host>-<connector>-<slot>"``
    in a worker process, ``"<host>-<connector>"`` when consumed in-process. For backends whose
    consumers have names that own pending messages (Redis Streams consumer groups)."""
    host = socket.gethostname() or "localhost"
    if _worker_slot is None:
        return f"{host}-{connector_name}"
    return f"{host}-{connector_name}-{_worker_slot}"
