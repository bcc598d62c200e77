"""OpenTelemetry tracing on a real Redis: the publish -> consume -> resend -> dead-letter flow of
``otel_flow`` over Redis Streams (trace context in the entries' headers), with the consumer
group and the entry id on the consumer spans."""

from __future__ import annotations

from collections.abc import Callable

import romeways

from ._redis_helpers import configs

Streams = Callable[[str], str]


def test_the_redis_flow_is_traced_from_publish_to_dead_letter(
    redis_url: str, streams: Streams
) -> None:
    from otel_flow import check_flow, run_flow  # tests/ is on the path (conftest)

    stream, out_stream = streams("otel"), streams("otel-out")
    connector_config, config = configs(redis_url, stream, retries=1, frequency=0.1)
    _, out = configs(redis_url, out_stream)
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(connector=romeways.RedisQueueConnector, config=connector_config)
    spans, dead = run_flow(app, config, out)
    check_flow(spans, "redis", stream, out_stream)
    assert len(dead) == 2
    for span in spans:
        if span.name == f"process {stream}":
            attributes = span.attributes or {}
            assert attributes["messaging.consumer.group.name"] == f"{stream}-g"
            assert "-" in str(attributes["messaging.message.id"])  # an entry id: ms-seq
