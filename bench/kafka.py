"""Kafka scenarios (drain at 1 and 3 partitions, latency) against a raw aiokafka loop, on the
Tansu broker that ``tests/broker.py`` starts. Listed as skipped when that cannot run here."""

from __future__ import annotations

from ._harness import Metric, Params, Scenario, Target


def unavailable() -> str | None:
    """Why the Kafka scenarios cannot run here, or None when they can."""
    try:
        import aiokafka  # noqa: F401

        from romeways.connectors import kafka  # noqa: F401
    except ImportError as exc:
        return f"the Kafka connector cannot be imported ({exc})"
    return "Kafka scenarios are not written yet"


def scenarios(params: Params) -> list[Scenario]:
    reason = unavailable()
    rate = Metric("steady", "msg/s", target=Target("ratio", ">=", 0.8))
    p99 = Metric("p99", "ms", 3, Target("value", "<=", 10.0))
    names = [
        (f"kafka drain {params.kafka_n:,} (1 partition)", rate),
        (f"kafka drain {params.kafka_n:,} (3 partitions)", rate),
        (f"kafka latency {params.latency_count:,} msgs at {params.latency_rate:g}/s", p99),
    ]
    return [Scenario(name, [metric], variants=[], skip=reason) for name, metric in names]
