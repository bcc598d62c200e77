"""Issue 14: silent misuse becomes an error at registration (or a warning), publishing finds a
handler that is a bound method, and connectors written for romeways 0.2 still build."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from multiprocessing import Queue
from typing import Any

import msgspec
import pytest
from _core_helpers import children_of

import romeways


class Order(msgspec.Struct, frozen=True):
    id: int


def memory_config(queue: Queue[Any] | None = None) -> romeways.MemoryQueueConfig:
    return romeways.MemoryQueueConfig(connector_name="mem", queue=queue or Queue(), frequency=0)


MEMORY = romeways.MemoryConnectorConfig(connector_name="mem")


# -- publisher(service.handle) -----------------------------------------------------------------


class Service:
    def __init__(self) -> None:
        self.seen: list[Order] = []

    async def handle(self, message: romeways.Message[Order]) -> None:
        self.seen.append(message.payload)


def test_publisher_finds_a_bound_method_handler() -> None:
    """Each ``service.handle`` is a new bound-method object: found by equality, not identity."""
    app = romeways.App()
    app.connector_register(connector=romeways.MemoryQueueConnector, config=MEMORY)
    service = Service()
    config = memory_config()
    app.queue_consumer(queue_name="orders", config=config)(service.handle)

    handle = app.publisher(service.handle)
    assert (handle.queue_name, handle.payload_type) == ("orders", Order)
    asyncio.run(handle.publish(Order(id=7)))
    assert msgspec.json.decode(config.queue.get(timeout=2)) == {"id": 7}
    # Another instance's method is another handler.
    with pytest.raises(romeways.RegistrationError, match="is not a registered consumer"):
        app.publisher(Service().handle)


# -- one multiprocessing.Queue, two queue names ------------------------------------------------


def test_one_memory_queue_for_two_queue_names_is_refused() -> None:
    app = romeways.App()
    shared: Queue[Any] = Queue()

    @app.queue_consumer(queue_name="orders", config=memory_config(shared))
    async def orders(message: romeways.Message) -> None:
        pass

    async def refunds(message: romeways.Message) -> None:
        pass

    with pytest.raises(romeways.RegistrationError) as info:
        app.queue_consumer(queue_name="refunds", config=memory_config(shared))(refunds)
    text = str(info.value)
    assert "'orders'" in text and "'refunds'" in text  # both queues
    assert orders.__qualname__ in text and refunds.__qualname__ in text
    assert "split its messages" in text
    # Also across connectors; a queue of its own is fine.
    other = romeways.MemoryQueueConfig(connector_name="mem2", queue=shared)
    with pytest.raises(romeways.RegistrationError, match="same Queue as queue 'orders'"):
        app.queue_consumer(queue_name="orders", config=other)(refunds)
    app.queue_consumer(queue_name="refunds", config=memory_config())(refunds)
    assert [r.queue_name for r in app.routes] == ["orders", "refunds"]


# -- connectors whose backend lives in this process --------------------------------------------


_LOCAL: list[bytes] = []  # the backend: this process's memory


class LocalConnector(romeways.AQueueConnector[romeways.MemoryConnectorConfig, Any]):
    in_process_only = True

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        chunk = _LOCAL[:max_chunk_size]
        del _LOCAL[:max_chunk_size]
        if not chunk:
            await asyncio.sleep(self.config.frequency)
        return chunk

    async def send_messages(self, message: bytes) -> None:
        _LOCAL.append(message)


def test_in_process_only_connector_is_refused_in_a_worker_process() -> None:
    app = romeways.App()
    with pytest.raises(romeways.RegistrationError) as info:
        app.connector_register(connector=LocalConnector, config=MEMORY, spawn_process=True)
    text = str(info.value)
    assert "LocalConnector is in_process_only" in text and "spawn_process=True" in text
    assert app.connectors == {}
    app.connector_register(connector=LocalConnector, config=MEMORY)  # in-process: fine
    assert not romeways.MemoryQueueConnector.in_process_only


def test_in_process_only_connector_with_workers_is_refused_at_start() -> None:
    app = romeways.App(shutdown_timeout=1.0)
    app.connector_register(connector=LocalConnector, config=MEMORY)

    config = romeways.GenericQueueConfig(connector_name="mem")

    @app.queue_consumer(queue_name="local", config=config)
    async def handler(message: romeways.Message) -> None:
        pass

    app.workers = 2
    before = set(children_of(os.getpid()))
    with pytest.raises(romeways.RegistrationError, match=r"App.workers=2: connector 'mem'"):
        asyncio.run(asyncio.wait_for(app.start(), 5.0))
    assert set(children_of(os.getpid())) == before  # no worker process was started


# -- handlers that return a value --------------------------------------------------------------


async def returns_annotated(message: romeways.Message) -> int:
    return 1


async def returns_unannotated(message: romeways.Message):  # type: ignore[no-untyped-def]
    if message.payload:
        return len(message.payload)
    return None


async def returns_nothing(message: romeways.Message):  # type: ignore[no-untyped-def]
    def inner() -> int:
        return 2  # a nested function's return is not the handler's

    inner()
    return


async def annotated_none(message: romeways.Message) -> None:
    return None


def test_a_handler_that_returns_a_value_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = romeways.App()
    caplog.set_level(logging.WARNING, logger="romeways")
    handlers: list[tuple[str, Any]] = [
        ("annotated", returns_annotated),
        ("unannotated", returns_unannotated),
        ("nothing", returns_nothing),
        ("none", annotated_none),
    ]
    for name, handler in handlers:
        app.queue_consumer(queue_name=name, config=memory_config())(handler)
    warnings = [r.getMessage() for r in caplog.records if r.name == "romeways"]
    assert len(warnings) == 2, warnings
    assert "(queue_name='annotated') on test_core_misuse.returns_annotated" in warnings[0]
    assert "annotated to return int" in warnings[0] and "drops" in warnings[0]
    line = returns_unannotated.__code__.co_firstlineno + 2
    assert "(queue_name='unannotated') on test_core_misuse.returns_unannotated" in warnings[1]
    assert f"returns a value (line {line})" in warnings[1]


# -- connectors written for romeways 0.2 -------------------------------------------------------


def test_a_0_2_style_constructor_without_queue_name_still_works() -> None:
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue(), frequency=2)
    connector = romeways.MemoryQueueConnector(connector_config=MEMORY, config=config)
    assert connector.queue_name == ""  # documented: "" when built without one
    positional = romeways.MemoryQueueConnector(MEMORY, config)  # 0.2's base took them so

    async def roundtrip() -> Sequence[bytes]:
        await connector.send_messages(b"x")
        try:
            return await positional.get_messages(5)
        finally:
            await connector.close()
            await positional.close()

    assert list(asyncio.run(roundtrip())) == [b"x"]
    named = romeways.MemoryQueueConnector(connector_config=MEMORY, queue_name="q", config=config)
    assert named.queue_name == "q"


class LegacyInit(romeways.AQueueConnector):
    """A 0.2 connector with its own constructor, which romeways cannot give the queue name."""

    def __init__(self, connector_config: Any, config: Any) -> None:
        super().__init__(connector_config, config)

    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        pass


class LegacyNoInit(romeways.AQueueConnector):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []

    async def send_messages(self, message: bytes) -> None:
        pass


def test_a_connector_that_cannot_take_queue_name_is_refused_at_registration() -> None:
    app = romeways.App()
    untyped: Any = LegacyInit
    with pytest.raises(romeways.RegistrationError) as info:
        app.connector_register(connector=untyped, config=MEMORY)
    assert "LegacyInit(...) does not take queue_name" in str(info.value)
    assert "queue_name: str | None = None" in str(info.value)
    # Without an __init__ of its own, the base takes it.
    app.connector_register(connector=LegacyNoInit, config=MEMORY)
    built = LegacyNoInit(connector_config=MEMORY, queue_name="q", config=memory_config())
    assert built.queue_name == "q"
