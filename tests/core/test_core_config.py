"""Config validation: nonsense values fail at construction naming the field; configs are frozen
keyword-only Structs that users can subclass."""

from __future__ import annotations

from multiprocessing import Queue
from typing import Any

import msgspec
import pytest

import romeways


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_chunk_size", 0),
        ("max_chunk_size", -5),
        ("frequency", -0.1),
        ("frequency", float("nan")),
        ("frequency", float("inf")),
        ("retries", -1),
        ("connector_name", ""),
        ("connector_name", "   "),
        ("handler_timeout", 0),
        ("handler_timeout", -1.0),
    ],
)
def test_queue_config_rejects_nonsense_naming_the_field(field: str, value: Any) -> None:
    options: dict[str, Any] = {"connector_name": "c", field: value}
    with pytest.raises(romeways.ConfigError) as info:
        romeways.GenericQueueConfig(**options)
    assert isinstance(info.value, ValueError)
    text = str(info.value)
    assert f"GenericQueueConfig.{field}=" in text
    assert repr(value) in text


def test_queue_config_accepts_edge_values() -> None:
    config = romeways.GenericQueueConfig(
        connector_name="c", frequency=0, max_chunk_size=1, retries=0, handler_timeout=0.01
    )
    assert (config.frequency, config.max_chunk_size, config.retries) == (0, 1, 0)


def test_queue_config_defaults() -> None:
    config = romeways.GenericQueueConfig(connector_name="c")
    assert config.frequency == 1.0
    assert config.max_chunk_size == 10
    assert config.sequential is False
    assert config.retries == 3
    assert config.handler_timeout is None


def test_connector_config_rejects_empty_name() -> None:
    with pytest.raises(romeways.ConfigError, match=r"GenericConnectorConfig\.connector_name="):
        romeways.GenericConnectorConfig(connector_name="")
    with pytest.raises(romeways.ConfigError, match=r"MemoryConnectorConfig\.connector_name="):
        romeways.MemoryConnectorConfig(connector_name=" ")


def test_memory_queue_config_validates_generic_fields_and_queue() -> None:
    with pytest.raises(romeways.ConfigError, match=r"MemoryQueueConfig\.max_chunk_size=0"):
        romeways.MemoryQueueConfig(connector_name="m", queue=Queue(), max_chunk_size=0)
    not_a_queue: Any = [1, 2]
    with pytest.raises(romeways.ConfigError, match=r"MemoryQueueConfig\.queue="):
        romeways.MemoryQueueConfig(connector_name="m", queue=not_a_queue)


class MyQueueConfig(romeways.GenericQueueConfig, frozen=True, kw_only=True):
    region: str


class PlainSubclassConfig(romeways.GenericQueueConfig):
    """The issue's spelling, without repeating frozen/kw_only: they are inherited at runtime."""

    region: str


@pytest.mark.parametrize("cls", [MyQueueConfig, PlainSubclassConfig])
def test_subclassed_queue_config_works_and_is_validated(
    cls: type[MyQueueConfig] | type[PlainSubclassConfig],
) -> None:
    config = cls(connector_name="c", region="eu-west-1", retries=1)
    assert config.region == "eu-west-1"
    assert config.retries == 1
    assert isinstance(config, romeways.GenericQueueConfig)
    with pytest.raises(AttributeError):
        config.region = "us"  # type: ignore[misc]
    with pytest.raises(romeways.ConfigError, match=rf"{cls.__name__}\.retries=-1"):
        cls(connector_name="c", region="eu", retries=-1)
    positional: Any = cls
    with pytest.raises(TypeError):
        positional("c", "eu")  # keyword-only


def test_configs_are_frozen() -> None:
    queue_config = romeways.GenericQueueConfig(connector_name="c")
    with pytest.raises(AttributeError):
        queue_config.retries = 10  # type: ignore[misc]
    connector_config = romeways.MemoryConnectorConfig(connector_name="m")
    with pytest.raises(AttributeError):
        connector_config.connector_name = "n"  # type: ignore[misc]
    memory_config = romeways.MemoryQueueConfig(connector_name="m", queue=Queue())
    with pytest.raises(AttributeError):
        memory_config.max_chunk_size = 3  # type: ignore[misc]
    # Rebuilding with a change re-validates.
    with pytest.raises(romeways.ConfigError, match="max_chunk_size"):
        msgspec.structs.replace(queue_config, max_chunk_size=0)


# -- issue 14: every config error is a ConfigError naming class and field ----------------------


def test_missing_required_field_names_class_and_field() -> None:
    from romeways.connectors.kafka import KafkaQueueConfig

    incomplete: Any = KafkaQueueConfig
    with pytest.raises(romeways.ConfigFieldError) as info:
        incomplete(connector_name="k", topic="t")
    assert str(info.value) == "KafkaQueueConfig: missing required field 'group_id'"
    # Also the TypeError msgspec raised before, and a ConfigError like every config error.
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, romeways.ConfigError)
    assert isinstance(info.value, romeways.RomewaysError)
    with pytest.raises(romeways.ConfigFieldError, match=r"MyQueueConfig: missing .* 'region'"):
        cast_any(MyQueueConfig)(connector_name="c")


def test_unknown_field_and_positional_arguments_are_config_errors() -> None:
    with pytest.raises(romeways.ConfigFieldError) as info:
        cast_any(romeways.GenericQueueConfig)(connector_name="c", max_chunksize=5)
    text = str(info.value)
    assert "GenericQueueConfig: unknown field 'max_chunksize'" in text
    assert "max_chunk_size" in text  # lists the fields there are
    with pytest.raises(romeways.ConfigFieldError, match="keyword arguments"):
        cast_any(romeways.GenericQueueConfig)("c")


def test_type_errors_raised_by_a_post_init_are_left_alone() -> None:
    class Broken(romeways.GenericQueueConfig, frozen=True, kw_only=True):
        def __post_init__(self) -> None:
            raise TypeError("Missing required argument 'x'")  # not msgspec's own

    with pytest.raises(TypeError) as info:
        Broken(connector_name="c")
    assert not isinstance(info.value, romeways.ConfigError)


def cast_any(value: object) -> Any:
    return value


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_chunk_size", 2.5, "give an int"),
        ("max_chunk_size", True, "give an int"),
        ("retries", "3", "give an int"),
        ("frequency", "1", "give a float"),
        ("sequential", 1, "give a bool"),
        ("handler_timeout", "5", "give a float or None"),
        ("connector_name", 5, "give a str"),
    ],
)
def test_field_of_the_wrong_type_is_refused(field: str, value: Any, expected: str) -> None:
    options: dict[str, Any] = {"connector_name": "c", field: value}
    with pytest.raises(romeways.ConfigError) as info:
        romeways.GenericQueueConfig(**options)
    text = str(info.value)
    assert f"GenericQueueConfig.{field}={value!r} is invalid: {expected}" in text


def test_field_types_of_subclasses_and_kafka_configs_are_checked() -> None:
    from romeways.connectors.kafka import KafkaConnectorConfig, KafkaQueueConfig

    with pytest.raises(romeways.ConfigError, match=r"MyQueueConfig\.region=3 .*give a str"):
        MyQueueConfig(connector_name="c", region=cast_any(3))
    with pytest.raises(romeways.ConfigError, match=r"KafkaQueueConfig\.commit_timeout='5'"):
        KafkaQueueConfig(connector_name="k", topic="t", group_id="g", commit_timeout=cast_any("5"))
    with pytest.raises(romeways.ConfigError, match=r"give a str or a list\[str\]"):
        KafkaConnectorConfig(connector_name="k", bootstrap_server=cast_any(["a:1", 2]))
    # An int is a float, as msgspec decodes it; None where the annotation allows it.
    assert romeways.GenericQueueConfig(connector_name="c", frequency=2).frequency == 2
    ok = KafkaConnectorConfig(connector_name="k", bootstrap_server=["a:1"], client_id="x")
    assert ok.sasl_plain_password is None


def test_app_arguments_are_config_errors_naming_the_argument() -> None:
    bad: list[tuple[str, Any]] = [
        ("shutdown_timeout", 0),
        ("shutdown_timeout", -1.0),
        ("shutdown_timeout", float("nan")),
        ("shutdown_timeout", float("inf")),
        ("restart_window", 0),
        ("restart_window", float("nan")),
        ("restart_window", float("inf")),
        ("restart_window", -5),
        ("max_restarts", -1),
        ("max_restarts", 1.5),
    ]
    for name, value in bad:
        options: dict[str, Any] = {name: value}
        with pytest.raises(romeways.ConfigError) as info:
            romeways.App(**options)
        assert isinstance(info.value, ValueError)  # what App raised before: old excepts work
        assert f"App({name}={value!r})" in str(info.value), str(info.value)
    app = romeways.App(shutdown_timeout=0.5, max_restarts=0, restart_window=1)
    assert (app.shutdown_timeout, app.max_restarts, app.restart_window) == (0.5, 0, 1)


@pytest.mark.parametrize("delay", [-1, -0.5, float("nan"), float("inf"), "5"])
def test_resend_delay_must_be_finite_and_not_negative(delay: Any) -> None:
    with pytest.raises(romeways.ConfigError) as info:
        romeways.ResendException(delay=delay)
    assert isinstance(info.value, ValueError)
    assert f"ResendException(delay={delay!r})" in str(info.value)
    assert romeways.ResendException(delay=0).delay == 0
    assert romeways.ResendException("later", delay=2.5).delay == 2.5
