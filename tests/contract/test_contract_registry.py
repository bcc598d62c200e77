"""The contract suite keeps one list of checks, and its recording connector is a public piece:
``romeways.testing.RecordingConnector`` records typed events and keeps the wrapped connector's
optional capabilities (issue 15)."""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
from pathlib import Path

import pytest
from sqlite_connector import SQLiteConnectorConfig, SQLiteQueueConfig, SQLiteQueueConnector
from test_contract_in_process_only import LocalConnector

import romeways
from romeways._connector import HoldsResends
from romeways.testing import (
    CONTRACT_CHECKS,
    Acked,
    Closed,
    ConnectorContract,
    ConnectorEvent,
    Fetched,
    Published,
    RecordingConnector,
    Resent,
    Started,
)
from romeways.testing._contract import _REGISTRY


def test_checks_test_methods_and_the_list_are_one() -> None:
    """Every ``check_*`` method is a registered check, ``CONTRACT_CHECKS`` lists them in the
    order they are defined, and each has its ``test_*`` entry point: none written by hand."""
    checks = [n for n, _ in inspect.getmembers(ConnectorContract) if n.startswith("check_")]
    tests = [n for n, _ in inspect.getmembers(ConnectorContract) if n.startswith("test_")]
    assert sorted(checks) == sorted(f"check_{name}" for name in CONTRACT_CHECKS)
    assert sorted(tests) == sorted(f"test_{name}" for name in CONTRACT_CHECKS)
    assert list(CONTRACT_CHECKS) == _REGISTRY
    source = inspect.getsource(ConnectorContract)
    assert "def test_" not in source
    lines = [source.index(f"async def check_{name}(") for name in CONTRACT_CHECKS]
    assert lines == sorted(lines), "CONTRACT_CHECKS is in the order the checks are defined"
    assert {"message_metadata", "consumer_lag"} <= set(CONTRACT_CHECKS)
    for name in CONTRACT_CHECKS:
        test = getattr(ConnectorContract, f"test_{name}")
        assert test.__doc__ == getattr(ConnectorContract, f"check_{name}").__doc__


def test_recording_connector_keeps_the_wrapped_capabilities(tmp_path: Path) -> None:
    sqlite = RecordingConnector.wrap(SQLiteQueueConnector)(
        connector_config=SQLiteConnectorConfig(connector_name="s", path=str(tmp_path / "q.db")),
        queue_name="q",
        config=SQLiteQueueConfig(connector_name="s"),
    )
    memory = RecordingConnector.wrap(romeways.MemoryQueueConnector)(
        connector_config=romeways.MemoryConnectorConfig(connector_name="m"),
        queue_name="q",
        config=romeways.MemoryQueueConfig(connector_name="m", queue=multiprocessing.Queue()),
    )
    for connector, has in (
        (sqlite, {romeways.ProvidesMetadata, romeways.ReportsLag, romeways.Publisher}),
        (memory, {HoldsResends, romeways.ProvidesMetadata, romeways.Publisher}),
    ):
        assert isinstance(connector, RecordingConnector)
        assert isinstance(connector, romeways.Connector)
        for capability in (
            romeways.ProvidesMetadata,
            romeways.ReportsLag,
            romeways.Publisher,
            HoldsResends,
        ):
            assert isinstance(connector, capability) is (capability in has), capability
    local = RecordingConnector.wrap(LocalConnector)
    assert getattr(local, "in_process_only", False) is True
    with pytest.raises(romeways.RegistrationError, match="in_process_only"):
        romeways.App().connector_register(
            connector=local,
            config=romeways.GenericConnectorConfig(connector_name="local"),
            spawn_process=True,
        )
    # The wrapped class's config types: a connector config of the wrong class is refused.
    # (mypy sees it too: "Cannot infer value of type parameter", as for the class itself.)
    wrong = romeways.MemoryConnectorConfig(connector_name="s")
    with pytest.raises(romeways.RegistrationError, match="SQLiteConnectorConfig"):
        romeways.App().connector_register(  # type: ignore[misc]  # the runtime check under test
            connector=RecordingConnector.wrap(SQLiteQueueConnector), config=wrong
        )


def test_recording_connector_records_a_worker_run_as_typed_events(tmp_path: Path) -> None:
    """An App over a wrapped SQLite connector: the events name what the worker did, in order,
    and the handler sees the key and headers published (the wrapped metadata)."""
    events: list[ConnectorEvent] = []
    path = str(tmp_path / "q.db")
    app = romeways.App(shutdown_timeout=2.0)
    app.connector_register(
        connector=RecordingConnector.wrap(SQLiteQueueConnector, events=events),
        config=SQLiteConnectorConfig(connector_name="db", path=path),
    )
    config = SQLiteQueueConfig(connector_name="db", frequency=0.05, sequential=True, retries=1)
    seen: list[tuple[str, bytes | None, bytes | None]] = []

    @app.queue_consumer(queue_name="jobs", config=config)
    async def handler(message: romeways.Message[str]) -> None:
        ctx = romeways.context()
        seen.append((message.payload, ctx.key, ctx.header("trace")))
        if message.payload == "again" and message.attempt == 1:
            raise romeways.ResendException()

    async def scenario() -> None:
        jobs = app.publisher(handler)
        await jobs.publish("first", key=b"k1", headers=[("trace", b"t1")])
        await jobs.publish("again")
        task = asyncio.create_task(app.start())
        try:
            while len(seen) < 3:
                assert not task.done()
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # the last ack
        finally:
            app.stop()
            await asyncio.wait_for(task, 10)
            await app.close_publishers()

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert seen == [("first", b"k1", b"t1"), ("again", None, None), ("again", None, None)]
    published = [e for e in events if isinstance(e, Published)]
    assert published == [
        Published(b"first", b"k1", (("trace", b"t1"),)),
        Published(b"again", None, ()),
    ]
    worker = [e for e in events if not isinstance(e, Published)]
    assert isinstance(worker[0], Started) and isinstance(worker[-1], Closed)
    fetched = [m for e in worker if isinstance(e, Fetched) for m in e.messages]
    assert fetched[:2] == [b"first", b"again"] and len(fetched) == 3
    (resent,) = [e for e in worker if isinstance(e, Resent)]
    assert (resent.delivery, resent.original) == (1, b"again")
    assert romeways.Message.from_message(resent.message).rw_resend_times == 1
    acked = [d for e in worker if isinstance(e, Acked) for d in e.deliveries]
    assert sorted(acked) == [0, 1, 2]
    # The resend came before the ack of its original.
    ack_of_original = next(e for e in worker if isinstance(e, Acked) and 1 in e.deliveries)
    assert worker.index(resent) < worker.index(ack_of_original)
