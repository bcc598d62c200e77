"""Decode: bytes into ``Message[Order]`` as the worker does it for a handler annotated
``Message[Order]`` (chunk by chunk, ``max_chunk_size`` at its default) vs stdlib ``json.loads`` +
dataclass construction."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import msgspec

from romeways import GenericQueueConfig, Message
from romeways._message import Codec
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


CHUNK = GenericQueueConfig(connector_name="bench").max_chunk_size


def _codec(payload_type: type[Any]) -> Codec[Any]:
    """The codec the worker gets for a handler annotated ``Message[payload_type]``."""

    async def handler(message: Message[Any]) -> None:
        return None

    handler.__annotations__["message"] = Message[payload_type]  # type: ignore[valid-type]
    route = make_route(
        queue_name="bench",
        config=GenericQueueConfig(connector_name="bench"),
        handler=handler,
        dead_letter=None,
    )
    return route.codec


def _worker_decode(codec: Codec[Any]) -> Callable[[list[bytes]], None]:
    """Decode as ``Worker._handle_chunk`` does: one check of each chunk for resend envelopes,
    then per message msgspec's decode into the payload type and a ``Message``."""

    def run(data: list[bytes]) -> None:
        for i in range(0, len(data), CHUNK):
            chunk = data[i : i + CHUNK]
            fresh = codec.fresh_decoder(chunk)
            if fresh is None:
                for item in chunk:
                    codec.decode(item)
            else:
                for item in chunk:
                    Message(payload=fresh(item))

    return run


def _per_message(decode: Callable[[bytes], object]) -> Callable[[list[bytes]], None]:
    def run(data: list[bytes]) -> None:
        for item in data:
            decode(item)

    return run


def _timed(run: Callable[[list[bytes]], None], data: list[bytes]) -> Measurement:
    started = time.perf_counter()
    run(data)
    elapsed = time.perf_counter() - started
    return {"rate": len(data) / elapsed}


def _stdlib(data: bytes) -> OrderRecord:
    return OrderRecord(**json.loads(data))


def scenarios(params: Params) -> list[Scenario]:
    data = payloads(params.decode_n)
    raw = "stdlib json.loads + dataclass"
    struct_codec, dataclass_codec = _codec(Order), _codec(OrderRecord)
    assert struct_codec.fresh_decoder(data[:CHUNK]) is not None  # no envelope: the fresh path
    assert struct_codec.decode(data[0]).payload == msgspec.convert(json.loads(data[0]), Order)
    assert dataclass_codec.decode(data[0]).payload == _stdlib(data[0])
    struct_decode, dataclass_decode = _worker_decode(struct_codec), _worker_decode(dataclass_codec)
    stdlib = _per_message(_stdlib)
    return [
        Scenario(
            name=f"decode {params.decode_n:,} Message[Order]",
            metrics=[Metric("rate", "msg/s", target=Target("ratio", ">=", 5.0))],
            variants=[
                Variant(
                    f"romeways worker decode (chunks of {CHUNK}), Order Struct",
                    lambda: _timed(struct_decode, data),
                    baseline=raw,
                ),
                Variant(
                    f"romeways worker decode (chunks of {CHUNK}), Order dataclass",
                    lambda: _timed(dataclass_decode, data),
                    baseline=raw,
                ),
                Variant(raw, lambda: _timed(stdlib, data), raw=True),
            ],
        )
    ]
