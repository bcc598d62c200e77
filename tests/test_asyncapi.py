"""``romeways asyncapi``: the document of an app on every connector is valid AsyncAPI 3.0.0 (the
official JSON Schema, from @asyncapi/specs), names the right servers, channels and operations,
describes the bytes romeways really writes, and never holds a secret."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from asyncapi_app import CANARIES, Audit, Charge, Chargeback, Order, Refund
from asyncapi_spec import VERSION, asyncapi_3_schema, tarball

import romeways
from romeways import Message, RomewaysError
from romeways._message import Codec

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = asyncapi_3_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "romeways", "asyncapi", "asyncapi_app:app", *args],
        capture_output=True,
        timeout=60,
        cwd=TESTS,
        env=env,
    )


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The CLI's output in both formats: JSON to stdout, YAML to --output."""
    as_json = _cli("--title", "Shop", "--api-version", "2.1.0")
    assert as_json.returncode == 0, as_json.stderr
    out = tmp_path_factory.mktemp("asyncapi") / "shop.yaml"
    as_yaml = _cli("--format", "yaml", "--output", str(out))
    assert as_yaml.returncode == 0 and as_yaml.stdout == b"", as_yaml.stderr
    return {"json": as_json.stdout, "yaml": out.read_bytes()}


def _errors(validator: jsonschema.Draft7Validator, document: object) -> list[str]:
    return [f"{e.json_path}: {e.message[:300]}" for e in validator.iter_errors(document)]


def test_json_and_yaml_output_are_valid_asyncapi_3(
    validator: jsonschema.Draft7Validator, documents: dict[str, bytes]
) -> None:
    as_json = json.loads(documents["json"])
    as_yaml = msgspec.yaml.decode(documents["yaml"])
    assert _errors(validator, as_json) == []
    assert _errors(validator, as_yaml) == []
    assert as_json["asyncapi"] == "3.0.0"
    assert as_json["info"]["title"] == "Shop" and as_json["info"]["version"] == "2.1.0"
    assert as_yaml["info"]["title"] == "asyncapi_app:app"  # the target, without --title
    del as_json["info"], as_yaml["info"]
    assert as_json == as_yaml


def test_the_validator_rejects_what_asyncapi_3_forbids(
    validator: jsonschema.Draft7Validator,
) -> None:
    """The schema is really applied: a server without host, an unknown server field and an
    OpenAPI-style discriminator object (what msgspec writes, converted by romeways) fail."""
    document: Any = romeways.asyncapi_document(_app_module().app)
    assert _errors(validator, document) == []
    broken = json.loads(json.dumps(document))
    del broken["servers"]["kafka"]["host"]
    broken["servers"]["redis"]["password"] = "x"
    payload = broken["components"]["messages"]["ChargeOrChargeback"]["payload"]
    payload["discriminator"] = {"propertyName": "type"}
    assert len(_errors(validator, broken)) == 3


def _app_module() -> Any:
    import asyncapi_app

    return asyncapi_app


def test_servers_one_per_connector_without_secrets(documents: dict[str, bytes]) -> None:
    servers = json.loads(documents["json"])["servers"]
    assert set(servers) == {
        "mem",
        "kafka",
        "redis",
        "redis2",
        "rabbit",
        "nats",
        "nats2",
        "nats3",
    }
    kafka = servers["kafka"]
    assert (kafka["host"], kafka["protocol"]) == ("kafka-1.example:9093", "kafka-secure")
    assert "kafka-2.example:9093" in kafka["description"]
    assert kafka["security"] == [{"type": "scramSha512"}]
    assert servers["redis"] == {
        "host": "redis.example:6380",
        "pathname": "/2",
        "protocol": "redis",
        "description": "Redis Streams (RedisConnectorConfig, TLS)",
        "security": [{"type": "userPassword"}],
    }
    rabbit = servers["rabbit"]
    assert (rabbit["host"], rabbit["pathname"], rabbit["protocol"]) == (
        "rabbit.example:5671",
        "/shop",
        "amqps",
    )
    assert rabbit["protocolVersion"] == "0-9-1"
    assert (servers["nats"]["host"], servers["nats"]["protocol"]) == ("nats-1.example:4222", "nats")
    assert servers["nats2"]["host"] == "nats-3.example:4222"
    assert servers["nats3"]["host"] == "nats-4.example:4222"
    assert servers["nats"]["description"] == (
        "NATS JetStream (NatsConnectorConfig, TLS); also at nats-2.example:4222"
    )
    assert servers["mem"]["protocol"] == "romeways-memory"


def test_no_secret_in_either_format(documents: dict[str, bytes]) -> None:
    for text in documents.values():
        found = [name for name, canary in CANARIES.items() if canary.encode() in text]
        assert found == []
        assert b"app@" not in text and b"//app" not in text  # no URL user part either
    # The canaries are in the configs the document was made from (so their absence means
    # something): each is the value of a config field or inside a URL field.
    app = _app_module().app
    held = repr([msgspec.structs.asdict(r.config) for r in app.connectors.values()])
    assert all(canary in held for canary in CANARIES.values())


def test_channels_one_per_queue_at_the_backend_address(documents: dict[str, bytes]) -> None:
    channels = json.loads(documents["json"])["channels"]
    addresses = {cid: (c["address"], c["servers"][0]["$ref"]) for cid, c in channels.items()}
    assert addresses == {
        "audit": ("audit", "#/servers/mem"),
        "orders": ("shop.orders", "#/servers/kafka"),
        "refunds": ("refunds", "#/servers/redis"),
        "notes": ("notes", "#/servers/rabbit"),
        "payments": ("payments.in", "#/servers/nats"),
        "invoices": ("shop.invoices", "#/servers/kafka"),
        "raw": ("raw", "#/servers/mem"),
        "alerts": ("alerts", "#/servers/nats2"),
    }
    assert set(channels["payments"]["messages"]) == {
        "ChargeOrChargeback",
        "ChargeOrChargeback.resend",
    }
    assert "consumer group 'accounting'" in channels["refunds"]["description"]
    assert channels["orders"]["bindings"] == {
        "kafka": {"topic": "shop.orders", "bindingVersion": "0.5.0"}
    }
    assert channels["notes"]["bindings"]["amqp"]["queue"] == {"name": "notes"}
    assert "bindings" not in channels["refunds"]


def test_operations_receive_per_handler_send_per_handle(documents: dict[str, bytes]) -> None:
    operations = json.loads(documents["json"])["operations"]
    actions = {oid: (op["action"], op["channel"]["$ref"]) for oid, op in operations.items()}
    receives = {oid for oid, (action, _) in actions.items() if action == "receive"}
    assert receives == {f"receive.{q}" for q in ("audit", "orders", "refunds", "notes", "payments")}
    sends = {oid for oid in actions if oid.startswith("send.")}
    # publisher(ship) twice is one handle; notes, invoices, raw and alerts one each.
    assert sends == {f"send.{q}" for q in ("orders", "notes", "invoices", "raw", "alerts")}
    assert operations["receive.orders"]["title"] == "asyncapi_app.ship"
    assert operations["receive.orders"]["bindings"]["kafka"]["groupId"] == {
        "type": "string",
        "enum": ["shipping"],
    }
    assert "Ship an order." in operations["receive.orders"]["description"]
    assert "retries=5" in operations["receive.notes"]["description"]
    assert [m["$ref"] for m in operations["send.invoices"]["messages"]] == [
        "#/channels/invoices/messages/listOfint"
    ]
    assert [m["$ref"] for m in operations["resend.orders"]["messages"]] == [
        "#/channels/orders/messages/Order.resend"
    ]


def _payload_validator(document: dict[str, Any], message: str) -> jsonschema.Draft7Validator:
    """A validator of one message's payload schema, its $refs resolved in the document."""
    return jsonschema.Draft7Validator(
        {**document, "$ref": f"#/components/messages/{message}/payload"}
    )


SAMPLES: list[tuple[str, Any, Any]] = [
    ("Order", Order, Order(order_id=7, items=["book"], note=None)),
    ("Refund", Refund, Refund(order_id=7, cents=250)),
    ("Audit", Audit, Audit(actor="ann", action="refund")),
    ("ChargeOrChargeback", Charge | Chargeback, Chargeback(charge_id="c1", reason="fraud")),
    ("listOfint", list[int], [1, 2, 3]),
    ("str", str, "hello"),
    ("bytes", bytes, b"\x00\xff"),
]


def test_message_schemas_describe_the_bytes_romeways_writes() -> None:
    """Each payload, encoded as a publish and as a resend by romeways' own codec: the fresh
    bytes (JSON ones decoded) validate against the fresh message's schema, the resend envelope
    against the resend message's, and a wrong payload does not."""
    document: Any = romeways.asyncapi_document(_app_module().app)
    for label, payload_type, payload in SAMPLES:
        codec: Codec[Any] = Codec(payload_type)
        message = document["components"]["messages"][label]
        fresh = codec.encode_payload(payload)
        if message["contentType"] == "application/json":
            _payload_validator(document, label).validate(json.loads(fresh))
            assert not _payload_validator(document, label).is_valid({"unexpected": [None]})
        elif payload_type is str:
            assert message["contentType"] == "text/plain" and fresh == b"hello"
        else:
            assert message["contentType"] == "application/octet-stream" and fresh == payload
        resend = json.loads(codec.encode_resend(codec.decode(fresh)))
        assert resend["rw_resend_times"] == 1
        _payload_validator(document, f"{label}.resend").validate(resend)
        assert not _payload_validator(document, f"{label}.resend").is_valid(
            {"payload": resend["payload"]}
        )


def test_handles_are_recorded_once_per_queue_config_and_type() -> None:
    app = romeways.App()
    app.connector_register(
        connector=romeways.MemoryQueueConnector,
        config=romeways.MemoryConnectorConfig(connector_name="m"),
    )
    config = romeways.MemoryQueueConfig(connector_name="m", queue=multiprocessing.Queue())

    @app.queue_consumer(queue_name="q", config=config)
    async def handle(message: Message[int]) -> None:
        pass

    for _ in range(3):
        app.publisher(handle)
        app.queue_handle("q", int)
    app.queue_handle("q", str)
    assert [(h.queue_name, h.payload_type) for h in app.queue_handles] == [
        ("q", int),
        ("q", int),  # given no config (the consumer's is used): another handle than publisher's
        ("q", str),
    ]
    document: Any = romeways.asyncapi_document(app, title="t", version="1")
    assert set(document["operations"]) == {"receive.q", "resend.q", "send.q.int", "send.q.str"}


def test_a_queue_on_an_unregistered_connector_is_an_error() -> None:
    app = romeways.App()
    config = romeways.MemoryQueueConfig(connector_name="nowhere", queue=multiprocessing.Queue())
    app.queue_handle("q", int, config=config)
    with pytest.raises(RomewaysError, match="queue 'q' names connector 'nowhere'"):
        romeways.asyncapi_document(app)


def test_a_secret_that_would_show_is_refused_not_written() -> None:
    """A Redis password that is also a stream name would appear; the document is refused and
    the error names connector and field, not the value."""
    from romeways import RedisConnectorConfig, RedisQueueConfig, RedisQueueConnector

    app = romeways.App()
    app.connector_register(
        connector=RedisQueueConnector,
        config=RedisConnectorConfig(connector_name="r", password="orders-stream"),
    )

    @app.queue_consumer(
        queue_name="q",
        config=RedisQueueConfig(connector_name="r", stream="orders-stream", group="g"),
    )
    async def handle(message: Message[int]) -> None:
        pass

    with pytest.raises(
        RomewaysError, match="connector 'r' would show the value of its secret"
    ) as e:
        romeways.asyncapi_document(app)
    assert "orders-stream" not in str(e.value)


def test_yaml_without_pyyaml_says_what_to_install(tmp_path: Path) -> None:
    """PyYAML hidden (a module that fails to import, first on the path): exit 2 and the hint."""
    (tmp_path / "yaml.py").write_text("raise ImportError('no PyYAML here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS)])}
    result = _cli("--format", "yaml", env=env)
    assert result.returncode == 2
    assert b"pip install 'romeways[asyncapi]'" in result.stderr


def test_output_to_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    result = _cli("--output", str(tmp_path / "missing" / "out.json"))
    assert result.returncode == 2
    assert b"--output" in result.stderr and b"cannot write it" in result.stderr


def test_the_docs_example_runs_and_its_document_is_as_the_page_says(
    tmp_path: Path, validator: jsonschema.Draft7Validator
) -> None:
    """docs/asyncapi.md's example, as a file: ``python shop.py`` and ``romeways asyncapi
    shop:app`` print valid documents with the servers, channels and operations it lists."""
    page = (TESTS.parent / "docs" / "asyncapi.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", page, re.S)
    (tmp_path / "shop.py").write_text(block)
    run = [sys.executable, "shop.py"]
    printed = subprocess.run(run, capture_output=True, timeout=60, cwd=tmp_path, check=True)
    command = [sys.executable, "-m", "romeways", "asyncapi", "shop:app"]
    written = subprocess.run(command, capture_output=True, timeout=60, cwd=tmp_path, check=True)
    # Run as a script its module is __main__, which names the handler.
    by_script = json.loads(printed.stdout.replace(b"__main__.ship", b"shop.ship"))
    by_cli = json.loads(written.stdout)
    for document in (by_script, by_cli):
        assert _errors(validator, document) == []
    assert (by_script["info"]["title"], by_cli["info"]["title"]) == ("Shop", "shop:app")
    del by_script["info"], by_cli["info"]
    assert by_script == by_cli
    assert by_cli["servers"]["kafka"]["host"] == "127.0.0.1:9092"
    assert by_cli["servers"]["kafka"]["protocol"] == "kafka"
    assert set(by_cli["servers"]) == {"kafka", "mem"}
    assert by_cli["channels"]["orders"]["address"] == "shop.orders"
    assert set(by_cli["channels"]) == {"orders", "refunds"}
    assert set(by_cli["operations"]) == {"receive.orders", "resend.orders", "send.refunds"}
    assert by_cli["operations"]["receive.orders"]["title"] == "shop.ship"
    components = by_cli["components"]
    assert set(components["messages"]) == {"Order", "Order.resend", "Refund", "Refund.resend"}
    assert set(components["schemas"]) == {"Order", "Refund"}


def test_a_schema_tarball_that_does_not_match_the_pinned_hash_is_refused(tmp_path: Path) -> None:
    forged = tmp_path / f"asyncapi-specs-{VERSION}.tgz"
    forged.write_bytes(b"not the package")
    with pytest.raises(RuntimeError, match="integrity sha512-"):
        tarball(tmp_path)
    assert not forged.exists()
