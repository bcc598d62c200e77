"""Dead-letter queues: a queue's dead letters sent to another queue, read back typed, replayed.

A dead letter keeps the original bytes, key and headers, and says why in ``romeways-dlq-*``
headers. Through a connector that cannot carry headers, it travels as a ``DeadLetterEnvelope``
(JSON: the fields and the original bytes) instead. The original is acknowledged only once the
dead-letter publish returned; if it fails, the original stays unacknowledged and comes again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ._config import GenericQueueConfig
from ._connector import capabilities
from ._context import current_context
from ._errors import RegistrationError, RomewaysError

if TYPE_CHECKING:
    from ._app import App
    from ._route import Route

logger = logging.getLogger("romeways")

HEADER_PREFIX = "romeways-dlq-"
_MAX_REASON = 1000  # characters of the reason a header carries
# Headers that tell the broker what to do with one publish (JetStream's Nats-Msg-Id
# deduplication id and expectations): forwarded, they would get the copy dropped as a duplicate.
_PER_PUBLISH = ("nats-",)


def forwarded(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers a dead letter or a replay carries on: not romeways' own dead-letter
    fields, not per-publish broker controls."""
    return [
        (name, value)
        for name, value in headers
        if not name.lower().startswith((HEADER_PREFIX, *_PER_PUBLISH))
    ]


class DeadLetterQueue(msgspec.Struct, frozen=True, kw_only=True):
    """``dead_letter=DeadLetterQueue(queue_name="orders.dlq")``: send the queue's dead letters
    to that queue. ``config`` is the dead-letter queue's config (which connector, and its
    settings); None takes the config of this app's consumer of that queue, else the source
    queue's own (same connector) — which a memory queue cannot share: give it its own."""

    queue_name: str
    config: GenericQueueConfig | None = None


class DeadLetterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Why a message was dead-lettered and where from, as a dead-letter queue's consumer reads
    it (``romeways.dead_letter_info()``). ``attempts`` counts deliveries handled (resends + 1);
    ``exception_type`` is the handler's exception class (``module.QualName``), if one."""

    reason: str
    queue_name: str
    connector_name: str
    handler: str
    attempts: int
    exception_type: str | None = None
    failed_at: float = 0.0  # unix time

    def headers(self) -> list[tuple[str, bytes]]:
        """The ``romeways-dlq-*`` headers that carry these fields."""
        reason = " ".join(self.reason.split())[:_MAX_REASON]  # header values are one line
        pairs = [
            ("reason", reason),
            ("queue", self.queue_name),
            ("connector", self.connector_name),
            ("handler", self.handler),
            ("attempts", str(self.attempts)),
            ("failed-at", f"{self.failed_at:.6f}"),
        ]
        if self.exception_type is not None:
            pairs.append(("exception", self.exception_type))
        return [(HEADER_PREFIX + name, value.encode()) for name, value in pairs]

    @classmethod
    def from_headers(cls, headers: Sequence[tuple[str, bytes]]) -> DeadLetterInfo | None:
        """The fields from ``romeways-dlq-*`` headers; None when they are not all there."""
        found = {
            name.removeprefix(HEADER_PREFIX).lower(): value.decode(errors="replace")
            for name, value in headers
            if name.lower().startswith(HEADER_PREFIX)
        }
        try:
            return cls(
                reason=found["reason"],
                queue_name=found["queue"],
                connector_name=found["connector"],
                handler=found["handler"],
                attempts=int(found["attempts"]),
                exception_type=found.get("exception"),
                failed_at=float(found.get("failed-at", "0")),
            )
        except (KeyError, ValueError):
            return None


class DeadLetterEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """A dead letter through a connector without headers: ``Message[DeadLetterEnvelope]``
    for its consumer; ``data`` is the original message's bytes (base64 in the JSON)."""

    rw_dead_letter: DeadLetterInfo
    data: bytes


_ENVELOPE_DECODER = msgspec.json.Decoder(DeadLetterEnvelope)


def dead_letter_info() -> DeadLetterInfo | None:
    """In a handler of a dead-letter queue: why the message being handled was dead-lettered,
    read from its headers; None for a message that is no dead letter (or outside a handler)."""
    ctx = current_context()
    if ctx is None:
        return None
    return DeadLetterInfo.from_headers(ctx.headers)


def exception_name(exc: Exception) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def target_config(app: App, route: Route[Any], target: DeadLetterQueue) -> GenericQueueConfig:
    """The config a dead letter of ``route`` is published with (see DeadLetterQueue)."""
    if target.config is not None:
        return target.config
    consumers = [r for r in app.routes if r.queue_name == target.queue_name]
    if len(consumers) == 1:
        return consumers[0].config
    if route.config.consumes_from() is not None:
        raise RegistrationError(
            f"{route.where()}: DeadLetterQueue(queue_name={target.queue_name!r}) needs its own "
            f"config: {type(route.config).__name__} names the queue's source itself, so the "
            "dead letters would go back to the queue they came from; give "
            "DeadLetterQueue(queue_name=..., config=...)"
        )
    return route.config


def check_target(app: App, route: Route[Any], target: DeadLetterQueue) -> None:
    """At start: the dead-letter queue resolves, to a registered connector, and is not the
    queue itself."""
    config = target_config(app, route, target)
    if (config.connector_name, target.queue_name) == (route.connector_name, route.queue_name):
        raise RegistrationError(
            f"{route.where()}: its DeadLetterQueue is the queue itself; name another queue"
        )
    if config.connector_name not in app.connectors:
        raise RegistrationError(
            f"{route.where()}: its DeadLetterQueue(queue_name={target.queue_name!r}) uses "
            f"connector {config.connector_name!r}, which was never registered"
        )


async def publish_dead_letter(
    app: App,
    route: Route[Any],
    target: DeadLetterQueue,
    data: bytes,
    info: DeadLetterInfo,
    *,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes]],
) -> None:
    """Publish one dead letter with the original's key and headers; returns once the connector
    confirmed it, raises if it failed."""
    from ._publish import carries_headers, send

    config = target_config(app, route, target)
    original = forwarded(headers)
    if carries_headers(app, config, target.queue_name):
        await send(
            app, config, target.queue_name, data, key=key, headers=[*original, *info.headers()]
        )
        return
    envelope = msgspec.json.encode(DeadLetterEnvelope(rw_dead_letter=info, data=data))
    await send(app, config, target.queue_name, envelope)


def new_info(
    route: Route[Any], reason: str, resend_times: int, raised: Exception | None
) -> DeadLetterInfo:
    return DeadLetterInfo(
        reason=reason,
        queue_name=route.queue_name,
        connector_name=route.connector_name,
        handler=route.handler_name,
        attempts=resend_times + 1,
        exception_type=exception_name(raised) if raised is not None else None,
        failed_at=time.time(),
    )


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """What ``replay_dead_letters`` did: messages put back on their source queues, and those
    left on the dead-letter queue (no dead-letter fields, or a source this app does not
    consume), unacknowledged."""

    replayed: int
    skipped: int


async def replay_dead_letters(
    app: App,
    queue_name: str,
    *,
    config: GenericQueueConfig | None = None,
    limit: int | None = None,
) -> ReplayResult:
    """Put the dead letters waiting on ``queue_name`` back on the queues they came from, as
    fresh messages (resend counter 0, original key and headers), acknowledging each on the
    dead-letter queue once its publish returned. Reads until a fetch comes back empty (after
    up to the queue's ``frequency``) or ``limit`` messages. Stop the app's own consumer of the
    dead-letter queue first, if it has one; the source queues' consumers may run."""
    from ._publish import send

    if config is None:
        consumers = [r for r in app.routes if r.queue_name == queue_name]
        if len(consumers) != 1:
            raise RomewaysError(
                f"replay of dead-letter queue {queue_name!r}: this app has "
                f"{'no' if not consumers else len(consumers)} consumer(s) of it; give its config"
            )
        config = consumers[0].config
    registration = app.connectors.get(config.connector_name)
    if registration is None:
        raise RomewaysError(
            f"replay of dead-letter queue {queue_name!r}: connector "
            f"{config.connector_name!r} is not registered"
        )
    sources = {(r.connector_name, r.queue_name): r for r in app.routes}
    connector = registration.connector(
        connector_config=registration.config, queue_name=queue_name, config=config
    )
    locate = capabilities(connector).metadata
    replayed = skipped = 0
    delivery = 0
    await connector.on_start()
    try:
        while limit is None or replayed + skipped < limit:
            want = config.max_chunk_size if limit is None else limit - replayed - skipped
            chunk = await connector.get_messages(min(want, config.max_chunk_size))
            if not chunk:
                break
            done: list[int] = []
            for data in chunk:
                metadata = locate(delivery) if locate is not None else None
                headers = metadata.headers if metadata is not None else ()
                key = metadata.key if metadata is not None else None
                info = DeadLetterInfo.from_headers(headers)
                original = data
                if info is None:
                    try:
                        envelope = _ENVELOPE_DECODER.decode(data)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        envelope = None
                    if envelope is not None:
                        info, original = envelope.rw_dead_letter, envelope.data
                source = sources.get((info.connector_name, info.queue_name)) if info else None
                if info is None or source is None:
                    skipped += 1
                    logger.warning(
                        "replay of dead-letter queue %r: %s; left on it",
                        queue_name,
                        "a message without dead-letter fields"
                        if info is None
                        else f"its source queue {info.queue_name!r} (connector "
                        f"{info.connector_name!r}) has no consumer in this app",
                    )
                else:
                    kept = forwarded(headers)
                    await send(
                        app,
                        source.config,
                        source.queue_name,
                        _fresh(source, original),
                        key=key,
                        headers=kept or None,
                    )
                    done.append(delivery)
                    replayed += 1
                delivery += 1
            if done:
                await connector.ack(done)
    finally:
        await connector.close()
    logger.info(
        "replayed %d dead letter(s) from queue %r (%d left on it)", replayed, queue_name, skipped
    )
    return ReplayResult(replayed=replayed, skipped=skipped)


def _fresh(route: Route[Any], data: bytes) -> bytes:
    """The message with its resend counter back at 0 (its bytes unchanged if they do not
    decode: it was dead-lettered for that, and the fix may be in the consumer)."""
    try:
        message = route.codec.decode(data)
    except Exception:
        return data
    if message.rw_resend_times == 0:
        return data
    return route.codec.encode_payload(message.payload)
