"""Pull requests to a durable JetStream consumer, on one inbox subscription of our own.

Rather than nats-py's ``PullSubscription.fetch(n)`` (a task per message it waits for, and no
way to tell which request a late status belongs to), each request here is either "what is
there now, up to n" (``no_wait``: the server answers at once, its end marked by a status) or
"the next one, waiting up to t" (a lingering request for one message): together a fetch returns
as soon as anything came, with all that was there, on any server version. Every request gets a
reply subject of its own (``<inbox>.<n>``), so a late status of an earlier request is told
apart; and the subscription can be made afresh when it stops delivering (see the connector's
guard against nats.py #504).

Every JetStream message that reaches the inbox goes to ``buffer`` whichever request it answers
(one given up when a fetch was cancelled included): from the server's view it is delivered, so
it is handed out by the next fetch, kept alive while it waits and given back on close.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, cast

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header


class _Subscriber(Protocol):
    """``Client.subscribe`` as it is called here (nats-py leaves the type of an argument not
    used here, ``future``, partly unknown, which strict checkers report)."""

    async def subscribe(
        self, subject: str, *, cb: Callable[[Msg], Awaitable[None]]
    ) -> Subscription: ...


# Status codes JetStream answers pull requests with: 100 a heartbeat; 404 (nothing there, for
# a no_wait request) and 408 (expired, or the batch could not be filled at once) end one.
_HEARTBEAT: Final = "100"
ENDED: Final = ("404", "408")


class Puller:
    """The pull side of one durable consumer: requests, and the delivered messages not yet
    handed out (``buffer``, in delivery order)."""

    def __init__(self, client: Client, stream: str, durable: str, prefix: str = "$JS.API") -> None:
        self._client = client
        self._next_subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.buffer: deque[Msg] = deque()
        self.received = 0  # JetStream messages that reached the inbox, ever
        self.last_received = time.monotonic()  # when the last one did (or the start)
        self._sub: Subscription | None = None
        self._inbox = ""
        self._request = 0
        self._reply_token = ""
        self._want = 0  # messages the request in flight may still bring
        self._waiter: asyncio.Future[None] | None = None
        self.status: tuple[str, str] | None = None  # how the last request ended

    @property
    def subscribed(self) -> bool:
        return self._sub is not None

    async def subscribe(self) -> None:
        """A fresh inbox subscription (the old one, if any, is dropped)."""
        old, self._sub = self._sub, None
        if old is not None:
            try:
                await old.unsubscribe()
            except Exception:
                pass
        self._inbox = self._client.new_inbox()
        subscriber = cast(_Subscriber, self._client)
        self._sub = await subscriber.subscribe(f"{self._inbox}.*", cb=self._on_message)

    @property
    def subscription(self) -> Subscription | None:
        """The inbox subscription (tests inject faults through it)."""
        return self._sub

    async def _on_message(self, msg: Msg) -> None:
        if msg.reply:  # a JetStream message: its reply subject is where its ack goes
            self.buffer.append(msg)
            self.received += 1
            self.last_received = time.monotonic()
            if self._want:
                self._want -= 1
                if not self._want:
                    self._wake()
            return
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status == _HEARTBEAT or not msg.subject.endswith(self._reply_token):
            return  # a heartbeat, or the end of a request given up earlier
        self.status = (status, headers.get(Header.DESCRIPTION, ""))
        self._want = 0
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def pull(self, batch: int, *, linger: float | None, timeout: float) -> None:
        """Ask for up to ``batch`` messages and wait, at most ``timeout`` seconds, until the
        request ends: with ``linger=None`` at once with what is there (no_wait); else lingering
        on the server up to ``linger`` seconds for the first. What comes lands in ``buffer``."""
        if self._sub is None or timeout <= 0:
            return
        self._request += 1
        self._reply_token = f".{self._request}"
        if linger is None:
            request = b'{"batch":%d,"no_wait":true}' % batch
        else:
            request = b'{"batch":%d,"expires":%d}' % (batch, int(linger * 1e9))
        self.status = None
        self._want = batch
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._client.publish(
                self._next_subject, request, reply=self._inbox + self._reply_token
            )
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError:
            self.status = ("timeout", "no answer in time")
        finally:
            self._waiter = None
            self._want = 0

    async def stop(self, timeout: float) -> None:
        """Stop the subscription so that nothing more is delivered to it; what the server sent
        before lands in ``buffer`` first (the client's drain: unsubscribe, flush, then the
        messages already read)."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        drain: Callable[[], Awaitable[None]] = sub.drain  # nats-py leaves it unannotated
        try:
            async with asyncio.timeout(timeout):
                await drain()
        except Exception:
            pass


def _ack_field(reply: str, v1_index: int) -> int:
    """A number of a JetStream ack subject: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.
    <cseq>.<time>.<pending>`` (or the longer form with domain and account hash first)."""
    tokens = reply.split(".")
    index = v1_index if len(tokens) == 9 else v1_index + 2
    try:
        return int(tokens[index])
    except (IndexError, ValueError):
        return 0


def num_delivered(reply: str) -> int:
    return _ack_field(reply, 4)


def stream_sequence(reply: str) -> int:
    return _ack_field(reply, 5)


def num_pending(reply: str) -> int:
    return _ack_field(reply, 8)
