"""One consuming connection and its channel (a "link"): what it has delivered and not
acknowledged, what the broker pushed that no fetch has taken yet; opening one, and giving back
its unfinished messages in order when it closes."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import aio_pika.abc
import aiormq.abc

from ._acks import AckWindow
from ._broker import RPC_TIMEOUT, Names, close_quietly, connect, declare
from ._config import RabbitMQConnectorConfig, RabbitMQQueueConfig


@dataclass(slots=True, eq=False)
class Link:
    """One consuming connection: its channel, the delivery tags it has handed out and not
    acknowledged, and the messages the broker pushed that no fetch has taken yet."""

    connection: aio_pika.abc.AbstractConnection
    channel: aio_pika.abc.AbstractChannel
    raw: aiormq.abc.AbstractChannel
    window: AckWindow = field(default_factory=AckWindow)
    buffer: deque[aiormq.abc.DeliveredMessage] = field(
        default_factory=deque[aiormq.abc.DeliveredMessage]
    )
    consumer_tag: str | None = None
    # True until the queue gives a message it never delivered before (or none): meanwhile
    # messages are taken one at a time with basic.get, so a message that kills the worker is
    # handled alone and nothing else is prefetched and redelivered with it.
    probing: bool = True
    # Set when the broker cancelled the consumer (the queue was deleted, ...): the channel and
    # its tags are fine, the queue is declared again and the consumer re-created.
    cancelled: bool = False
    lost: BaseException | None = None
    probe_channel: aio_pika.abc.AbstractChannel | None = None


@dataclass(slots=True, eq=False)
class Delivery:
    """One message handed to the worker, until it is acked (or its channel is lost)."""

    message: aiormq.abc.DeliveredMessage
    tag: int
    link: Link


async def open_link(
    config: RabbitMQConnectorConfig, queue_config: RabbitMQQueueConfig, names: Names
) -> Link:
    """Connect, declare the queue and set the prefetch; not consuming yet (see ``probing``)."""
    connection = await connect(config, queue_config, "consumer", names)
    try:
        channel = await connection.channel(publisher_confirms=False)
        await declare(channel, queue_config, names)
        await channel.set_qos(prefetch_count=queue_config.effective_prefetch, timeout=RPC_TIMEOUT)
        raw = await channel.get_underlay_channel()
    except BaseException:
        await close_quietly(connection)
        raise
    return Link(connection, channel, raw)


async def give_back(link: Link, prefetch: int) -> None:
    """Cancel the consumer and give back every unfinished delivery, prefetched ones included,
    in order: one ``multiple`` nack with requeue of the highest unacknowledged tag."""
    raw = link.raw
    if link.consumer_tag is not None:
        await raw.basic_cancel(link.consumer_tag, timeout=RPC_TIMEOUT)
        await asyncio.sleep(0)  # deliveries that came before the cancel-ok are recorded
    last = link.window.last_unacked()
    if last is not None:
        await raw.basic_nack(last, multiple=True, requeue=True)
    # A round trip: the broker has taken the acks and the nack before the channel closes.
    await raw.basic_qos(prefetch_count=prefetch, timeout=RPC_TIMEOUT)
