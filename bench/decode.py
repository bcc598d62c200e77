"""Decode: bytes into ``Message[Order]`` through romeways' codec (as the worker builds it for a
handler annotated ``Message[Order]``) vs stdlib ``json.loads`` + dataclass construction."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from romeways import GenericQueueConfig, Message
from romeways._route import make_route

from ._harness import Measurement, Metric, Params, Scenario, Target, Variant


class Order(msgspec.Struct, frozen=True):
    id: int
    customer: str
    sku: str
    quantity: int
    price: float
    tags: list[str]


@dataclasses.dataclass(frozen=True)
class OrderRecord:
    id: int
    customer: str
    sku: str
    quantity: int
    price: float
    tags: list[str]


def payloads(n: int) -> list[bytes]:
    """``n`` distinct JSON orders of about 100 bytes, as a producer would send them."""
    return [
        json.dumps(
            {
                "id": i,
                "customer": f"customer-{i % 977}",
                "sku": f"SKU-{i % 10_007:05d}",
                "quantity": 1 + i % 9,
                "price": round(0.99 + (i % 500) * 0.37, 2),
                "tags": ["priority"] if i % 7 == 0 else ["web", "eu"],
            }
        ).encode()
        for i in range(n)
    ]


def _codec_decoder(payload_type: type[Any]) -> Callable[[bytes], Message[Any]]:
    async def handler(message: Message[Any]) -> None:
        return None

    handler.__annotations__["message"] = Message[payload_type]  # type: ignore[valid-type]
    route = make_route(
        queue_name="bench",
        config=GenericQueueConfig(connector_name="bench"),
        handler=handler,
        dead_letter=None,
    )
    return route.codec.decode


def _timed(decode: Callable[[bytes], object], data: list[bytes]) -> Measurement:
    started = time.perf_counter()
    for item in data:
        decode(item)
    elapsed = time.perf_counter() - started
    return {"rate": len(data) / elapsed}


def _stdlib(data: bytes) -> OrderRecord:
    return OrderRecord(**json.loads(data))


def scenarios(params: Params) -> list[Scenario]:
    data = payloads(params.decode_n)
    raw = "stdlib json.loads + dataclass"
    struct_decode = _codec_decoder(Order)
    dataclass_decode = _codec_decoder(OrderRecord)
    assert struct_decode(data[0]).payload == msgspec.convert(json.loads(data[0]), Order)
    assert dataclass_decode(data[0]).payload == _stdlib(data[0])
    return [
        Scenario(
            name=f"decode {params.decode_n:,} Message[Order]",
            metrics=[Metric("rate", "msg/s", target=Target("ratio", ">=", 5.0))],
            variants=[
                Variant(
                    "romeways codec, Order Struct",
                    lambda: _timed(struct_decode, data),
                    baseline=raw,
                ),
                Variant(
                    "romeways codec, Order dataclass",
                    lambda: _timed(dataclass_decode, data),
                    baseline=raw,
                ),
                Variant(raw, lambda: _timed(_stdlib, data), raw=True),
            ],
        )
    ]
