"""Counting outcomes and durations per queue, merging the counts of every worker process, and
rendering them for Prometheus (``romeways[prometheus]``).

Each process counts in ``QueueStats`` (no locks, no I/O on the hot path) and reports cumulative
totals to the parent (see ``_telemetry``); the parent keeps the latest report of each process and
folds the totals of processes that ended into ``retired``, so counters never go down when a
worker process restarts.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import msgspec

from ._context import MessageContext
from ._middleware import CallNext, HandlingResult, Middleware, Outcome, result_of

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

# Prometheus' default buckets, in seconds; +Inf is implied after the last.
BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)

HANDLED, FAILED, RESENT, DEAD_LETTERED = range(4)


class QueueStats:
    """One process's counts for one queue: outcomes and a duration histogram."""

    __slots__ = ("buckets", "counts", "total_seconds")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0]  # handled, failed, resent, dead-lettered
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; last is +Inf
        self.total_seconds = 0.0

    def observe(self, result: HandlingResult) -> None:
        outcome = result.outcome
        counts = self.counts
        if outcome is Outcome.HANDLED:
            counts[HANDLED] += 1
        elif outcome is Outcome.RESENT:
            counts[RESENT] += 1
        else:
            if outcome is Outcome.FAILED:
                counts[FAILED] += 1
            counts[DEAD_LETTERED] += 1
        self.buckets[bisect_left(BUCKETS, result.duration)] += 1
        self.total_seconds += result.duration


class StatsMiddleware(Middleware):
    """Counts every handling of this process into ``stats``, per (connector, queue)."""

    def __init__(self) -> None:
        self.stats: dict[tuple[str, str], QueueStats] = {}

    async def __call__(self, ctx: MessageContext, call_next: CallNext) -> HandlingResult:
        result = await call_next()
        key = (ctx.connector_name, ctx.queue_name)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = QueueStats()
        if ctx.batch_contexts:  # a batch handler's chunk: each message counts
            for each in ctx.batch_contexts:
                stats.observe(result_of(each, result.duration))
        else:
            stats.observe(result)
        return result


class WorkerReport(msgspec.Struct, array_like=True):
    """What a process says about one of its workers; counts are cumulative for the process."""

    session: str
    pid: int
    final: bool
    connector: str
    queue: str
    handler: str
    frequency: float
    poll_age: float | None  # seconds since its last poll came back, None before the first
    inflight: int
    counts: list[int]
    buckets: list[int]
    total_seconds: float
    lag: dict[str, int]  # per source the connector reads (ReportsLag), messages not fetched
    stuck: str = ""  # why the worker is far past the bound of a handler or hook, "" if not
    kafka: bool = False  # the Kafka connector: lag sources are "topic:partition"


class _Totals:
    __slots__ = ("buckets", "counts", "total_seconds")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0]
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.total_seconds = 0.0

    def add(self, report: WorkerReport) -> None:
        for i, n in enumerate(report.counts[:4]):
            self.counts[i] += n
        for i, n in enumerate(report.buckets[: len(self.buckets)]):
            self.buckets[i] += n
        self.total_seconds += report.total_seconds


class Aggregator:
    """The parent's view: the latest report of every live worker, and the last report of every
    worker that ended (a final report, or none for ``retire_after`` seconds). A retired worker
    that reports again (it was only stalled) is live again; its counts are never added twice."""

    def __init__(self, retire_after: float = 10.0) -> None:
        self.retire_after = retire_after
        self.latest: dict[tuple[str, str, str], tuple[float, WorkerReport]] = {}
        self.retired: dict[tuple[str, str, str], WorkerReport] = {}

    def apply(self, report: WorkerReport, now: float) -> None:
        key = (report.session, report.connector, report.queue)
        if report.final:
            self.latest.pop(key, None)
            self.retired[key] = report
        else:
            self.retired.pop(key, None)
            self.latest[key] = (now, report)

    def expire(self, now: float) -> None:
        for key, (received, report) in list(self.latest.items()):
            if now - received > self.retire_after:
                del self.latest[key]
                self.retired[key] = report

    def totals(self) -> dict[tuple[str, str], _Totals]:
        merged: dict[tuple[str, str], _Totals] = {}
        reports = [*self.retired.values(), *(report for _, report in self.latest.values())]
        for report in reports:
            merged.setdefault((report.connector, report.queue), _Totals()).add(report)
        return merged


def prometheus_text(aggregator: Aggregator) -> tuple[bytes, str]:
    """The Prometheus exposition of the aggregated metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    # prometheus-client 0.20 types Collector as an ABC (nominal), newer releases as a Protocol;
    # register() only ever calls collect(), which _Collector has.
    registry.register(cast("Collector", _Collector(aggregator)))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _Collector:
    def __init__(self, aggregator: Aggregator) -> None:
        self._aggregator = aggregator

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        labels = ["connector", "queue"]
        families = [
            CounterMetricFamily(
                "romeways_messages_handled", "Messages whose handler returned.", labels=labels
            ),
            CounterMetricFamily(
                "romeways_messages_failed",
                "Messages whose handler raised an exception (they were dead-lettered).",
                labels=labels,
            ),
            CounterMetricFamily(
                "romeways_messages_resent",
                "Messages put back on their queue with the resend counter raised.",
                labels=labels,
            ),
            CounterMetricFamily(
                "romeways_messages_dead_lettered",
                "Messages given up on: handler failures, spent retries, undecodable messages.",
                labels=labels,
            ),
        ]
        duration = HistogramMetricFamily(
            "romeways_handling_duration_seconds",
            "Time to decode, handle and resend or dead-letter one message.",
            labels=labels,
        )
        totals = self._aggregator.totals()
        for (connector, queue), total in sorted(totals.items()):
            values = [connector, queue]
            for family, count in zip(families, total.counts, strict=True):
                family.add_metric(values, count)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*BUCKETS, math.inf), total.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == math.inf else repr(bound), cumulative))
            duration.add_metric(values, buckets, total.total_seconds)
        yield from families
        yield duration
        alive = GaugeMetricFamily(
            "romeways_workers",
            "Worker loops reporting, per queue (one per process that consumes the queue).",
            labels=labels,
        )
        lag = GaugeMetricFamily(
            "romeways_consumer_lag",
            "Messages of a source (a partition, stream or queue) not yet fetched by its consumer.",
            labels=[*labels, "source"],
        )
        # Kept for the dashboards made before romeways_consumer_lag: the same numbers, Kafka's.
        kafka_lag = GaugeMetricFamily(
            "romeways_kafka_consumer_lag",
            "Messages of a partition not yet fetched by its consumer (Kafka).",
            labels=[*labels, "topic", "partition"],
        )
        per_queue: dict[tuple[str, str], int] = {}
        lags: dict[tuple[str, str, str], int] = {}
        kafka_lags: dict[tuple[str, str, str, str], int] = {}
        for _, report in self._aggregator.latest.values():
            key = (report.connector, report.queue)
            per_queue[key] = per_queue.get(key, 0) + 1
            for source, behind in report.lag.items():
                lags[(report.connector, report.queue, source)] = behind
                if report.kafka:
                    topic, _, partition = source.rpartition(":")
                    if topic and partition.isdigit():
                        kafka_lags[(report.connector, report.queue, topic, partition)] = behind
        for key, count in sorted(per_queue.items()):
            alive.add_metric(list(key), count)
        for lag_key, behind in sorted(lags.items()):
            lag.add_metric(list(lag_key), behind)
        for kafka_key, behind in sorted(kafka_lags.items()):
            kafka_lag.add_metric(list(kafka_key), behind)
        yield alive
        yield lag
        yield kafka_lag
