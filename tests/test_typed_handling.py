"""Typed handler code at run time (issue 14): the app's own state object, the queue's own config
class, the attempt on the message, and union payload handles -- checked through the real worker
(TestKit), with the errors a wrong type gives."""

from __future__ import annotations

import asyncio
import dataclasses
from multiprocessing import Queue

import msgspec
import pytest

import romeways
from romeways.testing import TestKit


@dataclasses.dataclass
class AppState:
    db: str | None = None


class RegionQueueConfig(romeways.MemoryQueueConfig):
    region: str = "eu"


class Refund(msgspec.Struct, tag=True):
    order_id: int


class Charge(msgspec.Struct, tag=True):
    cents: int


def test_state_config_and_attempt_are_the_typed_objects() -> None:
    state = AppState()
    app = romeways.App(state=state)
    config = RegionQueueConfig(connector_name="mem", queue=Queue(), region="us", retries=3)
    seen: list[tuple[object, ...]] = []

    @app.on_startup
    async def open_db() -> None:
        app.state.db = "postgres://"

    @app.queue_consumer(queue_name="orders", config=config)
    async def handle(message: romeways.Message[int]) -> None:
        ctx = romeways.context()
        seen.append(
            (
                ctx.state_as(AppState).db,
                ctx.config_as(RegionQueueConfig).region,
                ctx.config is config,
                message.attempt,
                ctx.attempt,
                ctx.message is message,
            )
        )
        if message.attempt < 3:
            raise romeways.ResendException()

    async def scenario() -> None:
        async with TestKit(app) as kit:
            assert (await kit.publish(app.publisher(handle), 5)).handled

    asyncio.run(scenario())
    assert app.state is state
    assert seen == [("postgres://", "us", True, n, n, True) for n in (1, 2, 3)]
    assert romeways.App().state.__class__ is romeways.State


def test_a_wrong_config_or_state_type_names_handler_queue_and_both_types() -> None:
    app = romeways.App()
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
    errors: list[str] = []

    @app.queue_consumer(queue_name="orders", config=config)
    async def handle(message: romeways.Message) -> None:
        ctx = romeways.context()
        for accessor in (
            lambda: ctx.config_as(RegionQueueConfig),
            lambda: ctx.state_as(AppState),
        ):
            with pytest.raises(romeways.RomewaysError) as info:
                accessor()
            errors.append(str(info.value))

    async def scenario() -> None:
        async with TestKit(app) as kit:
            await kit.publish("orders", "x")

    asyncio.run(scenario())
    where = "handler test_typed_handling.test_a_wrong_config_or_state_type_names"
    assert errors[0].startswith(where), errors
    assert (
        "of queue 'orders': its config is of type MemoryQueueConfig, not RegionQueueConfig"
        in (errors[0])
    )
    assert "the app's state is of type State, not AppState" in errors[1]
    assert "App(state=AppState(...))" in errors[1]


def test_a_union_handle_publishes_each_member_and_refuses_others() -> None:
    app = romeways.App()
    config = romeways.MemoryQueueConfig(connector_name="mem", queue=Queue())
    got: list[Refund | Charge] = []

    @app.queue_consumer(queue_name="money", config=config)
    async def on_money(message: romeways.Message[Refund | Charge]) -> None:
        got.append(message.payload)

    money = app.queue_handle("money", Refund | Charge)
    assert money.payload_type == Refund | Charge

    async def scenario() -> None:
        async with TestKit(app) as kit:
            await kit.publish(money, Refund(order_id=1))
            await money.publish(Charge(cents=250))
            await kit.drain()
            with pytest.raises(TypeError, match="cannot publish a str to queue 'money'"):
                await kit.publish(money, "refund")  # type: ignore[call-overload]  # the misuse under test

    asyncio.run(scenario())
    assert got == [Refund(order_id=1), Charge(cents=250)]
