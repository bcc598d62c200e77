"""The stream and the durable pull consumer: found (and checked against the queue's config), or
created with ``create=True``; errors as ConnectorErrors that say what to do."""

from __future__ import annotations

import dataclasses
import logging
from typing import NamedTuple, Protocol, cast

import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.client import JetStreamContext

from ..._errors import ConnectorError
from ..support import describe_exception
from ._config import NatsQueueConfig

logger = logging.getLogger("romeways")


class JetStreamAway(OSError):
    """JetStream did not answer an API request (starting up, or not enabled)."""


class Limits(NamedTuple):
    """What the consumer on the server sets: how long it waits for an ack, and how many
    messages it delivers unacked."""

    ack_wait: float
    max_ack_pending: int


class _JetStreamApi(Protocol):
    """The JetStream management calls used here, as they are called (nats-py also takes
    ``**params`` it leaves unannotated, which strict checkers report)."""

    async def add_stream(self, config: StreamConfig) -> StreamInfo: ...

    async def add_consumer(self, stream: str, config: ConsumerConfig) -> ConsumerInfo: ...


def _api(js: JetStreamContext) -> _JetStreamApi:
    return cast(_JetStreamApi, js)


async def set_up(
    js: JetStreamContext, config: NatsQueueConfig, where: str, max_ack_pending: int
) -> Limits:
    """The stream and the consumer, and the consumer's limits (``max_ack_pending``: the one to
    keep when the server names none); JetStream not answering raises JetStreamAway (retried by
    the caller)."""
    try:
        await ensure_stream(js, config, where)
        info = await _ensure_consumer(js, config, where)
    except nats.js.errors.ServiceUnavailableError as exc:
        raise JetStreamAway(
            "JetStream does not answer (is the server started with -js, or JetStream "
            "enabled for this account?)"
        ) from exc
    except nats.js.errors.APIError as exc:
        raise ConnectorError(
            f"{where}: JetStream refused to set up the stream or consumer: "
            f"{describe_exception(exc)}; check the stream {config.stream!r}, subject "
            f"{config.subject!r} and durable {config.durable!r} and the account's permissions"
        ) from exc
    consumer = info.config
    if consumer.deliver_subject:
        raise ConnectorError(
            f"{where}: consumer {config.durable!r} is a push consumer (deliver "
            "subject set); romeways needs a pull consumer: delete it or name another durable"
        )
    if consumer.ack_policy not in (None, AckPolicy.EXPLICIT):
        raise ConnectorError(
            f"{where}: consumer {config.durable!r} has ack_policy "
            f"{consumer.ack_policy}; romeways acks each message and needs 'explicit'"
        )
    limits = Limits(consumer.ack_wait or 30.0, consumer.max_ack_pending or max_ack_pending)
    if limits.max_ack_pending < config.max_chunk_size:
        logger.warning(
            "%s: the consumer's max_ack_pending=%d is below max_chunk_size=%d; fetches "
            "return at most %d messages",
            where,
            limits.max_ack_pending,
            config.max_chunk_size,
            limits.max_ack_pending,
        )
    if consumer.max_deliver not in (None, -1, 0) and consumer.max_deliver <= (
        config.max_deliveries
    ):
        logger.warning(
            "%s: the consumer's max_deliver=%d stops the server from delivering a message "
            "before max_deliveries=%d dead-letters it; such a message stays in the stream "
            "unhandled",
            where,
            consumer.max_deliver,
            config.max_deliveries,
        )
    return limits


async def ensure_stream(js: JetStreamContext, config: NatsQueueConfig, where: str) -> None:
    try:
        info = await js.stream_info(config.stream)
    except nats.js.errors.NotFoundError:
        if not config.create:
            raise ConnectorError(
                f"{where}: stream {config.stream!r} does not exist; create it (with "
                f"subject {config.subject!r}) or set create=True"
            ) from None
        await _api(js).add_stream(
            StreamConfig(
                name=config.stream,
                subjects=[config.subject],
                storage=StorageType(config.storage),
                retention=RetentionPolicy(config.retention),
                max_age=config.max_age,
                duplicate_window=config.duplicate_window,
            )
        )
        logger.info("%s created stream %r", where, config.stream)
        return
    subjects = info.config.subjects or []
    if not any(_subject_matches(pattern, config.subject) for pattern in subjects):
        raise ConnectorError(
            f"{where}: stream {config.stream!r} does not take subject "
            f"{config.subject!r} (its subjects: {', '.join(subjects) or 'none'}); give the "
            "queue one of them or add it to the stream"
        )


async def _ensure_consumer(
    js: JetStreamContext, config: NatsQueueConfig, where: str
) -> ConsumerInfo:
    wanted = ConsumerConfig(
        durable_name=config.durable,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=config.ack_wait,
        max_ack_pending=config.effective_max_ack_pending,
        max_deliver=-1,
        filter_subject=config.subject,
        deliver_policy=DeliverPolicy(config.deliver_policy),
    )
    try:
        info: ConsumerInfo = await js.consumer_info(config.stream, config.durable)
    except nats.js.errors.NotFoundError:
        if not config.create:
            raise ConnectorError(
                f"{where}: consumer {config.durable!r} of stream {config.stream!r} "
                "does not exist; create it (a durable pull consumer with explicit acks) or "
                "set create=True"
            ) from None
        info = await _api(js).add_consumer(config.stream, wanted)
        logger.info("%s created durable pull consumer %r", where, config.durable)
        return info
    have = info.config
    if config.create and (
        have.ack_wait != config.ack_wait or have.max_ack_pending != config.effective_max_ack_pending
    ):
        try:
            changed = dataclasses.replace(
                have, ack_wait=config.ack_wait, max_ack_pending=config.effective_max_ack_pending
            )
            info = await _api(js).add_consumer(config.stream, changed)
        except nats.js.errors.APIError as exc:
            logger.warning(
                "%s could not change the consumer to ack_wait=%gs, max_ack_pending=%d (%s); "
                "using its ack_wait=%ss, max_ack_pending=%s",
                where,
                config.ack_wait,
                config.effective_max_ack_pending,
                describe_exception(exc),
                have.ack_wait,
                have.max_ack_pending,
            )
    return info


def _subject_matches(pattern: str, subject: str) -> bool:
    """Whether a stream subject (with ``*`` and ``>`` wildcards) takes ``subject``."""
    want = subject.split(".")
    have = pattern.split(".")
    for i, token in enumerate(have):
        if token == ">":
            return len(want) > i
        if i >= len(want) or (token != "*" and token != want[i]):
            return False
    return len(want) == len(have)
