"""Metrics and health across worker processes: each process reports to the parent over a pipe,
and the parent serves ``/metrics`` and ``/health`` over HTTP.

The parent makes one pipe before any worker process is forked. Every process that runs workers
(the children, and the parent itself for in-process connectors) writes a small frame per worker
every ``interval`` seconds: cumulative counts, the duration histogram, when it last polled, how
many messages it is handling and, from Kafka, the consumer lag. Frames are shorter than PIPE_BUF
and written non-blocking, so writes from many processes never interleave and a stuck parent never
blocks a worker (a frame that does not fit is dropped; the next one supersedes it). The parent
reads the pipe in its event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import select
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ._errors import RomewaysError
from ._health import evaluate, expected_workers
from ._metrics import Aggregator, StatsMiddleware, WorkerReport, prometheus_text

if TYPE_CHECKING:
    from ._app import App
    from ._worker import Worker

logger = logging.getLogger("romeways")

_HEADER = 4
_MAX_FRAME = getattr(select, "PIPE_BUF", 512)
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(WorkerReport)


class Telemetry:
    """The parent side: the report pipe, the aggregate, and the HTTP endpoints."""

    def __init__(
        self,
        app: App,
        *,
        metrics_port: int | None = None,
        health_port: int | None = None,
        host: str = "0.0.0.0",
        interval: float = 0.5,
    ) -> None:
        if metrics_port is not None:
            if importlib.util.find_spec("prometheus_client") is None:
                raise RomewaysError(
                    "--metrics-port needs prometheus-client: pip install 'romeways[prometheus]'"
                )
        self.app = app
        self.metrics_port = metrics_port
        self.health_port = health_port
        self.host = host
        self.interval = interval
        self.aggregator = Aggregator()
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._buffer = bytearray()
        self._servers: list[asyncio.Server] = []
        self.parent_pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for a spawned (not forked) worker process: its pipe and servers do not carry
        over, so that process reports nothing (health then counts it as not alive)."""
        state = {k: v for k, v in self.__dict__.items() if k not in ("_servers", "_buffer")}
        state.update(read_fd=-1, write_fd=-1, _servers=[], _buffer=bytearray())
        return state

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.read_fd, self._on_readable)
        ports: dict[int, set[str]] = {}
        if self.metrics_port is not None:
            ports.setdefault(self.metrics_port, set()).add("metrics")
        if self.health_port is not None:
            ports.setdefault(self.health_port, set()).add("health")
        try:
            for port, kinds in ports.items():
                server = await asyncio.start_server(
                    functools.partial(self._serve_http, kinds=frozenset(kinds)), self.host, port
                )
                self._servers.append(server)
                for kind in sorted(kinds):
                    path = "/metrics" if kind == "metrics" else "/health"
                    logger.info("serving %s on http://%s:%d%s", kind, self.host, port, path)
        except OSError as exc:
            await self.close()
            raise RomewaysError(f"cannot serve metrics/health on {self.host}: {exc}") from exc

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self._servers.clear()
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.read_fd)
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def detach_in_child(self) -> None:
        """In a forked worker process: close the inherited read end, so that reports fail fast
        once the parent is gone. (Inherited listening sockets stay: only the parent accepts.)"""
        with contextlib.suppress(OSError):
            os.close(self.read_fd)

    # -- reading reports ----------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            data = os.read(self.read_fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        buffer = self._buffer
        buffer += data
        now = time.monotonic()
        while len(buffer) >= _HEADER:
            size = int.from_bytes(buffer[:_HEADER], "big")
            if len(buffer) < _HEADER + size:
                break
            frame = bytes(buffer[_HEADER : _HEADER + size])
            del buffer[: _HEADER + size]
            try:
                report = _DECODER.decode(frame)
            except msgspec.DecodeError:
                logger.warning("dropped an unreadable worker report (%d bytes)", size)
                continue
            self.aggregator.apply(report, now)

    # -- HTTP ---------------------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        self.aggregator.expire(now)
        return evaluate(self.aggregator, expected_workers(self.app), now)

    async def _serve_http(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, kinds: frozenset[str]
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = path.split("?", 1)[0]
            status, content_type, body = self._respond(method, path, kinds)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + (b"" if method == "HEAD" else body)
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _respond(self, method: str, path: str, kinds: frozenset[str]) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"use GET\n"
        if "metrics" in kinds and path == "/metrics":
            self.aggregator.expire(time.monotonic())
            body, content_type = prometheus_text(self.aggregator)
            return "200 OK", content_type, body
        if "health" in kinds and path in ("/health", "/healthz", "/livez", "/"):
            healthy, answer = self.health()
            status = "200 OK" if healthy else "503 Service Unavailable"
            return status, "application/json", msgspec.json.encode(answer) + b"\n"
        known = [p for k, p in (("metrics", "/metrics"), ("health", "/health")) if k in kinds]
        return "404 Not Found", "text/plain", f"try {' or '.join(known)}\n".encode()


async def run_app(
    app: App,
    *,
    metrics_port: int | None = None,
    health_port: int | None = None,
    host: str = "0.0.0.0",
) -> None:
    """``app.start()`` with metrics and/or health served over HTTP, covering every worker
    process (the pipe is made before any is forked)."""
    telemetry = Telemetry(app, metrics_port=metrics_port, health_port=health_port, host=host)
    await telemetry.open()
    app.telemetry = telemetry
    try:
        await app.start()
    finally:
        app.telemetry = None
        await telemetry.close()


# -- the reporting side, in every process that runs workers ---------------------------------


class Reporting:
    """Writes this process's worker reports to the parent until closed."""

    def __init__(self, fd: int, workers: Sequence[Worker], interval: float) -> None:
        self._fd = fd
        self._workers = list(workers)
        self._interval = interval
        self._session = uuid.uuid4().hex
        self._pid = os.getpid()
        self._stats = StatsMiddleware()
        self._broken = False
        for worker in self._workers:
            worker.add_outer_middleware(self._stats)
        self._task = asyncio.create_task(self._loop(), name="romeways:telemetry")

    async def _loop(self) -> None:
        while True:
            await self.report(final=False)
            await asyncio.sleep(self._interval)

    async def report(self, *, final: bool) -> None:
        now = time.monotonic()
        for worker in self._workers:
            probe = worker.probe
            stats = self._stats.stats.get((probe.connector_name, probe.queue_name))
            lag = await _lag_of(worker) if not final else []
            report = WorkerReport(
                session=self._session,
                pid=self._pid,
                final=final,
                connector=probe.connector_name,
                queue=probe.queue_name,
                handler=probe.handler,
                frequency=probe.frequency,
                poll_age=None if probe.last_poll is None else now - probe.last_poll,
                inflight=probe.inflight,
                counts=list(stats.counts) if stats else [0, 0, 0, 0],
                buckets=list(stats.buckets) if stats else [],
                total_seconds=stats.total_seconds if stats else 0.0,
                lag=lag,
                stuck=probe.stuck(now),
            )
            self._write(report)

    def _write(self, report: WorkerReport) -> None:
        if self._broken:
            return
        frame = _ENCODER.encode(report)
        while _HEADER + len(frame) > _MAX_FRAME and report.lag:
            report.lag = report.lag[: len(report.lag) // 2]
            frame = _ENCODER.encode(report)
        try:
            os.write(self._fd, len(frame).to_bytes(_HEADER, "big") + frame)
        except BlockingIOError:
            pass  # the parent is behind; the next report supersedes this one
        except OSError as exc:
            self._broken = True
            logger.warning("cannot report metrics/health to the parent process: %s", exc)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.report(final=True)


async def _lag_of(worker: Worker) -> list[tuple[str, int, int]]:
    """The consumer lag per partition, if the worker's connector tells it (``consumer_lag``)."""
    connector = worker.connector
    lag_of = cast(
        "Callable[[], Awaitable[Mapping[str, int]]] | None",
        getattr(connector, "consumer_lag", None),
    )
    if lag_of is None:
        return []
    try:
        lags: dict[str, int] = dict(await asyncio.wait_for(lag_of(), 1.0))
        # Keyed "topic:partition" (ReportsLag); split for the Kafka metric's labels.
        split = [(source.rpartition(":"), n) for source, n in lags.items()]
        return [(t, int(p), int(n)) for (t, _, p), n in split]
    except Exception as exc:
        logger.debug("consumer lag unavailable: %s: %s", type(exc).__name__, exc)
        return []


class _NoReporting:
    async def close(self) -> None:
        return None


def open_reporting(app: App, workers: Sequence[Worker]) -> Reporting | _NoReporting:
    """Start reporting these workers to the parent when the app runs with telemetry."""
    telemetry = app.telemetry
    if telemetry is None:
        return _NoReporting()
    if telemetry.write_fd < 0:
        logger.warning(
            "this worker process was spawned, not forked: it cannot report metrics or health"
        )
        return _NoReporting()
    if os.getpid() != telemetry.parent_pid:
        telemetry.detach_in_child()
    return Reporting(telemetry.write_fd, workers, telemetry.interval)


# -- `romeways run` options -------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a count >= 1, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"give a TCP port 1-65535, not {value}")
    return value


def add_run_options(run: argparse.ArgumentParser) -> None:
    """``--workers``, ``--metrics-port``, ``--health-port`` and ``--http-host`` of ``run``."""
    run.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="run every connector in N supervised worker processes (Kafka scale-out on one host)",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (needs romeways[prometheus])",
    )
    run.add_argument(
        "--health-port",
        type=_port,
        metavar="PORT",
        help="serve liveness on http://HOST:PORT/health: 200 when every worker is alive and "
        "polling, else 503",
    )
    run.add_argument(
        "--http-host",
        default="0.0.0.0",
        metavar="HOST",
        help="the address --metrics-port and --health-port listen on (default 0.0.0.0)",
    )


async def run_with_options(app: App, args: argparse.Namespace) -> None:
    """``app.start()`` as ``romeways run`` options ask: worker count, metrics, health."""
    if args.workers is not None:
        app.workers = args.workers
    if args.metrics_port is None and args.health_port is None:
        await app.start()
        return
    await run_app(
        app, metrics_port=args.metrics_port, health_port=args.health_port, host=args.http_host
    )
