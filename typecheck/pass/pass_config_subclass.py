"""Configs extended the way docs/configs.md shows: a plain subclass, no class keywords, is
frozen and keyword-only for mypy and pyright as it is at run time."""

from __future__ import annotations

from multiprocessing import Queue
from typing import assert_type

import romeways


class RegionQueueConfig(romeways.MemoryQueueConfig):
    region: str = "eu"
    shards: int  # a required field after one with a default: fine, every field is keyword-only


class TenantConnectorConfig(romeways.MemoryConnectorConfig):
    tenant: str


# The explicit spelling keeps working.
class ExplicitQueueConfig(romeways.MemoryQueueConfig, frozen=True, kw_only=True):
    zone: str


config = RegionQueueConfig(connector_name="mem", queue=Queue(), shards=4, retries=1)
assert_type(config.region, str)
assert_type(config.shards, int)
assert_type(config.retries, int)
assert_type(ExplicitQueueConfig(connector_name="mem", queue=Queue(), zone="a").zone, str)

app = romeways.App()
app.connector_register(
    connector=romeways.MemoryQueueConnector,
    config=TenantConnectorConfig(connector_name="mem", tenant="acme"),
)


@app.queue_consumer(queue_name="orders", config=config)
async def handle(message: romeways.Message) -> None:
    region = romeways.context().config_as(RegionQueueConfig).region
    assert_type(region, str)
