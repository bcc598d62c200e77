"""Runtime and static agree: each misuse in typecheck/fail is also refused when it runs, at the
very line mypy flags, with an error that says what is wrong and where.

Each fail sample is executed as it is (one misuse per file); users without a type checker get
the error at registration (or, for a missing config field, at construction) instead of a worker
that never runs.
"""

from __future__ import annotations

import ast
import asyncio
import runpy
import traceback
from pathlib import Path

import msgspec
import pytest

import romeways

ROOT = Path(__file__).resolve().parent.parent
FAIL_DIR = ROOT / "typecheck" / "fail"

# sample -> (the exception, fragments its message must contain)
EXPECTED: dict[str, tuple[type[Exception], tuple[str, ...]]] = {
    "fail_handler_sync_def": (
        romeways.RegistrationError,
        ("'orders'", "handler", "MemoryQueueConfig(connector_name='mem')", "'async def'"),
    ),
    "fail_handler_param_not_message": (
        romeways.RegistrationError,
        ("'orders'", "handler", "parameter 'message'", "annotate it romeways.Message"),
    ),
    "fail_handler_two_params": (
        romeways.RegistrationError,
        ("'orders'", "handler", "exactly one required positional parameter", "message, db"),
    ),
    "fail_handler_required_keyword": (
        romeways.RegistrationError,
        ("'orders'", "handler", "exactly one required positional parameter", "db"),
    ),
    "fail_handler_no_params": (
        romeways.RegistrationError,
        ("'orders'", "handler", "exactly one required positional parameter", "none"),
    ),
    # Batch handlers (issue 19): the wrong decorator for the handler's parameter.
    "fail_batch_handler_as_single": (
        romeways.RegistrationError,
        ("@queue_consumer(queue_name='orders')", "handler", "a batch", "@batch_consumer"),
    ),
    "fail_single_handler_as_batch": (
        romeways.RegistrationError,
        ("@batch_consumer(queue_name='orders')", "handler", "a single message", "@queue_consumer"),
    ),
    # Refused at the call of queue_consumer (issue 14), before there is a handler to name.
    "fail_queue_config_is_connector_config": (
        romeways.RegistrationError,
        ("@queue_consumer(queue_name='orders')", "MemoryConnectorConfig", "GenericQueueConfig"),
    ),
    "fail_connector_config_mismatch": (
        romeways.RegistrationError,
        ("MemoryQueueConnector", "RedisConnectorConfig", "takes a MemoryConnectorConfig"),
    ),
    "fail_typed_connector_generic_config": (
        romeways.RegistrationError,
        ("RedisConnector", "GenericConnectorConfig", "takes a RedisConnectorConfig"),
    ),
    "fail_kafka_config_to_memory": (
        romeways.RegistrationError,
        ("MemoryQueueConnector", "KafkaConnectorConfig", "takes a MemoryConnectorConfig"),
    ),
    "fail_memory_config_to_kafka": (
        romeways.RegistrationError,
        ("KafkaQueueConnector", "MemoryConnectorConfig", "takes a KafkaConnectorConfig"),
    ),
    "fail_not_a_connector": (
        romeways.RegistrationError,
        ("Poller", "does not implement the connector protocol", "get_messages", "on_start"),
    ),
    "fail_connector_instance": (
        romeways.RegistrationError,
        ("MemoryQueueConnector object", "give the connector class itself"),
    ),
    "fail_missing_config_field": (
        romeways.ConfigFieldError,
        ("MemoryQueueConfig: missing required field 'queue'",),
    ),
    "fail_missing_custom_config_field": (
        romeways.ConfigFieldError,
        ("RegionQueueConfig: missing required field 'region'",),
    ),
    "fail_contract_connector_mismatch": (
        romeways.RegistrationError,
        ("TestEcho.connector = EchoConnector", "takes EchoConfig", "MemoryConnectorConfig"),
    ),
    # Issue 14: a field of the wrong type, a 0.2 connector that cannot take queue_name.
    "fail_retry_on_not_exception": (
        romeways.ConfigError,
        ("GenericQueueConfig.retry_on=(<class 'int'>,) is invalid", "Exception subclasses"),
    ),
    "fail_dead_letter_queue_not_a_target": (
        romeways.RegistrationError,
        ("@queue_consumer(queue_name='q')", "romeways.DeadLetterQueue or None"),
    ),
    "fail_config_field_wrong_type": (
        romeways.ConfigError,
        ("GenericQueueConfig.max_chunk_size=2.5 is invalid", "give an int"),
    ),
    "fail_connector_without_queue_name": (
        romeways.RegistrationError,
        ("LegacyConnector(...) does not take queue_name", "queue_name: str | None = None"),
    ),
    # Publishing (issue 7): the misuse is in ``async def produce()``, run with the connector up.
    "fail_publish_handle_wrong_payload": (TypeError, ("'counts'", "int", "str")),
    "fail_publish_wrong_payload": (TypeError, ("'orders'", "Order", "str")),
    "fail_publish_union_wrong_member": (TypeError, ("'money'", "str", "Refund | ", "Charge")),
    "fail_testkit_publish_wrong_payload": (TypeError, ("'orders'", "str", "Order")),
    # Plain config subclasses (issue 14): frozen and keyword-only, as the checkers see them.
    "fail_config_subclass_assign": (AttributeError, ("immutable type: 'RegionQueueConfig'",)),
    "fail_config_subclass_positional": (TypeError, ("keyword arguments",)),
    "fail_config_subclass_not_frozen": (
        romeways.ConfigError,
        ("class MutableQueueConfig(frozen=False)", "frozen and keyword-only"),
    ),
}

# Misuses the types reject that runtime lets through today: a strict xfail, so fixing the
# runtime check turns the test red until the entry goes.
NOT_YET_AT_RUNTIME: dict[str, str] = {}
if not hasattr(msgspec, "StructMeta"):
    NOT_YET_AT_RUNTIME["fail_config_subclass_not_frozen"] = (
        "msgspec < 0.20 has no StructMeta: a config class cannot refuse frozen=False"
    )


def statement_lines(path: Path, line: int) -> tuple[int, int] | None:
    """The first and last line of the top-level statement holding ``line`` (decorators too)."""
    for node in ast.parse(path.read_text()).body:
        decorators = getattr(node, "decorator_list", [])
        first = min([node.lineno, *(d.lineno for d in decorators)])
        if first <= line <= (node.end_lineno or node.lineno):
            return first, node.end_lineno or node.lineno
    return None


def tagged_lines(path: Path) -> list[int]:
    return [n for n, text in enumerate(path.read_text().splitlines(), 1) if "# expect:" in text]


def test_every_fail_sample_has_a_runtime_expectation() -> None:
    samples = {p.stem for p in FAIL_DIR.glob("*.py")}
    assert samples == set(EXPECTED), {
        "samples without a runtime expectation": sorted(samples - set(EXPECTED)),
        "expectations without a sample": sorted(set(EXPECTED) - samples),
    }


@pytest.mark.parametrize(
    "sample",
    [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(strict=True, reason=NOT_YET_AT_RUNTIME[name])]
            if name in NOT_YET_AT_RUNTIME
            else [],
        )
        for name in sorted(EXPECTED)
    ],
)
def test_misuse_is_refused_at_runtime_where_mypy_flags_it(
    sample: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = FAIL_DIR / f"{sample}.py"
    exc_type, fragments = EXPECTED[sample]
    (line,) = tagged_lines(path)  # one misuse per sample, so it is the one that raises
    # Samples using the module-level functions act on a fresh default app, not this process's.
    monkeypatch.setattr(romeways, "default_app", romeways.App())
    with pytest.raises(Exception) as info:
        namespace = runpy.run_path(str(path), run_name=sample)
        if "produce" in namespace:  # a misuse at publish time: publish with the connector up
            namespace["app"].connector_register(
                connector=romeways.MemoryQueueConnector,
                config=romeways.MemoryConnectorConfig(connector_name="mem"),
            )
            asyncio.run(namespace["produce"]())
    assert isinstance(info.value, exc_type), repr(info.value)
    # Catchable as the builtin kinds (assigning a frozen field is an AttributeError, as for a
    # frozen dataclass).
    assert isinstance(info.value, TypeError | ValueError | AttributeError), repr(info.value)
    frames = [f for f in traceback.extract_tb(info.tb) if Path(f.filename) == path]
    raised_at = frames[-1].lineno if frames else None
    # The very line, or (a class statement raising as a whole) the statement holding it.
    assert raised_at == line or statement_lines(path, line) == statement_lines(
        path, raised_at or 0
    ), f"raised at {path.name}:{raised_at}, mypy flags line {line}"
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if "handler" in fragments:
        # Names the handler by its module and name, so a user finds it.
        assert f"{sample}.handler" in message, message
    # Nothing was registered by the misuse.
    assert not romeways.default_app.routes
