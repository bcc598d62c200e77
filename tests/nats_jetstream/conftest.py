"""Fixtures of the NATS tests: the JetStream server the session shares (127.0.0.1:4222, or
``ROMEWAYS_TEST_NATS_URL``; a private ``nats-server -js`` when neither runs), queues with unique
stream, subject and durable names whose streams are deleted after the test, and private
servers for the tests that restart one.

This directory has no ``__init__.py`` on purpose: as a package named ``nats`` it would shadow
nats-py itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:  # for the shared helpers (broker, faults.natshelp)
    sys.path.insert(0, str(TESTS))

from faults.natshelp import (  # noqa: E402
    PrivateServer,
    delete_streams,
    run,
    shared_url,
    unique_name,
)

from romeways.connectors.nats import (  # noqa: E402
    NatsConnectorConfig,
    NatsQueueConfig,
    NatsQueueConnector,
)

QueueFactory = Callable[..., tuple[NatsConnectorConfig, NatsQueueConfig]]


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = shared_url()
    if url is not None:
        yield url
        return
    server = PrivateServer(tmp_path_factory.mktemp("nats-session")).start()
    try:
        yield server.url
    finally:
        server.kill()


def configs(
    url: str, name: str, *, connector: dict[str, Any] | None = None, **queue_options: Any
) -> tuple[NatsConnectorConfig, NatsQueueConfig]:
    """A connector config for ``url`` and a queue whose stream, subject and durable derive
    from ``name`` (unique per test)."""
    fields: dict[str, Any] = {"servers": url, "startup_timeout": 10.0, **(connector or {})}
    connector_config = NatsConnectorConfig(connector_name="nats-test", **fields)
    options: dict[str, Any] = {"frequency": 0.5, **queue_options}
    queue_config = NatsQueueConfig(
        connector_name="nats-test",
        stream=name,
        subject=f"rwtest.{name}",
        durable=f"{name}-d",
        **options,
    )
    return connector_config, queue_config


@pytest.fixture
def new_queue(nats_url: str) -> Iterator[QueueFactory]:
    """``new_queue(**queue_options)``: configs of a fresh queue on the shared server; its stream
    is deleted when the test ends."""
    made: list[str] = []

    def make(**options: Any) -> tuple[NatsConnectorConfig, NatsQueueConfig]:
        name = unique_name("RW").replace("-", "_")
        made.append(name)
        return configs(nats_url, name, **options)

    yield make
    run(delete_streams(nats_url, made))


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[PrivateServer]:
    """A private ``nats-server -js`` of this test (restartable, its own store)."""
    server = PrivateServer(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.kill()


def connector_for(
    connector_config: NatsConnectorConfig, queue_config: NatsQueueConfig, queue_name: str = "q"
) -> NatsQueueConnector:
    return NatsQueueConnector(
        connector_config=connector_config, queue_name=queue_name, config=queue_config
    )
