"""OpenTelemetry tracing for romeways (``pip install 'romeways[otel]'``).

``romeways.otel.instrument(app)`` adds an ``OpenTelemetryMiddleware`` (a CONSUMER span per
message handled, a child of the span that published it, with resends and dead letters as span
events) and a publish hook (a PRODUCER span per ``romeways.publish``, whose trace context goes
into the message's W3C ``traceparent``/``tracestate`` headers). Spans follow the OpenTelemetry
messaging semantic conventions. Only this module imports opentelemetry: ``import romeways``
never does, and an app not instrumented pays nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - tested in a subprocess without opentelemetry
    raise ImportError(
        "romeways.otel needs opentelemetry-api: pip install 'romeways[otel]'"
    ) from exc

from ._middleware import CallNext, HandlingResult, Middleware, Outcome
from ._publish import Deliver

if TYPE_CHECKING:
    from ._app import App
    from ._config import GenericQueueConfig
    from ._context import MessageContext

__all__ = ["OpenTelemetryMiddleware", "PublishTracer", "instrument", "messaging_system"]

_SCOPE = "romeways"

# Per messaging system: the queue config's field naming the broker's destination, and the one
# naming the consumer group (where the backend has one).
_DESTINATION = {"kafka": "topic", "redis": "stream", "rabbitmq": "queue", "nats": "subject"}
_GROUP = {"kafka": "group_id", "redis": "group", "nats": "durable"}
# Which position pair (``MessageMetadata.position``) is which semconv attribute, per system.
_POSITION = {
    "kafka": {
        "partition": "messaging.destination.partition.id",
        "offset": "messaging.kafka.offset",
    },
    "redis": {"id": "messaging.message.id"},
    "nats": {"sequence": "messaging.message.id"},
    "rabbitmq": {"delivery_tag": "messaging.rabbitmq.message.delivery_tag"},
}


def messaging_system(connector: object) -> str:
    """The ``messaging.system`` of a connector (class or instance): kafka, redis, rabbitmq,
    nats or memory for romeways' own connectors and ones built on them, else the class name in
    lower case."""
    klass_of = connector if isinstance(connector, type) else type(connector)
    for klass in klass_of.__mro__:
        module: str = klass.__module__
        if module.startswith("romeways.connectors."):
            return module.split(".")[2]
    return klass_of.__name__.lower()


def _destination(system: str, config: GenericQueueConfig, queue_name: str) -> str:
    """The broker's name of the queue (Kafka topic, Redis stream, ...), else romeways' name."""
    field = _DESTINATION.get(system)
    found: object = getattr(config, field, None) if field is not None else None
    return found if isinstance(found, str) and found else queue_name


def _common(system: str, config: GenericQueueConfig, queue_name: str) -> dict[str, Any]:
    return {
        "messaging.system": system,
        "messaging.destination.name": _destination(system, config, queue_name),
        "romeways.queue": queue_name,
        "romeways.connector": config.connector_name,
    }


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    """Reads W3C trace context from romeways headers ((name, bytes) pairs); names compare
    without case, as HTTP's do (the propagator asks for ``traceparent``)."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        found = [v.decode("latin-1") for k, v in carrier if k.lower() == key]
        return found or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _HeaderGetter()


class _Traced:
    """A tracer made on first use in each process (tracers and providers are not picklable,
    and a worker process may be spawned with a pickled app)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None) -> None:
        self._provider = tracer_provider
        self._tracer: trace.Tracer | None = None

    @property
    def tracer(self) -> trace.Tracer:
        tracer = self._tracer
        if tracer is None:
            from . import __version__

            tracer = self._tracer = trace.get_tracer(
                _SCOPE, __version__, tracer_provider=self._provider
            )
        return tracer

    def __getstate__(self) -> dict[str, Any]:
        """Pickled into a spawned worker process: it uses that process's global provider
        (set it in an ``app.on_startup`` hook); a forked one keeps the provider given."""
        return {**self.__dict__, "_provider": None, "_tracer": None}


class OpenTelemetryMiddleware(_Traced, Middleware):
    """A CONSUMER span ``process <destination>`` around the handling of each message: a child
    of (and linked to) the producer span whose W3C trace context the message's headers carry.
    Resends and dead letters are span events; a handler failure is recorded on the span
    (``record_exception``) with status ERROR. ``instrument(app)`` adds it."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        super().__init__(tracer_provider)
        # Per connector instance (one per worker): its system, span name and fixed attributes,
        # worked out on its first message rather than on every one.
        self._queues: dict[int, tuple[object, str, str, dict[str, Any]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_queues": {}}

    def _fixed(self, ctx: MessageContext) -> tuple[str, str, dict[str, Any]]:
        connector = ctx.connector
        known = self._queues.get(id(connector))
        if known is not None and known[0] is connector:
            return known[1], known[2], known[3]
        system = messaging_system(connector)
        config = ctx.config
        attributes = _common(system, config, ctx.queue_name)
        attributes["messaging.operation.type"] = "process"
        attributes["messaging.operation.name"] = "process"
        attributes["romeways.handler"] = ctx.handler
        group_field = _GROUP.get(system)
        group: object = getattr(config, group_field, None) if group_field else None
        if isinstance(group, str) and group:
            attributes["messaging.consumer.group.name"] = group
        name = f"process {attributes['messaging.destination.name']}"
        self._queues[id(connector)] = (connector, system, name, attributes)
        return system, name, attributes

    async def __call__(self, ctx: MessageContext, call_next: CallNext) -> HandlingResult:
        system, span_name, fixed = self._fixed(ctx)
        attributes = fixed
        headers = ctx.headers
        parent = propagate.extract(headers, getter=_GETTER) if headers else None
        producer = trace.get_current_span(parent).get_span_context() if parent else None
        links = [Link(producer)] if producer is not None and producer.is_valid else None
        names = _POSITION.get(system)
        if names:
            attributes = dict(fixed)
            for name, value in ctx.position:
                if name in names:
                    attributes[names[name]] = value if isinstance(value, int) else str(value)
            key = ctx.key
            if key is not None and system == "kafka":
                attributes["messaging.kafka.message.key"] = key.decode("utf-8", "backslashreplace")
        with self.tracer.start_as_current_span(
            span_name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            result = await call_next()
            attempt = ctx.attempt
            if attempt is not None:
                span.set_attribute("romeways.attempt", attempt)
            span.set_attribute("romeways.outcome", result.outcome.value)
            _record(span, result)
            return result


def _record(span: trace.Span, result: HandlingResult) -> None:
    """The outcome on the span: a resend or dead letter as an event, a failure as ERROR."""
    reason = result.reason or ""
    if result.outcome is Outcome.RESENT:
        span.add_event(
            "romeways.resend", {"romeways.reason": reason, "romeways.delay": result.delay or 0.0}
        )
        return
    if not result.outcome.dead_lettered:
        return
    if result.exception is not None:
        span.record_exception(result.exception)
    span.add_event("romeways.dead_letter", {"romeways.reason": reason})
    span.set_status(Status(StatusCode.ERROR, reason))


class PublishTracer(_Traced):
    """The publish hook ``instrument(app)`` sets (``app.publish_hook``): a PRODUCER span
    ``send <destination>`` around each publish, its trace context injected into the message's
    headers by the global propagator (W3C ``traceparent``/``tracestate`` by default) when the
    connector carries headers. Headers the caller gave win over injected ones."""

    async def __call__(
        self,
        app: App,
        config: GenericQueueConfig,
        queue_name: str,
        key: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        carries_headers: bool,
        deliver: Deliver,
    ) -> None:
        registration = app.connectors.get(config.connector_name)
        if registration is None:  # deliver names the missing connector
            await deliver(headers)
            return
        system = messaging_system(registration.connector)
        attributes = _common(system, config, queue_name)
        attributes["messaging.operation.type"] = "send"
        attributes["messaging.operation.name"] = "send"
        if key is not None and system == "kafka":
            attributes["messaging.kafka.message.key"] = key.decode("utf-8", "backslashreplace")
        with self.tracer.start_as_current_span(
            f"send {attributes['messaging.destination.name']}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
        ):
            if carries_headers:
                carrier: dict[str, str] = {}
                propagate.inject(carrier)
                given = {name.lower() for name, _ in headers or ()}
                injected = [(k, v.encode()) for k, v in carrier.items() if k.lower() not in given]
                if injected:
                    headers = [*(headers or ()), *injected]
            await deliver(headers)


def instrument(app: App, *, tracer_provider: trace.TracerProvider | None = None) -> App:
    """Trace ``app``: an OpenTelemetryMiddleware (added first, so it is the outermost of the
    middleware added after) and the publish hook. ``tracer_provider``: None uses the global
    one (``opentelemetry.trace.set_tracer_provider``). Returns ``app``. Calling it twice on
    the same app changes nothing."""
    if not any(isinstance(m, OpenTelemetryMiddleware) for m in app.middleware):
        app.middleware.insert(0, OpenTelemetryMiddleware(tracer_provider))
    if not isinstance(app.publish_hook, PublishTracer):
        app.publish_hook = PublishTracer(tracer_provider)
    return app
