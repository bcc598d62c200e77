"""Input faults with the NATS JetStream connector on the shared server: a bad input mix (N6), a
crash-looping poison message that kills its worker process at every delivery (N7), and a lost
PubAck under a resend (N8)."""

from __future__ import annotations

import asyncio
import logging
import pickle
import signal
import time
from pathlib import Path

import nats.errors
import pytest

import romeways

from .inproc import start, stop, wait_until
from .ledger import Ledger, make_ids, payload
from .natsapp import RecordingNatsConnector, Settings, build_app, scenario_args
from .natshelp import (
    Streams,
    add_stream,
    fully_acked,
    nats_shared,
    publish_ids,
    run,
    stream_info,
    streams,
)
from .procs import Scenario

pytestmark = pytest.mark.timeout(90)
__all__ = ["nats_shared", "streams"]  # fixtures


class _Canary:
    """Unpickling this creates the directory ``path``: proof that someone unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.mkdir, (self.path,))


def test_nats_bad_input_mix_dead_letters_each_once_and_acks_past_it(
    tmp_path: Path, streams: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    """N6: among 40 good ids, malformed JSON, non-UTF-8 bytes, schema-invalid JSON, empty
    bytes, a pickle and 900 KB of bad JSON, plus a good 900 KB message: every good id handled
    once; each bad message dead-lettered once, logged without its payload; the pickle never
    unpickled; the worker goes on; and the consumer ends with nothing pending or unacked."""
    url, stream = streams.url, streams.new("N6")
    subject = f"faults.{stream}"
    canary = tmp_path / "UNPICKLED-CANARY"
    bad: dict[str, bytes] = {
        "malformed": b'{"id": "BADMARK-malformed", "pad": ',
        "non-utf8": b'{"id": "BADMARK-\xff\xfe\xfa"}',
        "schema": b'{"id": 12345, "pad": "BADMARK-schema"}',
        "empty": b"",
        "pickle": pickle.dumps(_Canary(str(canary))),
        "huge-bad": b'{"id": "BADMARK-huge", "pad": [' + b"1," * 450_000 + b'"x"]}',
    }
    goods = make_ids("g", 40)
    names: list[str] = []
    values: list[bytes] = []
    for i, data in enumerate(bad.values()):
        for good in goods[i * 5 : i * 5 + 5]:
            names.append(good)
            values.append(payload(good))
        names.append(f"bad-{i}")
        values.append(data)
    names += ["big", *goods[30:]]
    values += [payload("big", pad=900_000), *(payload(g) for g in goods[30:])]
    run(add_stream(url, stream, subject))
    run(publish_ids(url, subject, names, values=values))
    ledger = Ledger(tmp_path / "ledger.jsonl")
    settings = Settings(
        str(ledger.path), url, stream, subject, f"{stream}-d", frequency=0.2, ack_wait=5.0
    )
    app = build_app(settings)

    async def scenario() -> None:
        task = start(app)
        await wait_until(
            "goods handled and bad dead-lettered",
            lambda: (
                set(ledger.ids("done")) >= {*goods, "big"}
                and len(ledger.records("dead")) >= len(bad)
            ),
            40,
            task,
        )
        await asyncio.sleep(0.3)
        await stop(app, task, 10.0)

    with caplog.at_level(logging.DEBUG, logger="romeways"):
        asyncio.run(scenario())
    tally = ledger.tally([*goods, "big"])
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    assert tally.unexpected == set(), tally.summary()
    assert len(ledger.records("dead")) == len(bad)
    assert not canary.exists(), "the pickle payload was unpickled"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("dead-lettered" in m for m in messages) == len(bad)
    for message in messages:
        assert "BADMARK" not in message, "a payload was logged"
    assert fully_acked(url, stream, f"{stream}-d")


def test_nats_crash_looping_poison_message_is_dead_lettered_after_max_deliveries(
    tmp_path: Path, streams: Streams
) -> None:
    """N7: the handler kills its own worker process (SIGKILL) whenever it gets one message.
    Each crash redelivers it after ack_wait (3 s: with 1 s, a loaded machine let a good
    message's ack_wait run out during a restart, and its redelivery counted toward the budget);
    the messages that shared its chunk come back one at a time and are handled; its third
    delivery (max_deliveries=2) is dead-lettered (the hook gets it, with a reason naming the
    budget) and terminated instead of crashing the worker once more, so the app keeps running
    and consumes what comes after."""
    url, stream = streams.url, streams.new("N7")
    subject = f"faults.{stream}"
    ids = [*make_ids("g", 10), "poison", *make_ids("h", 10)]
    later = make_ids("later", 10)
    run(add_stream(url, stream, subject))
    run(publish_ids(url, subject, ids))
    options = scenario_args(
        url, stream, spawn=True, chunk=10, ack_wait=3.0, max_deliveries=2, crash_id="poison",
        max_restarts=10,
    )  # fmt: skip
    with Scenario(tmp_path, "natsapp", *options) as app:
        app.wait_for("the poison dead-lettered", lambda lg: len(lg.records("dead")) >= 1, 60)
        run(publish_ids(url, subject, later))
        goods = [i for i in [*ids, *later] if i != "poison"]
        app.wait_for("every good id", lambda lg: set(goods) <= set(lg.ids("done")), 30)
        time.sleep(3.5)  # past ack_wait: a poison message not terminated would come back
        ledger = app.ledger
        deads = ledger.records("dead")
        assert len(deads) == 1, [(r.id, r.extra) for r in deads]
        (dead,) = deads
        assert dead.id == "poison"
        assert "delivered 3 times" in dead.extra and "max_deliveries=2" in dead.extra, dead.extra
        assert ledger.ids("start")["poison"] == 2, "the poison was handled more than twice"
        assert app.log().count("exited unexpectedly with code -9") == 2
        tally = ledger.tally(goods)
        assert tally.lost == set(), tally.summary()
        dead_by_budget = [r.id for r in ledger.records("dead") if r.id != "poison"]
        assert dead_by_budget == [], "a message that shared the poison's chunk was dead-lettered"
        assert app.proc.poll() is None, "the app gave up"
        assert fully_acked(url, stream, f"{stream}-d")
        app.signal(signal.SIGTERM)
        assert app.wait_exit(10) == 0
    print(f"N7 nats poison: {tally.summary()}; dead-lettered after 2 crashes")


def test_nats_lost_puback_of_a_resend_is_retried_and_deduplicated(
    tmp_path: Path, streams: Streams, caplog: pytest.LogCaptureFixture
) -> None:
    """N8: the first PubAck of a resend is lost (JetStream stored the envelope, the answer
    never came): the connector publishes it again with the same Nats-Msg-Id, JetStream
    deduplicates it, so the stream holds one envelope, handled once, and the original is acked
    once."""
    url, stream = streams.url, streams.new("N8")
    subject = f"faults.{stream}"
    run(add_stream(url, stream, subject))
    run(publish_ids(url, subject, ["resend-me", *make_ids("g", 5)]))
    ledger = Ledger(tmp_path / "ledger.jsonl")
    settings = Settings(str(ledger.path), url, stream, subject, f"{stream}-d", frequency=0.2)
    app = romeways.App(shutdown_timeout=5.0)
    lost: list[str] = []

    class LosingPubAck(RecordingNatsConnector):
        async def on_start(self) -> None:
            await super().on_start()
            js = self._link.js
            assert js is not None
            real = js.publish

            async def publish(*args: object, **kwargs: object) -> object:
                ack = await real(*args, **kwargs)  # type: ignore[arg-type]
                if not lost:  # stored, but the answer is lost on the way back
                    lost.append(str(ack.seq))
                    raise nats.errors.TimeoutError
                return ack

            object.__setattr__(js, "publish", publish)

    config = build_app(settings).routes[0].config
    app.connector_register(
        connector=LosingPubAck,
        config=romeways.NatsConnectorConfig(connector_name="nats-faults", servers=url),
    )

    @app.queue_consumer(queue_name="faults", config=config)
    async def handle(message: romeways.Message[dict[str, str]]) -> None:
        item_id = message.payload["id"]
        ledger.write("start", item_id, message.rw_resend_times)
        if item_id == "resend-me" and message.rw_resend_times == 0:
            raise romeways.ResendException()
        ledger.write("done", item_id, message.rw_resend_times)

    async def scenario() -> None:
        task = start(app)
        await wait_until("the resend handled", lambda: "resend-me" in ledger.ids("done"), 30, task)
        await asyncio.sleep(0.5)
        await stop(app, task, 10.0)

    with caplog.at_level(logging.INFO, logger="romeways"):
        asyncio.run(scenario())
    assert lost, "no PubAck was lost"
    messages = [r.getMessage() for r in caplog.records]
    assert any("got no PubAck" in m and "same message id" in m for m in messages), messages
    assert any("deduplicated" in m for m in messages)
    assert [r.attempt for r in ledger.records("start") if r.id == "resend-me"] == [0, 1]
    assert ledger.ids("done")["resend-me"] == 1
    assert run(stream_info(url, stream)).state.messages == 7  # 6 published + one envelope
    assert fully_acked(url, stream, f"{stream}-d")
