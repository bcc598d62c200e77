"""Every registration error, raised at decoration / registration time (or at once by start()),
with a message naming the handler, queue and config involved."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from multiprocessing import Queue
from typing import Any

import msgspec
import pytest
from _core_helpers import (
    Feed,
    ScriptedConnector,
    ScriptedConnectorConfig,
    children_of,
    scripted_app,
)

import romeways


def memory_config(connector_name: str = "mem") -> romeways.MemoryQueueConfig:
    return romeways.MemoryQueueConfig(connector_name=connector_name, queue=Queue())


class OtherQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    region: str = "eu"


class OtherConnectorConfig(romeways.GenericConnectorConfig, frozen=True, kw_only=True):
    pass


def test_config_must_be_a_generic_queue_config() -> None:
    """Checked at the call of queue_consumer, not once a handler is decorated: the issue's
    ``queue_consumer(queue_name="q", config=NotAConfig())`` used to return a decorator."""
    app = romeways.App()
    config: Any = {"connector_name": "mem"}

    with pytest.raises(romeways.RegistrationError) as info:
        app.queue_consumer(queue_name="q.orders", config=config)
    text = str(info.value)
    assert text.startswith("@queue_consumer(queue_name='q.orders'): ")
    assert "dict" in text and "GenericQueueConfig" in text
    assert isinstance(info.value, TypeError)
    assert app.routes == []


@pytest.mark.parametrize("queue_name", ["", None, 5])
def test_queue_name_is_checked_at_the_call(queue_name: Any) -> None:
    app = romeways.App()
    with pytest.raises(romeways.RegistrationError, match="queue_name must be a non-empty str"):
        app.queue_consumer(queue_name=queue_name, config=memory_config())


def test_handler_must_be_async() -> None:
    app = romeways.App()

    def sync_handler(message: romeways.Message) -> None:
        pass

    with pytest.raises(romeways.RegistrationError) as info:
        app.queue_consumer(queue_name="q.sync", config=memory_config())(sync_handler)  # type: ignore[type-var]
    text = str(info.value)
    assert sync_handler.__qualname__ in text
    assert "'q.sync'" in text
    assert "MemoryQueueConfig(connector_name='mem')" in text
    assert "async def" in text


async def no_params() -> None:
    pass


async def two_params(message: romeways.Message, extra: int) -> None:
    pass


async def kw_only_required(message: romeways.Message, *, extra: int) -> None:
    pass


@pytest.mark.parametrize("handler", [no_params, two_params, kw_only_required])
def test_handler_takes_exactly_one_required_parameter(handler: Any) -> None:
    app = romeways.App()
    with pytest.raises(romeways.RegistrationError) as info:
        app.queue_consumer(queue_name="q.params", config=memory_config())(handler)
    text = str(info.value)
    assert handler.__qualname__ in text
    assert "'q.params'" in text
    assert "MemoryQueueConfig" in text
    assert "exactly one" in text


def test_optional_extra_parameters_are_allowed() -> None:
    app = romeways.App()

    @app.queue_consumer(queue_name="q", config=memory_config())
    async def handler(message: romeways.Message, retries: int = 0) -> None:
        pass

    assert len(app.routes) == 1


def test_parameter_annotated_int_is_rejected() -> None:
    app = romeways.App()

    async def handler(message: int) -> None:
        pass

    with pytest.raises(romeways.RegistrationError) as info:
        app.queue_consumer(queue_name="q.int", config=memory_config())(handler)  # type: ignore[type-var]
    text = str(info.value)
    assert handler.__qualname__ in text
    assert "'q.int'" in text
    assert "MemoryQueueConfig" in text
    assert "int" in text and "romeways.Message" in text


class NotDecodable:
    pass


def test_payload_type_msgspec_cannot_decode_is_rejected() -> None:
    app = romeways.App()

    async def handler(message: romeways.Message[NotDecodable]) -> None:
        pass

    with pytest.raises(romeways.RegistrationError) as info:
        app.queue_consumer(queue_name="q.x", config=memory_config())(handler)
    text = str(info.value)
    assert handler.__qualname__ in text
    assert "'q.x'" in text
    assert "MemoryQueueConfig" in text
    assert "NotDecodable" in text
    assert app.routes == []


class Wrapper(msgspec.Struct):
    inner: list[NotDecodable]


def test_payload_type_with_an_undecodable_field_is_rejected() -> None:
    app = romeways.App()

    async def handler(message: romeways.Message[Wrapper]) -> None:
        pass

    with pytest.raises(romeways.RegistrationError, match="NotDecodable"):
        app.queue_consumer(queue_name="q.w", config=memory_config())(handler)


def test_duplicate_connector_and_queue_is_rejected() -> None:
    app = romeways.App()

    @app.queue_consumer(queue_name="q.dup", config=memory_config("mem"))
    async def first(message: romeways.Message) -> None:
        pass

    async def second(message: romeways.Message) -> None:
        pass

    with pytest.raises(romeways.RegistrationError) as info:
        app.queue_consumer(queue_name="q.dup", config=memory_config("mem"))(second)
    text = str(info.value)
    assert first.__qualname__ in text and second.__qualname__ in text
    assert "'q.dup'" in text and "'mem'" in text
    # The same queue name on another connector is a different queue.
    app.queue_consumer(queue_name="q.dup", config=memory_config("mem2"))(second)
    assert len(app.routes) == 2


class NoMethods:
    def __init__(self, **kwargs: object) -> None:
        pass


class SyncGetMessages(romeways.AQueueConnector[OtherConnectorConfig, OtherQueueConfig]):
    def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:  # type: ignore[override]
        return []

    async def send_messages(self, message: bytes) -> None:
        pass


class NoSendMessages(romeways.AQueueConnector[OtherConnectorConfig, OtherQueueConfig]):
    async def get_messages(self, max_chunk_size: int) -> Sequence[bytes]:
        return []


@pytest.mark.parametrize(
    ("connector", "missing"),
    [
        (NoMethods, "on_start, get_messages, send_messages, resend, ack, close"),
        (SyncGetMessages, "get_messages"),
        (NoSendMessages, "send_messages"),
    ],
)
def test_connector_class_must_implement_the_protocol(connector: Any, missing: str) -> None:
    app = romeways.App()
    with pytest.raises(romeways.RegistrationError) as info:
        app.connector_register(
            connector=connector, config=OtherConnectorConfig(connector_name="other")
        )
    text = str(info.value)
    assert connector.__name__ in text
    assert f"missing or not 'async def': {missing}" in text
    assert app.connectors == {}


def test_connector_instance_instead_of_class_is_rejected() -> None:
    app = romeways.App()
    instance: Any = ScriptedConnector
    with pytest.raises(romeways.RegistrationError, match="connector class"):
        app.connector_register(
            connector=instance(connector_config=None, queue_name="q", config=None),
            config=ScriptedConnectorConfig(connector_name="s"),
        )


def test_connector_config_type_mismatch() -> None:
    app = romeways.App()
    config: Any = OtherConnectorConfig(connector_name="mem")
    with pytest.raises(romeways.RegistrationError) as info:
        app.connector_register(connector=romeways.MemoryQueueConnector, config=config)
    text = str(info.value)
    assert "MemoryQueueConnector" in text
    assert "OtherConnectorConfig" in text and "MemoryConnectorConfig" in text
    assert app.connectors == {}


def test_duplicate_connector_name_is_rejected() -> None:
    app = romeways.App()
    config = romeways.MemoryConnectorConfig(connector_name="mem")
    app.connector_register(connector=romeways.MemoryQueueConnector, config=config)
    with pytest.raises(romeways.RegistrationError, match="'mem' is already registered"):
        app.connector_register(connector=romeways.MemoryQueueConnector, config=config)


def _check_queue_config_mismatch(error: romeways.RegistrationError, handler: Any) -> None:
    text = str(error)
    assert handler.__qualname__ in text
    assert "'q.other'" in text
    assert "OtherQueueConfig" in text and "MemoryQueueConfig" in text
    assert "MemoryQueueConnector" in text and "'mem'" in text


def test_queue_config_type_mismatch_connector_first() -> None:
    app = romeways.App()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem"),
    )

    async def handler(message: romeways.Message) -> None:
        pass

    with pytest.raises(romeways.RegistrationError) as info:
        app.queue_consumer(queue_name="q.other", config=OtherQueueConfig(connector_name="mem"))(
            handler
        )
    _check_queue_config_mismatch(info.value, handler)
    assert app.routes == []


def test_queue_config_type_mismatch_queue_first() -> None:
    app = romeways.App()

    @app.queue_consumer(queue_name="q.other", config=OtherQueueConfig(connector_name="mem"))
    async def handler(message: romeways.Message) -> None:
        pass

    with pytest.raises(romeways.RegistrationError) as info:
        app.connector_register(
            connector=romeways.MemoryQueueConnector,
            config=romeways.MemoryConnectorConfig(connector_name="mem"),
        )
    _check_queue_config_mismatch(info.value, handler)
    assert app.connectors == {}


def test_start_fails_at_once_on_an_unregistered_connector() -> None:
    app = romeways.App()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="mem-a"),
        spawn_process=True,
    )
    app.connector_register(
        connector=ScriptedConnector, config=ScriptedConnectorConfig(connector_name="mem-b")
    )

    @app.queue_consumer(queue_name="q.lost", config=memory_config("mem-typo"))
    async def handler(message: romeways.Message) -> None:
        pass

    before = set(children_of(os.getpid()))
    with pytest.raises(romeways.RegistrationError) as info:
        asyncio.run(asyncio.wait_for(app.start(), 2.0))
    text = str(info.value)
    assert "'mem-typo'" in text and "'q.lost'" in text and handler.__qualname__ in text
    assert "registered connectors: 'mem-a', 'mem-b'" in text
    assert set(children_of(os.getpid())) == before  # no worker process was started


def test_start_with_nothing_registered_fails() -> None:
    with pytest.raises(romeways.RegistrationError, match="no queue consumers"):
        asyncio.run(asyncio.wait_for(romeways.App().start(), 2.0))


def test_dead_letter_hook_must_be_async() -> None:
    app = romeways.App()

    def hook(letter: romeways.DeadLetter) -> None:
        pass

    with pytest.raises(romeways.RegistrationError, match="dead_letter") as info:
        app.queue_consumer(queue_name="q", config=memory_config(), dead_letter=hook)  # type: ignore[arg-type]
    # At the call, before any handler: it names the queue and the config.
    assert "@queue_consumer(queue_name='q') with MemoryQueueConfig(connector_name='mem')" in str(
        info.value
    )


class TreeNode(msgspec.Struct):
    name: str
    children: list[TreeNode] = []


def test_recursive_and_builtin_payload_types_are_accepted() -> None:
    app = romeways.App()

    @app.queue_consumer(queue_name="q.tree", config=memory_config())
    async def tree(message: romeways.Message[TreeNode]) -> None:
        pass

    @app.queue_consumer(queue_name="q.dict", config=memory_config())
    async def mapping(message: romeways.Message[dict[str, list[int]]]) -> None:
        pass

    @app.queue_consumer(queue_name="q.bytes", config=memory_config())
    async def raw(message: romeways.Message[bytes]) -> None:
        pass

    assert [route.queue_name for route in app.routes] == ["q.tree", "q.dict", "q.bytes"]


def test_start_twice_at_once_is_refused() -> None:
    app, config = scripted_app(Feed())

    @app.queue_consumer(queue_name="q", config=config)
    async def handler(message: romeways.Message) -> None:
        pass

    async def main() -> None:
        first = asyncio.create_task(app.start())
        await asyncio.sleep(0.05)
        with pytest.raises(romeways.RomewaysError, match="already running"):
            await app.start()
        app.stop()
        await asyncio.wait_for(first, 5)

    asyncio.run(main())
