"""Input and secret faults with the Kafka connector: a bad input mix (#8) and a canary password
that must never show up through an authentication failure, a handler error and a resend, with
DEBUG logging on (#12)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from broker import (
    SASL_ENV_VAR,
    AuthenticatedBroker,
    Broker,
    external_authenticated_broker,
    start_authenticated_broker,
    start_broker,
    unique_name,
)

import romeways

from .inproc import start, stop, wait_until
from .kafkaapp import CANARY_USER, RecordingKafkaConnector, Settings, build_app
from .kafkahelp import fully_committed, new_topic, produce_ids, run, scenario_args
from .ledger import Ledger, make_ids, payload
from .procs import Scenario

pytestmark = pytest.mark.timeout(90)

CANARY = "CANARY-pw-7f3c9e1d"


class _Canary:
    """Unpickling this creates the directory ``path``: proof that someone unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.mkdir, (self.path,))


def test_kafka_bad_input_mix_dead_letters_each_once_and_commits_past_it(
    tmp_path: Path, fault_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """#8 (Kafka): among 40 good ids, malformed JSON, non-UTF-8 bytes, schema-invalid JSON, empty
    bytes, a tombstone, a pickle and 900 KB of bad JSON, plus a good 900 KB message: every good
    id handled once; each bad message dead-lettered once and logged once without its payload;
    the tombstone skipped (logged, not dead-lettered); the pickle never unpickled; the worker
    goes on; and the group's offsets are committed to the end of the partition."""
    bootstrap = fault_broker.bootstrap
    topic, group = unique_name("f8"), unique_name("g8")
    new_topic(bootstrap, topic, 1)
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
    later = make_ids("later", 5)
    names: list[str] = []
    values: list[bytes | None] = []
    for i, data in enumerate([*bad.values(), None]):
        for good in goods[i * 5 : i * 5 + 5]:
            names.append(good)
            values.append(payload(good))
        names.append(f"bad-{i}")
        values.append(data)
    names += ["big", *goods[35:]]
    values += [payload("big", pad=900_000), *(payload(g) for g in goods[35:])]
    run(produce_ids(bootstrap, topic, names, values=values))
    ledger = Ledger(tmp_path / "ledger.jsonl")
    app = build_app(Settings(str(ledger.path), bootstrap, topic, group, frequency=0.2))

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
        await asyncio.to_thread(run, produce_ids(bootstrap, topic, later))
        await wait_until(
            "later ids handled", lambda: set(ledger.ids("done")) >= set(later), 20, task
        )
        await asyncio.sleep(0.3)
        await stop(app, task, 10.0)

    with caplog.at_level(logging.DEBUG, logger="romeways"):
        asyncio.run(scenario())
    tally = ledger.tally([*goods, "big", *later])
    assert tally.lost == set() and tally.duplicate_count == 0, tally.summary()
    assert tally.unexpected == set(), tally.summary()
    assert len(ledger.records("dead")) == len(bad)
    assert not canary.exists(), "the pickle payload was unpickled"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("dead-lettered" in m for m in messages) == len(bad)
    assert sum("skipped a tombstone" in m for m in messages) == 1
    for record in caplog.records:
        text = record.getMessage() + (record.exc_text or "")
        assert "BADMARK" not in text and "CANARY" not in text, text
    deadline = time.monotonic() + 10
    while not fully_committed(bootstrap, topic, group, 1):
        assert time.monotonic() < deadline, "the offsets never reached the end of the partition"
        time.sleep(0.3)


def test_kafka_secret_canary_never_logged_through_auth_failure(tmp_path: Path) -> None:
    """#12, authentication failure: SCRAM login with a canary password against Tansu's own
    ``--authentication`` (which knows no user, so it refuses every login), DEBUG logs of
    romeways and aiokafka on, in a worker process: the worker fails at start-up, the parent
    exits non-zero naming the failure, and the canary appears nowhere in the output nor in the
    config's repr. The handler-error and resend legs are the tests below."""
    from romeways.connectors.kafka import KafkaConnectorConfig

    config = KafkaConnectorConfig(
        connector_name="k",
        bootstrap_server="127.0.0.1:9",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_plain_username="u",
        sasl_plain_password=CANARY,
    )
    assert CANARY not in repr(config) and CANARY not in str(config)
    with start_broker(use_env=False, authentication=True) as broker:
        options = scenario_args(
            broker.bootstrap,
            "secrets",
            "secrets",
            spawn=True,
            password=CANARY,
            mechanism="SCRAM-SHA-256",
            startup_timeout=3,
            log_level="DEBUG",
        )
        with Scenario(tmp_path, "kafkaapp", *options) as app:
            code = app.wait_exit(30)
            output = app.log()
    assert code != 0
    assert "SaslAuthenticate" in output or "authentication" in output.lower(), output[-3000:]
    assert "failed at start-up" in output
    assert CANARY not in output, "the password leaked into the output"


@contextlib.contextmanager
def authenticated_broker(mechanism: str | None, tmp_path: Path) -> Iterator[AuthenticatedBroker]:
    """Tansu behind a SASL gateway that accepts only ``CANARY_USER`` with the ``CANARY``
    password by ``mechanism`` (None: PLAIN), or the broker of ROMEWAYS_TEST_KAFKA_SASL with its
    own login (a test asking for another mechanism is skipped then)."""
    external = external_authenticated_broker()
    if external is not None and mechanism not in (None, external.mechanism):
        pytest.skip(f"{SASL_ENV_VAR} names a {external.mechanism} broker, not {mechanism}")
    mechanism = mechanism or "PLAIN"
    with start_authenticated_broker(
        CANARY_USER, CANARY, mechanism, log_path=tmp_path / "tansu.log"
    ) as broker:
        yield broker


def test_sasl_gateway_refuses_a_wrong_password_and_a_client_without_login(
    tmp_path: Path,
) -> None:
    """The SASL gateway the #12 tests log in through does check: a wrong password (PLAIN and
    SCRAM) and a client that does not log in at all are refused, the right one gets in."""
    if external_authenticated_broker() is not None:
        pytest.skip(f"{SASL_ENV_VAR} names an external broker: no gateway to check")

    async def connects(bootstrap: str, **options: Any) -> bool:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000, **options)
        try:
            await producer.start()
        except KafkaError:
            return False
        finally:
            await producer.stop()
        return True

    for mechanism in ("PLAIN", "SCRAM-SHA-512"):
        with start_authenticated_broker(CANARY_USER, CANARY, mechanism, use_env=False) as broker:
            assert broker.gateway is not None
            wrong = {**broker.client_options(), "sasl_plain_password": "not-" + CANARY}
            assert not run(connects(broker.bootstrap, **wrong))
            assert not run(connects(broker.bootstrap))
            stats = broker.gateway.stats
            assert stats.failures == {mechanism: 1} and stats.refused >= 1, stats
            assert stats.login_count == 0, stats
            assert run(connects(broker.bootstrap, **broker.client_options()))
            assert stats.logins.get(mechanism, 0) >= 1, stats


def _record_texts(record: logging.LogRecord) -> list[str]:
    """Everything of a log record a handler could write: its message, msg and args, every
    attribute (extras included), and its exception formatted with causes and context."""
    texts = [record.getMessage(), repr(record.msg), repr(record.args), repr(vars(record))]
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        texts += [*traceback.format_exception(exc), repr(exc), repr(exc.args)]
    texts += [record.exc_text or "", record.stack_info or ""]
    return texts


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_kafka_secret_canary_never_leaks_through_handler_error_and_resend(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mechanism: str
) -> None:
    """#12, handler error and resend: over a SASL-authenticated connection (the canary is the
    password of KafkaConnectorConfig), DEBUG logs of romeways and aiokafka on, in the test's
    own process: one handler raises (dead-lettered and logged with its traceback), one raises
    ResendException (produced back and handled again), six others pass. The canary appears in
    no log record (message, args, attributes, traceback), no dead letter, no repr/str of the
    config or the connectors, and not in the ledger; every leg is shown to have happened, on
    connections that logged in. PLAIN puts the password on the wire, and aiokafka's DEBUG log
    of the SaslAuthenticate request with it: that record must be there, redacted."""
    with authenticated_broker(mechanism, tmp_path) as broker:
        canary = broker.password
        security = broker.client_options()
        topic, group = unique_name("f12"), unique_name("g12")
        new_topic(broker.bootstrap, topic, 1, security=security)
        goods = make_ids("ok", 6)
        error_id, resend_id = "boom-000000", "again-000000"
        ids = [*goods[:3], error_id, resend_id, *goods[3:]]
        run(produce_ids(broker.bootstrap, topic, ids, security=security))
        ledger = Ledger(tmp_path / "ledger.jsonl")
        settings = Settings(
            str(ledger.path),
            broker.bootstrap,
            topic,
            group,
            frequency=0.2,
            password=canary,
            username=broker.username,
            mechanism=broker.mechanism,
            error_id=error_id,
            resend_id=resend_id,
        )
        letters: list[romeways.DeadLetter] = []
        RecordingKafkaConnector.instances.clear()
        app = build_app(settings, letters.append)

        async def scenario() -> None:
            task = start(app)
            await wait_until(
                "the good and the resent ids handled, the failing one dead-lettered",
                lambda: (
                    set(ledger.ids("done")) >= {*goods, resend_id}
                    and error_id in ledger.ids("dead")
                ),
                30,
                task,
            )
            await asyncio.sleep(0.3)
            await stop(app, task, 10.0)

        for name in (None, "romeways", "aiokafka"):
            caplog.set_level(logging.DEBUG, logger=name)
        asyncio.run(scenario())
        deadline = time.monotonic() + 10
        while not fully_committed(broker.bootstrap, topic, group, 1, security=security):
            assert time.monotonic() < deadline, "the offsets never reached the end"
            time.sleep(0.3)
        if broker.gateway is not None:
            stats = broker.gateway.stats
            assert stats.failures == {} and stats.refused == 0, stats
            # the consumer's bootstrap and coordinator connections and the producer's, at least
            assert stats.logins.get(mechanism, 0) >= 3, stats

    # The legs happened: every good id once, the resent one twice (resend_times 0 then 1),
    # the failing one dead-lettered once, logged with its traceback.
    assert ledger.ids("done") == {**dict.fromkeys(goods, 1), resend_id: 1}
    assert [r.attempt for r in ledger.records("start") if r.id == resend_id] == [0, 1]
    assert ledger.ids("resend") == {resend_id: 1}
    assert ledger.ids("dead") == {error_id: 1}
    assert len(letters) == 1 and letters[0].resend_times == 0
    assert "handler raised RuntimeError" in letters[0].reason
    records = caplog.records
    failed = [r for r in records if "failed: RuntimeError" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
    logins = [r for r in records if f"via {mechanism}" in r.getMessage()]
    assert logins and all(broker.username in r.getMessage() for r in logins)
    debug = {r.name.split(".")[0] for r in records if r.levelno == logging.DEBUG}
    assert {"aiokafka", "romeways"} <= debug, debug
    if mechanism == "PLAIN":  # the request that carried the password was logged, redacted
        sasl = [r for r in records if "SaslAuthenticateRequest" in r.getMessage()]
        assert sasl and all("***" in r.getMessage() for r in sasl)

    # ... and the canary is nowhere.
    connectors = RecordingKafkaConnector.instances
    assert connectors
    texts = [caplog.text, ledger.path.read_text()]
    for record in records:
        texts += _record_texts(record)
    for letter in letters:
        texts += [repr(letter), str(letter), letter.reason, letter.data.decode(errors="replace")]
    for connector in connectors:
        texts += [repr(connector), str(connector)]
        texts += [repr(connector.connector_config), str(connector.connector_config)]
    leaks = [text for text in texts if canary in text]
    assert not leaks, f"the password leaked into: {leaks[0][:2000]}"


def test_kafka_secret_canary_never_in_worker_output_through_handler_error_and_resend(
    tmp_path: Path,
) -> None:
    """#12 in a worker process (the supervisor's and the worker's output, DEBUG on for
    romeways and aiokafka): PLAIN login with the canary password through the SASL gateway; a
    handler error (dead-lettered, logged with its traceback) and a resend (handled again);
    SIGTERM then. The canary appears nowhere in the output, which shows the logins, the
    failure, the resend and the clean exit."""
    with authenticated_broker(None, tmp_path) as broker:
        canary = broker.password
        security = broker.client_options()
        topic, group = unique_name("f12p"), unique_name("g12p")
        new_topic(broker.bootstrap, topic, 1, security=security)
        goods = make_ids("ok", 4)
        error_id, resend_id = "boom-000000", "again-000000"
        run(produce_ids(broker.bootstrap, topic, [error_id, resend_id, *goods], security=security))
        options = scenario_args(
            broker.bootstrap,
            topic,
            group,
            spawn=True,
            frequency=0.2,
            password=canary,
            username=broker.username,
            mechanism=broker.mechanism,
            error_id=error_id,
            resend_id=resend_id,
            log_level="DEBUG",
        )
        with Scenario(tmp_path, "kafkaapp", *options) as app:
            app.wait_for(
                "the good and the resent ids handled, the failing one dead-lettered",
                lambda ledger: (
                    set(ledger.ids("done")) >= {*goods, resend_id}
                    and error_id in ledger.ids("dead")
                ),
                40,
            )
            time.sleep(0.3)
            app.signal(signal.SIGTERM)
            code = app.wait_exit(20)
            output = app.log()
            ledger = app.ledger
        if broker.gateway is not None:
            assert broker.gateway.stats.failures == {}, broker.gateway.stats
            assert broker.gateway.stats.login_count >= 3, broker.gateway.stats
    assert code == 0, output[-3000:]
    assert ledger.ids("done") == {**dict.fromkeys(goods, 1), resend_id: 1}
    assert ledger.ids("dead") == {error_id: 1}
    assert [r.attempt for r in ledger.records("start") if r.id == resend_id] == [0, 1]
    assert f"Authenticated as {broker.username} via {broker.mechanism}" in output
    assert "failed: RuntimeError" in output and "Traceback" in output
    assert " DEBUG aiokafka" in output and " DEBUG romeways" in output, output[-3000:]
    assert "SaslAuthenticateRequest" in output
    assert canary not in output, "the password leaked into the worker's output"
